"""LIBERO client side without the simulator: torch-free imports, the demo <-> client action mappings, the
privileged config, disjoint initial states, the collect/eval command lines. The real simulator is driven
in tests/test_eval_libero_sim.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from beingh.data.embodiment import get_data_config
from beingh.eval.chunking import ChunkExecutor
from beingh.eval.libero_client import dataset_action, libero_env_actions, libero_policy_observation
from beingh.eval.libero_collect import is_evaluation_state, libero_features
from beingh.eval.libero_env import parse_task_ids

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "av", "pyarrow", "transformers", "safetensors", "tokenizers")


def test_client_side_imports_without_torch_av_pyarrow():
    """What runs in the LIBERO venv (client, env glue, expert, collector module, eval CLI, websocket client)
    imports with torch, PyAV, pyarrow and transformers made unimportable."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        HEAVY = {HEAVY!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in HEAVY:
                    raise ModuleNotFoundError("blocked for this test: " + name, name=name)

        sys.meta_path.insert(0, Block())
        import beingh.eval.libero_client, beingh.eval.libero_env, beingh.eval.libero_expert
        import beingh.eval.libero_collect, beingh.eval.demo, beingh.inference.client
        from beingh.eval.cli import build_parser
        build_parser("libero").parse_args(["--env", "libero", "--policy", "ws://h:1", "--suite", "spatial"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        assert not loaded, loaded
        print("torch-free")
        from beingh.cli import main
        assert main(["train", "--help"]) == 1  # a torch command says where to run it
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch-free" in result.stdout
    assert "beingh train: this environment has no torch" in result.stderr


def test_blocker_really_blocks():
    """The import test above would pass vacuously if the blocker did nothing: the model side must fail."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        import beingh.batch
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "blocked torch" in result.stderr


def test_dataset_actions_replay_exactly_through_the_client_mapping():
    rng = np.random.default_rng(0)
    env_actions = np.concatenate([rng.uniform(-1, 1, (30, 6)), rng.choice([-1.0, 1.0], (30, 1))], axis=1)
    stored = np.stack([dataset_action(a) for a in env_actions]).astype(np.float32)
    assert set(np.unique(stored[:, 6])) <= {-1.0, 1.0}
    np.testing.assert_array_equal(stored[env_actions[:, 6] < 0, 6], 1.0)  # env -1 = open -> data 1 = open
    np.testing.assert_array_equal(libero_env_actions(stored), env_actions.astype(np.float32))
    with pytest.raises(ValueError, match="gripper -1 or \\+1"):
        dataset_action([0, 0, 0, 0, 0, 0, 0.3])
    with pytest.raises(ValueError, match="7 values"):
        dataset_action(np.zeros(6))


def _raw(rng):
    return {
        "robot0_eef_pos": np.array([0.1, -0.2, 0.9]),
        "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
        "robot0_gripper_qpos": np.array([0.03, -0.03]),
        "akita_black_bowl_1_pos": np.array([0.0, 0.2, 0.9]),
        "plate_1_pos": np.array([0.05, 0.21, 0.91]),
        "agentview_image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
        "robot0_eye_in_hand_image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
    }


def test_privileged_config_gets_object_positions_and_nonorm_does_not():
    raw = _raw(np.random.default_rng(1))
    objects = ["akita_black_bowl_1", "plate_1"]
    privileged = get_data_config("libero_privileged")(embodiment_tag="libero")
    obs = libero_policy_observation(raw, privileged, "put the bowl on the plate", objects)
    np.testing.assert_allclose(obs["state.object_position"], [0.0, 0.2, 0.9])
    np.testing.assert_allclose(obs["state.target_position"], [0.05, 0.21, 0.91])
    nonorm = get_data_config("libero_nonorm")(embodiment_tag="libero")
    plain = libero_policy_observation(raw, nonorm, "put the bowl on the plate", objects)
    assert not {"state.object_position", "state.target_position"} & set(plain)
    with pytest.raises(ValueError, match="observation.environment_state"):
        libero_policy_observation(raw, privileged, "put the bowl on the plate")  # objects not given
    features = libero_features(128)
    for config in (privileged, nonorm):  # the collector writes every column both configs read
        assert set(config.VIDEO_SOURCE_COLUMNS.values()) | set(config.source_columns()) <= set(features)


def test_demo_states_are_checked_against_the_evaluation_states():
    rng = np.random.default_rng(2)
    init_states = rng.normal(size=(5, 92))
    state = init_states[3].copy()
    state[0] += 7.0  # sim time differs: still the same layout
    assert is_evaluation_state(state, init_states)
    state[10] += 1e-3
    assert not is_evaluation_state(state, init_states)
    with pytest.raises(ValueError, match="92"):
        is_evaluation_state(np.zeros(91), init_states)


def test_task_ids():
    assert parse_task_ids("0,2", 10) == [0, 2] and parse_task_ids(None, 3) == [0, 1, 2]
    for bad in ("10", "a", ""):
        with pytest.raises(ValueError, match="--tasks"):
            parse_task_ids(bad, 10)


def test_executor_says_when_the_next_action_needs_an_observation():
    class Policy:
        def get_action(self, observations, executed_steps=None):
            return observations

        def reset(self):
            pass

    executor = ChunkExecutor(Policy(), execute_steps=3)
    executor.reset()
    needed = []
    for _ in range(7):
        needed.append(executor.needs_observation)
        executor.next_action(lambda: np.zeros((16, 7)), lambda chunk: chunk)
    assert needed == [True, False, False, True, False, False, True]


def test_demo_collect_dispatches_libero_without_metaworld(capsys):
    from beingh.eval.demo import collect_main

    with pytest.raises(SystemExit) as exit_info:
        collect_main(["--env", "libero", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--suite" in out and "collect --env libero" in out
    with pytest.raises(SystemExit):
        collect_main(["--env", "libero", "--suite", "libero_goal", "--episodes", "1", "--out", "x"])
    assert "invalid choice: 'libero_goal'" in capsys.readouterr().err
