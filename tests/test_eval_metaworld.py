"""MetaWorld wrapper (fast render flags, upright images, per-seed determinism) and demo collection."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("metaworld")

from beingh.data.lerobot import LeRobotDataset  # noqa: E402
from beingh.eval.collect import CollectConfig, collect_demos  # noqa: E402
from beingh.eval.metaworld_env import EVAL_SEED_START, MetaWorldEnv, ScriptedExpert, parse_tasks  # noqa: E402


@pytest.fixture(scope="module")
def reach_env():
    env = MetaWorldEnv("reach-v3", image_size=32, max_episode_steps=100)
    yield env
    env.close()


def test_fast_render_flags_and_upright_images(reach_env):
    model = reach_env.env.model
    assert model.vis.quality.offsamples == 0
    assert not model.light_castshadow.any() and not model.mat_reflectance.any()
    reach_env.reset(0)
    raw = reach_env.env.render()
    np.testing.assert_array_equal(reach_env.render(), raw[::-1, ::-1])
    image = reach_env.render()
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    # upright: the brown table top (R > G > B) fills the bottom third, the grey wall and red arm the top
    rgb = image.astype(int)
    brown = (rgb[..., 0] > rgb[..., 1] + 10) & (rgb[..., 1] > rgb[..., 2] + 8)
    assert brown[-10:].mean() > 0.5 > brown[:10].mean()


def test_reset_is_deterministic_per_seed(reach_env):
    a, b, c = reach_env.reset(3), reach_env.reset(4), reach_env.reset(3)
    np.testing.assert_array_equal(a.raw, c.raw)
    np.testing.assert_array_equal(a.image, c.image)
    assert not np.allclose(a.raw[36:39], b.raw[36:39])  # goal differs between seeds
    assert a.state.shape == (4,) and a.state.dtype == np.float32
    np.testing.assert_allclose(a.state, a.raw[:4].astype(np.float32))


def test_expert_actions_are_clipped_and_succeed(reach_env):
    expert = ScriptedExpert("reach-v3")
    observation, done, success, actions = reach_env.reset(0), False, False, []
    while not done:
        actions.append(expert(observation))
        observation, success, done = reach_env.step(actions[-1])
    assert success and np.abs(np.stack(actions)).max() <= 1.0


def test_parse_tasks_errors():
    assert parse_tasks("reach-v3, push-v3") == ["reach-v3", "push-v3"]
    with pytest.raises(ValueError, match="unknown MetaWorld task"):
        parse_tasks("reach-v9")
    with pytest.raises(ValueError, match="expected a comma-separated"):
        parse_tasks(" , ")


def test_collect_two_episodes(tmp_path):
    out = tmp_path / "demos"
    report = collect_demos(CollectConfig(tasks=["reach-v3"], episodes=2, out=out, image_size=32, max_steps=100))
    assert report.kept == {"reach-v3": 2} and report.seeds["reach-v3"] == [0, 1]
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 2 and ds.tasks == {0: "reach the target"}
    assert ds.features["observation.state"]["shape"] == [4] and ds.features["action"]["shape"] == [4]
    actions = ds.column("action")
    assert actions.shape == (ds.num_frames, 4) and np.abs(actions).max() <= 1.0
    states = ds.episode_column(0, "observation.state")
    env = MetaWorldEnv("reach-v3", image_size=32)
    np.testing.assert_allclose(states[0], env.reset(0).state)  # row 0 is the reset observation of seed 0
    env.close()
    images = ds.read_images(0, np.array([0, 1]), "observation.images.corner")
    assert images.shape == (2, 32, 32, 3)
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == [len(ds.episode_column(i, "action")) for i in range(2)]


def test_collect_refuses_evaluation_seeds(tmp_path):
    with pytest.raises(ValueError, match="never overlap evaluation seeds"):
        collect_demos(CollectConfig(tasks=["reach-v3"], episodes=2, out=tmp_path / "x", seed=EVAL_SEED_START - 1))
    assert not (tmp_path / "x").exists()


def test_extra_topview_camera_is_collected_and_fed_to_the_two_view_config(tmp_path):
    from beingh.eval.collect import extra_cameras_for
    from beingh.eval.rollout import data_config_cameras, metaworld_data_config, metaworld_observation

    config = metaworld_data_config("metaworld_2view")
    assert data_config_cameras(config) == ("topview",)
    assert data_config_cameras(metaworld_data_config("metaworld")) == ()
    with pytest.raises(ValueError, match="no camera column"):
        extra_cameras_for(["observation.images.wrist"])
    out = tmp_path / "demos"
    collect_demos(CollectConfig(tasks=["reach-v3"], episodes=1, out=out, image_size=32, max_steps=100,
                                extra_cameras=("topview",)))
    ds = LeRobotDataset(out)
    corner = ds.read_images(0, np.array([0]), "observation.images.corner")
    top = ds.read_images(0, np.array([0]), "observation.images.top")
    assert top.shape == corner.shape == (1, 32, 32, 3)
    env = MetaWorldEnv("reach-v3", image_size=32, extra_cameras=("topview",))
    observation = env.reset(0)
    env.close()
    assert set(observation.extra_images) == {"topview"}
    assert not np.array_equal(observation.extra_images["topview"], observation.image)
    policy_input = metaworld_observation(observation, "reach the target", config)
    np.testing.assert_array_equal(policy_input["video.top"], observation.extra_images["topview"])
    np.testing.assert_array_equal(policy_input["video.corner"], observation.image)
    with pytest.raises(ValueError, match="no camera 'nope'"):
        MetaWorldEnv("reach-v3", image_size=32, extra_cameras=("nope",))


def test_reused_demos_must_hold_the_data_config_cameras(tmp_path):
    from beingh.eval.demo import DemoRecipe, check_reused_demos

    out = tmp_path / "demos"
    collect_demos(CollectConfig(tasks=["reach-v3"], episodes=1, out=out, image_size=32, max_steps=100))
    check_reused_demos(out, DemoRecipe(tasks="reach-v3", image_size=32, data_config="metaworld"), ["reach-v3"])
    with pytest.raises(SystemExit, match=r"missing camera columns \['observation.images.top'\]"):
        check_reused_demos(out, DemoRecipe(tasks="reach-v3", image_size=32, data_config="metaworld_2view"),
                           ["reach-v3"])
