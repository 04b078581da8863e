"""SampleBuilder on the LeRobot fixtures and EmbodimentTransform (training and inference share one path)."""

from __future__ import annotations

import numpy as np
import pytest

from beingh.data.embodiment import data_config_from_dict, get_data_config
from beingh.data.metadata import DatasetMetadata, build_dataset_metadata
from beingh.data.rotation import convert_rotation
from beingh.data.sample import SampleBuilder
from beingh.data.stats import ColumnStats
from beingh.data.transforms import EmbodimentTransform

FIXTURE_SPEC = {
    "video_source_columns": {"video.corner": "observation.images.corner",
                             "video.corner_again": "observation.images.corner"},
    "state": {
        "state.eef_position": {"source_column": "observation.state", "start": 0, "end": 3},
        "state.eef_rotation": {"source_column": "observation.state", "start": 3, "end": 7,
                               "rotation_type": "quaternion"},
        "state.gripper": {"source_column": "observation.state", "start": 7, "end": 8},
    },
    "action": {
        "action.eef_position": {"source_column": "action", "start": 0, "end": 3, "absolute": False},
        "action.eef_rotation": {"source_column": "action", "start": 4, "end": 7, "absolute": False,
                                "rotation_type": "axis_angle"},
        "action.gripper": {"source_column": "action", "start": 3, "end": 4},
    },
    "unified_mapping": {
        "state.eef_position": [0, 3], "state.eef_rotation": [3, 6], "state.gripper": [18, 19],
        "action.eef_position": [0, 3], "action.eef_rotation": [3, 6], "action.gripper": [18, 19],
    },
    "state_normalization_modes": {"state.eef_position": "min_max", "state.eef_rotation": "min_max",
                                  "state.gripper": "mean_std"},
    "action_normalization_modes": {"action.eef_position": "q99", "action.gripper": "scale"},
}
T = 16


@pytest.fixture(scope="module", params=["v30_h264", "v21_av1", "v30_image"])
def setup(request, lerobot_fixtures):
    from beingh.data.lerobot import LeRobotDataset

    dataset = LeRobotDataset(lerobot_fixtures / request.param)
    config = data_config_from_dict("fixture", FIXTURE_SPEC)(embodiment_tag="metaworld")
    stats = {c: ColumnStats.from_values(dataset.column(c)) for c in config.source_columns()}
    metadata = build_dataset_metadata(dataset, config, stats)
    return dataset, config, metadata


def test_chunk_at_episode_end_is_padded_and_masked(setup):
    dataset, config, metadata = setup
    builder = SampleBuilder(dataset, config, metadata, action_chunk_length=T)
    ep = dataset.episodes[0]
    t = ep.length - 5
    sample = builder(ep.index, t, np.random.default_rng(0))

    assert sample.action.shape == (T, 200) and sample.action.dtype == np.float32
    assert sample.embodiment_id == 2 and sample.instruction == dataset.task_text(ep.index, t)
    assert [im.shape for im in sample.images] == [(224, 224, 3)] * 2 and sample.images[0].dtype == np.uint8
    mapped = np.zeros(200, dtype=bool)
    mapped[[0, 1, 2, 3, 4, 5, 18]] = True
    np.testing.assert_array_equal(sample.action_mask[:5], np.broadcast_to(mapped, (5, 200)))
    assert not sample.action_mask[5:].any()
    assert not sample.action[:, ~mapped].any() and not sample.state[~mapped].any()

    raw = dataset.episode_column(ep.index, "action").astype(np.float64)
    decoded = builder.transform.unified_to_actions(sample.action)
    np.testing.assert_allclose(decoded["action.gripper"][:5, 0], raw[t:, 3], atol=1e-6)
    np.testing.assert_allclose(decoded["action.gripper"][5:, 0], raw[-1, 3], atol=1e-6)  # absolute: repeat last
    np.testing.assert_allclose(decoded["action.eef_rotation"][5:], 0.0, atol=1e-7)  # delta: zero motion
    q = metadata.stats_for("action.eef_position")
    inside = np.clip(raw[t:, :3], q.q01, q.q99)
    np.testing.assert_allclose(decoded["action.eef_position"][:5], inside, atol=1e-6)

    state_raw = dataset.episode_column(ep.index, "observation.state")[t].astype(np.float64)
    s = metadata.stats_for("state.eef_position")
    np.testing.assert_allclose(sample.state[:3], 2 * (state_raw[:3] - s.min) / (s.max - s.min) - 1, atol=1e-6)
    aa = convert_rotation(state_raw[3:7], "quaternion", "axis_angle")
    np.testing.assert_allclose(sample.state[3:6], aa / np.pi, atol=1e-6)  # fixed +-pi min_max bounds
    g = metadata.stats_for("state.gripper")
    np.testing.assert_allclose(sample.state[18], (state_raw[7] - g.mean[0]) / g.std[0], rtol=1e-5)

    obs = {k: np.asarray(v)[None] for k, v in {
        "state.eef_position": state_raw[:3], "state.eef_rotation": state_raw[3:7], "state.gripper": state_raw[7:]}.items()}
    np.testing.assert_array_equal(builder.transform.state_to_unified(obs), sample.state)


def test_chunk_inside_episode_is_fully_valid(setup):
    dataset, config, metadata = setup
    sample = SampleBuilder(dataset, config, metadata)(dataset.episodes[1].index, 0, np.random.default_rng(1))
    assert sample.action_mask.any(axis=1).all() and sample.action_mask[:, 18].all()
    assert sample.action_mask.sum() == T * 7


def test_dropouts_and_bad_frames(setup):
    dataset, config, metadata = setup
    builder = SampleBuilder(dataset, config, metadata, state_dropout_prob=1.0, view_dropout_prob=1.0)
    sample = builder(dataset.episodes[0].index, 3, np.random.default_rng(2))
    assert not sample.state.any() and len(sample.images) == 1
    with pytest.raises(IndexError, match="out of range"):
        builder(dataset.episodes[0].index, dataset.episodes[0].length, np.random.default_rng(0))
    with pytest.raises(ValueError, match="view_dropout_prob"):
        SampleBuilder(dataset, config, metadata, view_dropout_prob=2.0)


def test_builder_rejects_configs_that_do_not_fit_the_dataset(setup):
    dataset, _, metadata = setup
    wide = data_config_from_dict("wide", {**FIXTURE_SPEC, "action": {
        **FIXTURE_SPEC["action"], "action.gripper": {"source_column": "action", "start": 7, "end": 8}}})()
    with pytest.raises(ValueError, match=r"slices \[7:8\] of 'action', which has 7 dims"):
        SampleBuilder(dataset, wide, metadata)
    libero = get_data_config("libero_nonorm")()
    with pytest.raises(ValueError, match="camera 'observation.images.image'"):
        SampleBuilder(dataset, libero, metadata)


def _synthetic_metadata(config, seed=0, n=400) -> tuple[DatasetMetadata, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    data = {}
    for key in config.STATE_KEYS + config.ACTION_KEYS:
        mod = config.modality(key)
        if config.normalization_mode(key) == "binary":
            data[key] = rng.choice([-1.0, 1.0], size=(n, mod.width))
        elif mod.rotation_type == "quaternion":
            data[key] = convert_rotation(rng.normal(size=(n, 3)), "axis_angle", "quaternion")
        else:
            data[key] = rng.normal(size=(n, mod.width))
    stats = {"state": {}, "action": {}}
    for key, values in data.items():
        group, name = key.split(".", 1)
        stats[group][name] = ColumnStats.from_values(values)
    return DatasetMetadata(stats, embodiment_tag=config.embodiment_tag), data


def test_robocasa_inference_round_trip():
    config = get_data_config("robocasa_human")(embodiment_tag="robocasa")
    metadata, data = _synthetic_metadata(config)
    transform = EmbodimentTransform(config, metadata)
    state = {k: data[k][0] for k in config.STATE_KEYS}
    unified = transform.state_to_unified(state)
    np.testing.assert_allclose(unified[73:76], convert_rotation(state["state.base_rotation"], "quaternion",
                                                                "axis_angle"), atol=1e-6)
    assert transform.state_dims.sum() == 14 and transform.action_dims.sum() == 12

    actions = {k: data[k][:T] for k in config.ACTION_KEYS}
    chunk, mask = transform.actions_to_unified(actions, np.ones(T, bool))
    assert set(np.unique(chunk[:, 18])) <= {0.0, 1.0} and mask.sum() == T * 12
    back = transform.unified_to_actions(chunk)
    for key in config.ACTION_KEYS:
        np.testing.assert_allclose(back[key], actions[key], atol=1e-6, err_msg=key)
    noisy = transform.unified_to_actions(chunk + 0.3 * (np.random.default_rng(1).random(chunk.shape) - 0.5))
    assert set(np.unique(noisy["action.gripper_position"])) <= {-1.0, 1.0}


def test_quaternion_action_inverse_and_relative_to_state():
    spec = {
        "state": {"state.pos": {"source_column": "observation.state", "start": 0, "end": 3}},
        "action": {"action.pos": {"source_column": "action", "start": 0, "end": 3},
                   "action.rot": {"source_column": "action", "start": 3, "end": 7, "rotation_type": "quaternion"}},
        "unified_mapping": {"state.pos": [0, 3], "action.pos": [0, 3], "action.rot": [3, 6]},
        "action_relative_to_state": {"action.pos": "state.pos"},
        "action_normalization_modes": {"action.rot": "min_max"},
    }
    config = data_config_from_dict("rel", spec)()
    metadata, data = _synthetic_metadata(config)
    transform = EmbodimentTransform(config, metadata)
    state = {"state.pos": np.array([1.0, 2.0, 3.0])}
    actions = {"action.pos": data["action.pos"][:T], "action.rot": data["action.rot"][:T]}
    chunk, _ = transform.actions_to_unified(actions, np.ones(T, bool), state)
    np.testing.assert_allclose(chunk[:, :3], actions["action.pos"] - state["state.pos"], atol=1e-6)
    back = transform.unified_to_actions(chunk, state)
    np.testing.assert_allclose(back["action.pos"], actions["action.pos"], atol=1e-6)
    q, q_back = actions["action.rot"], back["action.rot"]
    np.testing.assert_allclose(np.abs(np.sum(q * q_back, axis=1)), 1.0, atol=1e-6)  # same rotation, q ~ -q
    with pytest.raises(ValueError, match="pass the current state"):
        transform.unified_to_actions(chunk)
    with pytest.raises(ValueError, match="expected 3 values"):
        transform.state_to_unified({"state.pos": np.zeros(4)})
    with pytest.raises(ValueError, match="lacks 'state.pos'"):
        transform.state_to_unified({})
    with pytest.raises(ValueError, match=r"must be \(T, 200\)"):
        transform.unified_to_actions(np.zeros((T, 199)))


def test_missing_statistics_name_the_key():
    config = get_data_config("metaworld")(embodiment_tag="metaworld")
    metadata = DatasetMetadata({"state": {}, "action": {}}, embodiment_tag="metaworld")
    with pytest.raises(ValueError, match="'state.eef_position'.*needs statistics"):
        EmbodimentTransform(config, metadata)
