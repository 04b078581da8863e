"""LIBERO evaluation against `beingh serve` (or a checkpoint), for users who have LIBERO installed.

Protocol (reference upstream_train_infer.md §7.1): per task and trial, the suite's fixed initial state,
10 no-op steps, then at most the suite's step budget; replan every `execute_steps` (8) of the 16-step
chunk; images rotated 180 degrees; state = [eef xyz, axis-angle (robosuite's quat2axisangle), gripper
qpos (2)]; actions are world-frame deltas; gripper `g -> -2g + 1`, binarized to +-1 (the original left
it continuous). Success is the env's `done`.
"""

from __future__ import annotations

import argparse
import logging
import math
from functools import partial
from typing import Any

import numpy as np
from tqdm import tqdm

from beingh.data.embodiment import BaseDataConfig
from beingh.eval.mapping import action_columns, policy_observation
from beingh.eval.rollout import ChunkExecutor

logger = logging.getLogger(__name__)

PIP_HINT = ("LIBERO is not installed: `pip install hf-libero` (or follow https://github.com/Lifelong-Robot-Learning/"
            "LIBERO); it also needs its scene assets and MUJOCO_GL=egl")
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                   "libero_90": 400}
NUM_WAIT_STEPS = 10
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
IMAGE_COLUMNS = {"agentview_image": "observation.images.image",
                 "robot0_eye_in_hand_image": "observation.images.wrist_image"}


def suite_name(name: str) -> str:
    """'spatial' or 'libero_spatial' -> 'libero_spatial' (validated)."""
    full = name if name.startswith("libero_") else f"libero_{name}"
    if full not in SUITE_MAX_STEPS:
        raise ValueError(f"--task_suite {name!r}: expected one of {sorted(SUITE_MAX_STEPS)} (or without 'libero_')")
    return full


def robosuite_quat2axisangle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite's `quat2axisangle` (angle 2*acos(w) in [0, 2pi]): the LIBERO datasets' state convention."""
    quat = np.asarray(quat_xyzw, dtype=np.float64)
    w = min(max(quat[3], -1.0), 1.0)
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return quat[:3] * 2.0 * math.acos(w) / den


def libero_columns(raw_obs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """LIBERO env observation -> (state columns, images by dataset column), as in the LeRobot LIBERO data."""
    state = np.concatenate([
        np.asarray(raw_obs["robot0_eef_pos"], dtype=np.float64),
        robosuite_quat2axisangle(raw_obs["robot0_eef_quat"]),
        np.asarray(raw_obs["robot0_gripper_qpos"], dtype=np.float64),
    ])
    images = {column: np.ascontiguousarray(raw_obs[key][::-1, ::-1]) for key, column in IMAGE_COLUMNS.items()}
    return {"observation.state": state}, images


def libero_policy_observation(raw_obs: dict[str, np.ndarray], data_config: BaseDataConfig,
                             instruction: str) -> dict[str, Any]:
    columns, images = libero_columns(raw_obs)
    return policy_observation(data_config, columns, images, instruction)


def libero_env_actions(action_chunk: np.ndarray) -> np.ndarray:
    """(T, 7) dataset actions -> env actions: gripper g -> -2g + 1, then binarized to -1 (open) / +1 (close)."""
    chunk = np.array(action_chunk, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[1] != 7:
        raise ValueError(f"LIBERO action chunk must be (T, 7), got {chunk.shape}")
    chunk[:, 6] = np.where(-2.0 * chunk[:, 6] + 1.0 > 0.0, 1.0, -1.0)
    return chunk


def libero_chunk(data_config: BaseDataConfig, reply: dict[str, Any]) -> np.ndarray:
    return libero_env_actions(action_columns(data_config, reply)["action"])


def add_libero_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task_suite", default="libero_spatial", help=f"one of {sorted(SUITE_MAX_STEPS)}")
    parser.add_argument("--task_ids", default=None, help="comma-separated task ids (default: all in the suite)")
    parser.add_argument("--num_trials", type=int, default=50, help="trials per task")
    parser.add_argument("--seed", type=int, default=41, help="trial seed = seed + trial index")
    parser.add_argument("--resolution", type=int, default=256, help="camera resolution")
    parser.add_argument("--max_steps", type=int, default=None, help="default: the suite's budget")


def _import_libero():
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as err:
        raise SystemExit(f"beingh eval --env libero: {PIP_HINT} ({err})") from err
    return benchmark, get_libero_path, OffScreenRenderEnv


def run_libero(args: argparse.Namespace, spec) -> dict[str, Any]:
    import os

    from beingh.data.embodiment import get_data_config
    from beingh.eval.policy_loader import open_policy

    os.environ.setdefault("MUJOCO_GL", "egl")
    benchmark, get_libero_path, OffScreenRenderEnv = _import_libero()
    suite = suite_name(args.task_suite)
    max_steps = args.max_steps or SUITE_MAX_STEPS[suite]
    task_suite = benchmark.get_benchmark_dict()[suite]()
    task_ids = ([int(t) for t in args.task_ids.split(",")] if args.task_ids else list(range(task_suite.n_tasks)))
    executor = ChunkExecutor(open_policy(spec), args.execute_steps, args.rtc)
    data_config = get_data_config(spec.data_config_name)(embodiment_tag=spec.embodiment_tag)
    results: dict[str, Any] = {"suite": suite, "max_steps": max_steps, "tasks": {}, "episodes": []}
    progress = tqdm(total=len(task_ids) * args.num_trials, desc=f"eval {suite}", unit="ep")
    for task_id in task_ids:
        task = task_suite.get_task(task_id)
        init_states = task_suite.get_task_init_states(task_id)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=args.resolution,
                                 camera_widths=args.resolution)
        successes = 0
        for trial in range(args.num_trials):
            seed = args.seed + task_id * args.num_trials + trial
            env.seed(seed)
            env.reset()
            raw = env.set_init_state(init_states[trial % len(init_states)])
            for _ in range(NUM_WAIT_STEPS):
                raw, _, _, _ = env.step(WAIT_ACTION)
            executor.reset()
            done, steps = False, 0
            while not done and steps < max_steps:
                action = executor.next_action(partial(libero_policy_observation, raw, data_config, task.language),
                                              partial(libero_chunk, data_config))
                raw, _, done, _ = env.step(action)
                steps += 1
            successes += bool(done)
            results["episodes"].append({"task": task.name, "trial": trial, "seed": seed, "success": bool(done),
                                        "steps": steps, "policy_calls": executor.calls})
            progress.update(1)
            progress.set_postfix(task=task_id, success=f"{successes}/{trial + 1}")
        env.close()
        results["tasks"][task.name] = {"success_rate": successes / args.num_trials, "successes": successes,
                                       "episodes": args.num_trials}
    progress.close()
    total = sum(t["successes"] for t in results["tasks"].values())
    results["overall_success_rate"] = total / (len(task_ids) * args.num_trials)
    return results
