"""LIBERO closed-loop evaluation against `beingh serve`, run from the LIBERO venv (no torch needed).

    .venv-libero/bin/beingh eval --env libero --policy ws://HOST:PORT --suite libero_spatial --tasks 0,1 \
        --episodes 50 --output results.json --video_dir videos      # or: python -m beingh.eval.libero_client

Protocol (reference upstream_train_infer.md §7.1): per task and trial, reset, the suite's fixed initial state
`[trial]`, 10 no-op steps, then at most the suite's step budget; replan every `execute_steps` (8) of the
16-step chunk; images rotated 180 degrees; state = [eef xyz, axis-angle (robosuite's quat2axisangle), gripper
qpos (2)]; actions are world-frame deltas; gripper `g -> -2g + 1`, binarized to +-1 (the original left it
continuous). Success is the env's `done`. Demonstrations (`beingh demo collect --env libero`) start from
freshly sampled layouts, never from these initial states.

This module imports only numpy, tqdm and beingh's torch-free parts (data configs, mapping, chunking,
websocket client), so it works in the LIBERO venv (tests/test_eval_libero.py checks it).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from beingh.data.embodiment import BaseDataConfig
from beingh.eval.libero_env import SUITE_MAX_STEPS
from beingh.eval.mapping import action_columns, policy_observation

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = {"agentview_image": "observation.images.image",
                 "robot0_eye_in_hand_image": "observation.images.wrist_image"}
STATE_COLUMN = "observation.state"
ENVIRONMENT_STATE_COLUMN = "observation.environment_state"
"""Privileged: world positions of the task's objects of interest (libero_spatial: bowl xyz, plate xyz)."""


def robosuite_quat2axisangle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite's `quat2axisangle` (angle 2*acos(w) in [0, 2pi]): the LIBERO datasets' state convention."""
    quat = np.asarray(quat_xyzw, dtype=np.float64)
    w = min(max(quat[3], -1.0), 1.0)
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return quat[:3] * 2.0 * math.acos(w) / den


def rotate_image(image: np.ndarray) -> np.ndarray:
    """LIBERO renders upside down; the original's client and the public datasets rotate 180 degrees."""
    return np.ascontiguousarray(np.asarray(image)[::-1, ::-1])


def libero_columns(raw_obs: dict[str, np.ndarray], objects: list[str] | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """LIBERO env observation -> (state columns, images by dataset column), as in the LeRobot LIBERO data.

    With `objects` (the task's objects of interest) the privileged `observation.environment_state` column
    holds their world positions; only privileged data configs read it.
    """
    columns = {STATE_COLUMN: np.concatenate([
        np.asarray(raw_obs["robot0_eef_pos"], dtype=np.float64),
        robosuite_quat2axisangle(raw_obs["robot0_eef_quat"]),
        np.asarray(raw_obs["robot0_gripper_qpos"], dtype=np.float64),
    ])}
    if objects:
        columns[ENVIRONMENT_STATE_COLUMN] = np.concatenate(
            [np.asarray(raw_obs[f"{name}_pos"], dtype=np.float64) for name in objects])
    images = {column: rotate_image(raw_obs[key]) for key, column in IMAGE_COLUMNS.items() if key in raw_obs}
    return columns, images


def libero_policy_observation(raw_obs: dict[str, np.ndarray], data_config: BaseDataConfig,
                              instruction: str, objects: list[str] | None = None) -> dict[str, Any]:
    columns, images = libero_columns(raw_obs, objects)
    return policy_observation(data_config, columns, images, instruction)


def libero_env_actions(action_chunk: np.ndarray) -> np.ndarray:
    """(T, 7) dataset actions -> env actions: gripper g -> -2g + 1, then binarized to -1 (open) / +1 (close)."""
    chunk = np.array(action_chunk, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[1] != 7:
        raise ValueError(f"LIBERO action chunk must be (T, 7), got {chunk.shape}")
    chunk[:, 6] = np.where(-2.0 * chunk[:, 6] + 1.0 > 0.0, 1.0, -1.0)
    return chunk


def dataset_action(env_action: np.ndarray) -> np.ndarray:
    """Env action (gripper -1 open / +1 close) -> the public LIBERO datasets' action (gripper 1 open / -1 close),
    the polarity `libero_env_actions` undoes, so a demo replays exactly through the client's mapping."""
    action = np.array(env_action, dtype=np.float64).reshape(-1)
    if action.shape != (7,) or abs(action[6]) != 1.0:
        raise ValueError(f"LIBERO env action must be 7 values with gripper -1 or +1, got {env_action!r}")
    action[6] = -action[6]
    return action


def libero_chunk(data_config: BaseDataConfig, reply: dict[str, Any]) -> np.ndarray:
    return libero_env_actions(action_columns(data_config, reply)["action"])


def add_libero_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", "--task_suite", dest="suite", default="libero_spatial",
                        help=f"one of {sorted(SUITE_MAX_STEPS)}")
    parser.add_argument("--tasks", "--task_ids", dest="tasks", default=None,
                        help="comma-separated task ids (default: all in the suite)")
    parser.add_argument("--episodes", "--num_trials", dest="episodes", type=int, default=50,
                        help="trials per task; trial i starts from the suite's fixed initial state i")
    parser.add_argument("--seed", type=int, default=41, help="env seed of a trial = seed + job index")
    parser.add_argument("--resolution", type=int, default=256, help="camera resolution (px)")
    parser.add_argument("--max_steps", type=int, default=None, help="default: the suite's budget")
    parser.add_argument("--videos_per_task", type=int, default=1, help="mp4s of the first trials (--video_dir)")


def _check_policy_reachable(policy: str) -> None:
    from beingh.eval.policy_loader import is_server_address

    if not is_server_address(policy) and importlib.util.find_spec("torch") is None:
        raise SystemExit(f"--policy {policy!r}: this environment has no torch, so it cannot load a checkpoint; "
                         "serve it with `beingh serve` from beingh's main environment and pass "
                         "--policy ws://HOST:PORT")


def _write_video(video_dir: Path, task_name: str, trial: int, success: bool, frames: list[np.ndarray]) -> str:
    from beingh.eval.video_io import write_mp4

    path = video_dir / f"{task_name}_trial{trial}_{'success' if success else 'fail'}.mp4"
    write_mp4(path, frames, fps=20)
    return str(path)


def run_libero(args: argparse.Namespace, spec) -> dict[str, Any]:
    from beingh.data.embodiment import get_data_config
    from beingh.eval.chunking import ChunkExecutor
    from beingh.eval.libero_env import LiberoEnv, load_task, num_tasks, parse_task_ids, suite_name
    from beingh.eval.policy_loader import open_policy

    suite = suite_name(args.suite)
    max_steps = args.max_steps or SUITE_MAX_STEPS[suite]
    task_ids = parse_task_ids(args.tasks, num_tasks(suite))
    _check_policy_reachable(spec.policy)
    policy = open_policy(spec)
    executor = ChunkExecutor(policy, args.execute_steps, args.rtc)
    data_config = get_data_config(spec.data_config_name)(embodiment_tag=spec.embodiment_tag)
    results: dict[str, Any] = {"suite": suite, "max_steps": max_steps, "resolution": args.resolution,
                               "execute_steps": args.execute_steps, "data_config": spec.data_config_name,
                               "policy": spec.policy, "tasks": {}, "episodes": []}
    progress = tqdm(total=len(task_ids) * args.episodes, desc=f"eval {suite}", unit="ep")
    total_successes, done_episodes, start = 0, 0, time.perf_counter()
    try:
        for job, task_id in enumerate(task_ids):
            task = load_task(suite, task_id)
            if args.episodes > len(task.init_states):
                raise ValueError(f"--episodes {args.episodes}: {suite} task {task_id} has only "
                                 f"{len(task.init_states)} fixed initial states (one per trial)")
            env = LiberoEnv(task, args.resolution)
            successes = 0
            for trial in range(args.episodes):
                seed = args.seed + job * args.episodes + trial
                record = args.video_dir is not None and trial < args.videos_per_task
                episode = _run_episode(env, executor, data_config, task.init_states[trial], seed, max_steps, record)
                successes += episode["success"]
                total_successes += episode["success"]
                done_episodes += 1
                frames = episode.pop("frames")
                if record:
                    episode["video"] = _write_video(Path(args.video_dir), task.name, trial, episode["success"],
                                                    frames)
                results["episodes"].append({"task_id": task_id, "task": task.name, "trial": trial,
                                            "init_state": trial, "seed": seed, **episode})
                progress.update(1)
                progress.set_postfix(task=task_id, task_success=f"{successes}/{trial + 1}",
                                     success=f"{total_successes}/{done_episodes}")
            env.close()
            results["tasks"][task.name] = {"task_id": task_id, "language": task.language,
                                           "success_rate": successes / args.episodes, "successes": successes,
                                           "episodes": args.episodes}
            logger.info("%s task %d: success %d/%d", suite, task_id, successes, args.episodes)
    finally:
        progress.close()
        if hasattr(policy, "close"):
            policy.close()
    results["overall_success_rate"] = total_successes / (len(task_ids) * args.episodes)
    results["wall_s"] = time.perf_counter() - start
    return results


def _run_episode(env, executor, data_config: BaseDataConfig, init_state: np.ndarray, seed: int, max_steps: int,
                 record: bool) -> dict[str, Any]:
    """One trial; cameras render only for the observations the policy (or the video) uses."""
    objects = env.objects_of_interest
    raw = env.reset(init_state, seed=seed, render=True)
    executor.reset()
    frames = [_video_frame(raw)] if record else []
    done, steps = False, 0
    while not done and steps < max_steps:
        action = executor.next_action(
            lambda obs=raw: libero_policy_observation(obs, data_config, env.task.language, objects),
            lambda reply: libero_chunk(data_config, reply))
        raw, _, done, _ = env.step(action, render=record or executor.needs_observation)
        steps += 1
        if record:
            frames.append(_video_frame(raw))
    return {"success": bool(done), "steps": steps, "policy_calls": executor.calls, "frames": frames}


def _video_frame(raw_obs: dict[str, np.ndarray]) -> np.ndarray:
    """Agent view | wrist view, rotated as the policy sees them."""
    _, images = libero_columns(raw_obs)
    return np.concatenate([images[column] for column in IMAGE_COLUMNS.values()], axis=1)


def main(argv: list[str] | None = None) -> int:
    """`python -m beingh.eval.libero_client ...` = `beingh eval --env libero ...`."""
    from beingh.eval.cli import main as eval_main

    return eval_main(["--env", "libero", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
