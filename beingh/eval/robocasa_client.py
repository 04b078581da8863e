"""RoboCasa evaluation against `beingh serve` (or a checkpoint), for users who have RoboCasa installed.

Protocol (reference upstream_train_infer.md §7.2): PandaOmron, 24 single-stage kitchen tasks
(`SINGLE_STAGE_TASK_DATASETS` minus NavigateKitchen), a fresh env per trial seeded with the trial seed,
3 cameras (left/right agent view, wrist) flipped vertically, at most 720 steps, replanning every 8.
State: base-frame eef xyz + rotation vector, gripper qpos (column `world_abs_state`), base position +
quaternion (`observation.state`). Env action (12): [eef xyz, rotation, 1 - 2g, base motion (4), 2c - 1]
with gripper and control mode binarized to +-1. Unlike the original we never reshape to a hard-coded
chunk length (its `reshape(15, -1)` broke 16-step chunks).
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from typing import Any

import numpy as np
from tqdm import tqdm

from beingh.data.embodiment import BaseDataConfig
from beingh.data.rotation import convert_rotation
from beingh.eval.mapping import action_columns, policy_observation
from beingh.eval.rollout import ChunkExecutor

logger = logging.getLogger(__name__)

PIP_HINT = ("RoboCasa is not installed: install robosuite and robocasa (https://github.com/robocasa/robocasa), "
            "then download the kitchen assets (robocasa/scripts/download_kitchen_assets.py)")
ROBOT = "PandaOmron"
MAX_STEPS = 720
EXCLUDED_TASKS = ("NavigateKitchen",)
CAMERA_COLUMNS = {
    "robot0_agentview_left_image": "observation.images.left_view",
    "robot0_agentview_right_image": "observation.images.right_view",
    "robot0_eye_in_hand_image": "observation.images.wrist_view",
}


def robocasa_columns(raw_obs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """RoboCasa env observation -> (state columns, images by dataset column)."""
    rotvec = convert_rotation(np.asarray(raw_obs["robot0_base_to_eef_quat"], dtype=np.float64),
                              "quaternion_xyzw", "axis_angle")
    world_abs_state = np.concatenate([
        np.asarray(raw_obs["robot0_base_to_eef_pos"], dtype=np.float64), rotvec,
        np.asarray(raw_obs["robot0_gripper_qpos"], dtype=np.float64),
    ])
    base_state = np.concatenate([np.asarray(raw_obs["robot0_base_pos"], dtype=np.float64),
                                 np.asarray(raw_obs["robot0_base_quat"], dtype=np.float64)])
    images = {column: np.ascontiguousarray(raw_obs[key][::-1]) for key, column in CAMERA_COLUMNS.items()}
    return {"world_abs_state": world_abs_state, "observation.state": base_state}, images


def robocasa_policy_observation(raw_obs: dict[str, np.ndarray], data_config: BaseDataConfig,
                             instruction: str) -> dict[str, Any]:
    columns, images = robocasa_columns(raw_obs)
    return policy_observation(data_config, columns, images, instruction)


def robocasa_env_actions(columns: dict[str, np.ndarray]) -> np.ndarray:
    """{"world_delta_action": (T, 7), "action": (T, 12)} -> (T, 12) env actions
    [eef xyz, rotation, gripper +-1 (1 - 2g), base motion (4), control mode +-1 (2c - 1)]."""
    arm, full = np.asarray(columns["world_delta_action"]), np.asarray(columns["action"])
    if arm.ndim != 2 or arm.shape[1] != 7 or full.ndim != 2 or full.shape[1] != 12 or len(arm) != len(full):
        raise ValueError(f"RoboCasa chunk columns must be (T, 7) and (T, 12), got {arm.shape} and {full.shape}")
    gripper = np.where(1.0 - 2.0 * arm[:, 6:7] > 0.0, 1.0, -1.0)
    control_mode = np.where(2.0 * full[:, 11:12] - 1.0 > 0.0, 1.0, -1.0)
    return np.concatenate([arm[:, :6], gripper, full[:, 7:11], control_mode], axis=1)


def robocasa_chunk(data_config: BaseDataConfig, reply: dict[str, Any]) -> np.ndarray:
    return robocasa_env_actions(action_columns(data_config, reply))


def add_robocasa_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: the 24 single-stage)")
    parser.add_argument("--num_trials", type=int, default=50, help="trials per task")
    parser.add_argument("--seed", type=int, default=0, help="trial seed = seed + task index * trials + trial")
    parser.add_argument("--resolution", type=int, default=512, help="camera resolution")
    parser.add_argument("--max_steps", type=int, default=MAX_STEPS)


def _import_robocasa():
    try:
        import robocasa  # noqa: F401  (registers the kitchen environments with robosuite)
        import robosuite
        from robocasa.utils.dataset_registry import SINGLE_STAGE_TASK_DATASETS
        from robosuite.controllers import load_composite_controller_config
    except ImportError as err:
        raise SystemExit(f"beingh eval --env robocasa: {PIP_HINT} ({err})") from err
    return robosuite, SINGLE_STAGE_TASK_DATASETS, load_composite_controller_config


def run_robocasa(args: argparse.Namespace, spec) -> dict[str, Any]:
    import os

    from beingh.data.embodiment import get_data_config
    from beingh.eval.policy_loader import open_policy

    os.environ.setdefault("MUJOCO_GL", "egl")
    robosuite, single_stage, load_controller = _import_robocasa()
    tasks = (args.tasks.split(",") if args.tasks else [t for t in single_stage if t not in EXCLUDED_TASKS])
    executor = ChunkExecutor(open_policy(spec), args.execute_steps, args.rtc)
    data_config = get_data_config(spec.data_config_name)(embodiment_tag=spec.embodiment_tag)
    results: dict[str, Any] = {"tasks": {}, "episodes": []}
    progress = tqdm(total=len(tasks) * args.num_trials, desc="eval robocasa", unit="ep")
    for task_index, task in enumerate(tasks):
        successes = 0
        for trial in range(args.num_trials):
            seed = args.seed + task_index * args.num_trials + trial
            env = robosuite.make(
                env_name=task, robots=ROBOT, controller_configs=load_controller(robot=ROBOT),
                has_renderer=False, has_offscreen_renderer=True, ignore_done=True, use_object_obs=True,
                use_camera_obs=True, camera_names=[k[: -len("_image")] for k in CAMERA_COLUMNS],
                camera_heights=args.resolution, camera_widths=args.resolution, seed=seed,
            )
            raw = env.reset()
            instruction = env.get_ep_meta().get("lang", task)
            executor.reset()
            success, steps = False, 0
            while not success and steps < args.max_steps:
                action = executor.next_action(partial(robocasa_policy_observation, raw, data_config, instruction),
                                              partial(robocasa_chunk, data_config))
                raw, _, _, _ = env.step(action)
                steps += 1
                success = bool(env._check_success())
            env.close()
            successes += success
            results["episodes"].append({"task": task, "trial": trial, "seed": seed, "success": success,
                                        "steps": steps, "policy_calls": executor.calls})
            progress.update(1)
            progress.set_postfix(task=task, success=f"{successes}/{trial + 1}")
        results["tasks"][task] = {"success_rate": successes / args.num_trials, "successes": successes,
                                  "episodes": args.num_trials}
    progress.close()
    total = sum(t["successes"] for t in results["tasks"].values())
    results["overall_success_rate"] = total / (len(tasks) * args.num_trials)
    return results
