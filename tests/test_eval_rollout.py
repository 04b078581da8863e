"""Closed-loop runner: chunking/replanning logic with scripted fake policies, eval seeds, results JSON."""

from __future__ import annotations

import numpy as np
import pytest

from beingh.eval.rollout import ChunkExecutor


class CountingPolicy:
    """Returns chunks whose rows encode (call index, row index) so the executed order is checkable."""

    def __init__(self, horizon: int = 16):
        self.horizon, self.calls, self.executed, self.resets = horizon, 0, [], 0

    def reset(self):
        self.resets += 1

    def get_action(self, observations, executed_steps=None):
        self.executed.append(executed_steps)
        self.calls += 1
        rows = np.stack([np.full(4, 100 * self.calls + i, dtype=np.float32) for i in range(self.horizon)])
        return {"action.eef_position": rows[:, :3], "action.gripper": rows[:, 3:]}


def _to_chunk(reply):
    return np.concatenate([reply["action.eef_position"], reply["action.gripper"]], axis=1)


@pytest.mark.parametrize(("execute_steps", "rtc"), [(8, False), (8, True), (5, True), (16, False), (20, False)])
def test_chunk_executor_replans_every_k_steps(execute_steps, rtc):
    policy = CountingPolicy()
    executor = ChunkExecutor(policy, execute_steps, rtc)
    executor.reset()
    observed = []
    actions = [executor.next_action(lambda: observed.append(1) or {}, _to_chunk)[0] for _ in range(40)]
    k = min(execute_steps, 16)
    expected = [100 * (t // k + 1) + t % k for t in range(40)]
    assert actions == expected
    assert policy.calls == len(observed) == -(-40 // k) == executor.calls
    assert policy.executed == ([None] + [k] * (policy.calls - 1) if rtc else [None] * policy.calls)
    executor.reset()
    assert policy.resets == 2 and executor.calls == 0


def test_chunk_executor_rejects_bad_settings():
    with pytest.raises(ValueError, match="execute_steps"):
        ChunkExecutor(CountingPolicy(), 0)
    executor = ChunkExecutor(CountingPolicy(), 8)
    with pytest.raises(ValueError, match="empty"):
        executor.next_action(dict, lambda reply: np.zeros((0, 4)))


@pytest.fixture
def metaworld():
    return pytest.importorskip("metaworld")


class TowardsGoalPolicy:
    """Scripted 'policy' that cheats: it replays each evaluation seed in its own env to know the goal.
    Proves the loop executes chunks in order; `evaluate` resets it once per episode, seeds in order."""

    def __init__(self, first_seed: int):
        from beingh.eval.metaworld_env import MetaWorldEnv

        self.env, self.next_seed, self.goal = MetaWorldEnv("reach-v3", image_size=32), first_seed, None

    def reset(self):
        self.env.reset(self.next_seed)
        self.goal, self.next_seed = self.env.env._target_pos.copy(), self.next_seed + 1

    def get_action(self, observations, executed_steps=None):
        step = np.clip((self.goal - observations["state.eef_position"]) * 10.0, -1, 1)
        return {"action.eef_position": np.repeat(step[None], 16, 0), "action.gripper": np.zeros((16, 1))}


def test_run_episode_and_evaluate(metaworld, tmp_path):
    from beingh.eval.metaworld_env import EVAL_SEED_START, MetaWorldEnv
    from beingh.eval.rollout import RolloutConfig, evaluate, run_episode

    config = RolloutConfig(execute_steps=4, max_steps=150, image_size=32)
    env = MetaWorldEnv("reach-v3", image_size=32, max_episode_steps=150)
    policy = TowardsGoalPolicy(EVAL_SEED_START)
    result = run_episode(env, policy, EVAL_SEED_START, config, record=True)
    assert result.success and result.steps < 150
    assert result.policy_calls == -(-result.steps // 4)
    assert len(result.frames) == result.steps + 1 and result.frames[0].shape == (32, 32, 3)

    policy.next_seed = EVAL_SEED_START
    results = evaluate(policy, ["reach-v3"], 2, config, video_dir=tmp_path / "videos", videos_per_task=1)
    assert results["tasks"]["reach-v3"]["episodes"] == 2
    assert results["overall_success_rate"] == results["tasks"]["reach-v3"]["success_rate"] == 1.0
    assert [e["seed"] for e in results["episodes"]] == [EVAL_SEED_START, EVAL_SEED_START + 1]
    assert (tmp_path / "videos").is_dir() and len(list((tmp_path / "videos").glob("*.mp4"))) == 1
    env.close()
    policy.env.close()
    with pytest.raises(ValueError, match="evaluation seeds"):
        evaluate(policy, ["reach-v3"], 1, config, seed_start=0)


def test_metaworld_observation_and_action_mapping():
    from beingh.eval.metaworld_env import MetaWorldObservation
    from beingh.eval.rollout import metaworld_action_chunk, metaworld_data_config, metaworld_observation

    raw = np.arange(39, dtype=np.float64) / 10
    observation = MetaWorldObservation(image=np.zeros((8, 8, 3), np.uint8), state=raw[:4].astype(np.float32), raw=raw)
    plain = metaworld_observation(observation, "reach the target", metaworld_data_config("metaworld"))
    assert set(plain) == {"video.corner", "state.eef_position", "state.gripper", "language.instruction"}
    np.testing.assert_allclose(plain["state.eef_position"], raw[:3])
    np.testing.assert_allclose(plain["state.gripper"], raw[3:4])
    goal_config = metaworld_data_config("metaworld_goal")
    privileged = metaworld_observation(observation, "reach the target", goal_config)
    np.testing.assert_allclose(privileged["state.object_position"], raw[4:7])
    np.testing.assert_allclose(privileged["state.goal_position"], raw[36:39])
    chunk = metaworld_action_chunk({"action.eef_position": np.ones((16, 3)), "action.gripper": -np.ones(16)},
                                   goal_config)
    assert chunk.shape == (16, 4) and chunk.dtype == np.float32
    np.testing.assert_array_equal(chunk[:, 3], -1.0)
    with pytest.raises(KeyError, match="action.gripper"):
        metaworld_action_chunk({"action.eef_position": np.ones((16, 3))}, goal_config)


def test_eval_uses_the_data_config_and_prompt_the_checkpoint_was_trained_with(tmp_path):
    import json

    from beingh.eval.policy_loader import PolicySpec, trained_data_config, trained_prompt_template
    from tests.test_inference_policy import DATASET, write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "ckpt")
    spec = PolicySpec(policy=str(checkpoint), data_config_name=None, embodiment_tag="metaworld",
                      dataset_name=DATASET)
    assert trained_data_config(checkpoint, spec) == "metaworld"
    assert trained_prompt_template(checkpoint) == "long"
    (checkpoint / "train_args.json").write_text(json.dumps({"data": {"prompt_template": "short"}}))
    assert trained_prompt_template(checkpoint) == "short"
