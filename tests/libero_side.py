"""Runs inside the LIBERO venv (no torch, no pytest) for tests/test_eval_libero_sim.py.

Every call of LIBERO's `ControlEnv.step` is recorded (the action the env received and the observation it
returned), so the test can compare them with what the dataset holds or what the policy server received.

    python tests/libero_side.py render-check OUT.npz
    python tests/libero_side.py collect DATASET_DIR OUT.npz
    python tests/libero_side.py eval OUT.npz -- <beingh eval --env libero arguments>
"""

from __future__ import annotations

import sys

import numpy as np

from beingh.eval.libero_env import import_libero

STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
IMAGE_KEYS = ("agentview_image", "robot0_eye_in_hand_image")


class StepRecorder:
    """Wraps `ControlEnv.step` of the installed LIBERO."""

    def __init__(self):
        import_libero()
        from libero.libero.envs.env_wrapper import ControlEnv

        self.actions, self.observations = [], []
        original = ControlEnv.step

        def step(env, action):
            result = original(env, action)
            self.actions.append(np.array(action, dtype=np.float64))
            self.observations.append({k: np.array(v) for k, v in result[0].items()
                                      if k in STATE_KEYS + IMAGE_KEYS})
            return result

        ControlEnv.step = step

    def save(self, path: str, **extra) -> None:
        arrays = {"actions": np.stack(self.actions), **extra}
        for key in STATE_KEYS:
            arrays[key] = np.stack([o[key] for o in self.observations])
        for key in IMAGE_KEYS:  # images only exist on the steps that rendered them
            rendered = [i for i, o in enumerate(self.observations) if key in o]
            arrays[f"{key}_steps"] = np.array(rendered, dtype=np.int64)
            if rendered:
                arrays[key] = np.stack([self.observations[i][key] for i in rendered])
        np.savez(path, **arrays)


def render_check(out: str) -> None:
    """On-demand rendering (LiberoEnv) gives the images an always-rendering OffScreenRenderEnv gives."""
    from libero.libero.envs import OffScreenRenderEnv

    from beingh.eval.libero_env import LiberoEnv, load_task

    task = load_task("libero_spatial", 0)
    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.uniform(-0.5, 0.5, (12, 6)), rng.choice([-1.0, 1.0], (12, 1))], axis=1)
    render_at = {3, 7, 11}
    lazy = LiberoEnv(task, 64)
    lazy.reset(task.init_states[0], seed=3, render=False)
    lazy_obs = [lazy.step(a, render=i in render_at)[0] for i, a in enumerate(actions)]
    lazy.close()
    full = OffScreenRenderEnv(bddl_file_name=task.bddl_file, camera_heights=64, camera_widths=64)
    full.seed(3)
    full.reset()
    full.set_init_state(task.init_states[0])
    for _ in range(10):
        full.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    full_obs = [full.step(a)[0] for a in actions]
    full.close()
    for i, (a, b) in enumerate(zip(lazy_obs, full_obs)):
        for key in STATE_KEYS:
            assert np.array_equal(a[key], b[key]), (i, key)
        for key in IMAGE_KEYS:
            assert (key in a) == (i in render_at), (i, key)
            if key in a:
                assert np.array_equal(a[key], b[key]), f"step {i}: {key} differs from the always-on render"
                assert b[key].std() > 1, "blank image"
    np.savez(out, checked_steps=np.array(sorted(render_at)))
    print("render-check OK")


def collect(dataset: str, out: str) -> None:
    from beingh.eval.libero_collect import LiberoCollectConfig, collect_libero_demos

    recorder = StepRecorder()
    report = collect_libero_demos(LiberoCollectConfig(suite="libero_spatial", task_ids=[0], episodes=1,
                                                      out=dataset, image_size=128, seed=5))
    recorder.save(out, seeds=np.array(report.seeds["libero_spatial/0"]))
    print("collect OK", report.kept, report.attempted)


def evaluate(out: str, args: list[str]) -> None:
    from beingh.eval.libero_client import main

    recorder = StepRecorder()
    code = main(args)
    recorder.save(out)
    print("eval OK", code)


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "render-check":
        render_check(rest[0])
    elif command == "collect":
        collect(rest[0], rest[1])
    elif command == "eval":
        evaluate(rest[0], rest[rest.index("--") + 1:])
    else:
        raise SystemExit(f"unknown command {command!r}")
