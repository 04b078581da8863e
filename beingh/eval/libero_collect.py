"""`beingh demo collect --env libero`: scripted-expert LIBERO demos -> LeRobot v3.0 in the public LIBERO layout.

    .venv-libero/bin/beingh demo collect --env libero --suite libero_spatial --tasks 0,1,2,3 --episodes 20 \
        --out data/libero_spatial_demos --image_size 128

Each attempt samples a fresh layout (`env.seed(seed)`, `env.reset()`; never one of the suite's fixed
evaluation states), rolls the privileged expert out with the cameras off (physics only, ~10x faster), and,
when `env.check_success()` holds, replays the recorded actions from the same state with the cameras on to
write the frames. The replay must succeed at the same step, or the episode is dropped.

The dataset is what `libero_nonorm` reads (the layout of the public LIBERO LeRobot datasets the released
checkpoints were post-trained on): `observation.images.image` / `observation.images.wrist_image` rotated
180 degrees as the original's client sends them, `observation.state` = [eef xyz, eef axis-angle, 2 gripper
qpos], `action` = [dxyz, daxis-angle, gripper] with gripper 1 = open / -1 = close (the env's opposite; see
`libero_client.dataset_action`), the suite's instruction as the task, 20 fps. It also holds the privileged
`observation.environment_state` = [bowl xyz, plate xyz] that only `libero_privileged` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from beingh.eval.libero_client import (
    ENVIRONMENT_STATE_COLUMN,
    IMAGE_COLUMNS,
    STATE_COLUMN,
    dataset_action,
    libero_columns,
)
from beingh.eval.libero_env import (
    FPS,
    SUITE_MAX_STEPS,
    LiberoEnv,
    LiberoTask,
    load_task,
    num_tasks,
    parse_task_ids,
)
from beingh.eval.libero_expert import BowlOnPlateExpert

logger = logging.getLogger(__name__)

ROBOT_TYPE = "franka"
SUPPORTED_SUITES = ("libero_spatial",)  # the expert script knows bowl-on-plate only
STATE_NAMES = ["x", "y", "z", "axis_angle_x", "axis_angle_y", "axis_angle_z", "gripper_left", "gripper_right"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]


@dataclass
class LiberoCollectConfig:
    suite: str
    task_ids: list[int]
    episodes: int  # successful episodes per task
    out: Path
    image_size: int = 128
    seed: int = 0  # first layout seed; attempt i of a task uses seed + i
    max_steps: int | None = None  # default: the suite's evaluation budget
    video_codec: str = "h264"
    max_attempts_factor: int = 3  # give up on a task after episodes x factor attempts


@dataclass
class LiberoCollectReport:
    out: Path
    kept: dict[str, int] = field(default_factory=dict)
    attempted: dict[str, int] = field(default_factory=dict)
    seeds: dict[str, list[int]] = field(default_factory=dict)
    replay_mismatches: int = 0
    num_frames: int = 0


def libero_features(image_size: int, num_objects: int = 2) -> dict[str, dict]:
    video = {"dtype": "video", "shape": (image_size, image_size, 3), "names": ["height", "width", "rgb"]}
    object_names = [f"object{i}_{axis}" for i in range(num_objects) for axis in "xyz"]
    return {
        **{column: dict(video) for column in IMAGE_COLUMNS.values()},
        STATE_COLUMN: {"dtype": "float32", "shape": (8,), "names": {"motors": STATE_NAMES}},
        ENVIRONMENT_STATE_COLUMN: {"dtype": "float32", "shape": (3 * num_objects,), "names": object_names},
        "action": {"dtype": "float32", "shape": (7,), "names": {"motors": ACTION_NAMES}},
    }


def is_evaluation_state(state: np.ndarray, init_states: np.ndarray) -> bool:
    """Whether `state` equals one of the suite's fixed initial states (the sim time, entry 0, aside)."""
    if init_states.ndim != 2 or init_states.shape[1] != state.shape[0]:
        raise ValueError(f"sampled sim state has {state.shape[0]} values, the suite's initial states "
                         f"{init_states.shape}")
    return bool(np.isclose(init_states[:, 1:], state[1:], atol=1e-6).all(axis=1).any())


def expert_rollout(env: LiberoEnv, init_state: np.ndarray, seed: int, max_steps: int
                   ) -> tuple[list[np.ndarray], bool]:
    """Physics only: the expert's env actions (float32 values, exactly what is stored) and its success."""
    observation = env.reset(init_state, seed=seed, render=False)
    expert = BowlOnPlateExpert()
    expert.plan(env)
    actions, done = [], False
    while not done and len(actions) < max_steps:
        action = expert.act(observation).astype(np.float32).astype(np.float64)
        observation, _, done, _ = env.step(action, render=False)
        actions.append(action)
    return actions, done and env.check_success()


def replay_frames(env: LiberoEnv, init_state: np.ndarray, seed: int, actions: list[np.ndarray]
                  ) -> list[dict[str, np.ndarray]] | None:
    """Cameras on: one dataset frame per action; None when the replay does not succeed at the last action."""
    observation = env.reset(init_state, seed=seed, render=True)
    objects = env.objects_of_interest
    frames = []
    for index, action in enumerate(actions):
        columns, images = libero_columns(observation, objects)
        frames.append({**images, **columns, "action": dataset_action(action)})
        observation, _, done, _ = env.step(action, render=True)
        if done != (index == len(actions) - 1):
            return None
    return frames


def collect_libero_demos(config: LiberoCollectConfig) -> LiberoCollectReport:
    from beingh.data.lerobot_writer import LeRobotV3Writer

    if config.suite not in SUPPORTED_SUITES:
        raise ValueError(f"--suite {config.suite}: the scripted expert covers {list(SUPPORTED_SUITES)} only")
    max_steps = config.max_steps or SUITE_MAX_STEPS[config.suite]
    writer = LeRobotV3Writer(config.out, FPS, libero_features(config.image_size), ROBOT_TYPE,
                             video_codec=config.video_codec)
    report = LiberoCollectReport(out=Path(config.out))
    progress = tqdm(total=config.episodes * len(config.task_ids), desc="collect libero", unit="ep")
    try:
        for task_id in config.task_ids:
            task = load_task(config.suite, task_id)
            env = LiberoEnv(task, config.image_size)
            try:
                _collect_task(env, task, config, max_steps, writer, report, progress)
            finally:
                env.close()
        progress.close()
        writer.finalize()
    except BaseException:
        progress.close()
        writer.abort()
        raise
    return report


def _collect_task(env: LiberoEnv, task: LiberoTask, config: LiberoCollectConfig, max_steps: int, writer,
                  report: LiberoCollectReport, progress: tqdm) -> None:
    key = f"{task.suite}/{task.task_id}"
    report.kept[key], report.attempted[key], report.seeds[key] = 0, 0, []
    seed = config.seed
    while report.kept[key] < config.episodes and report.attempted[key] < config.episodes * config.max_attempts_factor:
        init_state = env.sample_init_state(seed)
        if is_evaluation_state(init_state, task.init_states):
            logger.warning("%s seed %d: sampled one of the evaluation initial states; skipped", key, seed)
            seed += 1
            continue
        report.attempted[key] += 1
        actions, success = expert_rollout(env, init_state, seed, max_steps)
        frames = replay_frames(env, init_state, seed, actions) if success else None
        if success and frames is None:
            report.replay_mismatches += 1
            logger.warning("%s seed %d: the camera replay did not reproduce the expert's success; dropped", key, seed)
        if frames is not None:
            for frame in frames:
                writer.add_frame(frame, task=task.language)
            writer.save_episode()
            report.kept[key] += 1
            report.seeds[key].append(seed)
            report.num_frames += len(frames)
            progress.update(1)
        seed += 1
        progress.set_postfix(task=task.task_id, kept=report.kept[key], tried=report.attempted[key])
    if report.kept[key] < config.episodes:
        logger.warning("%s: only %d/%d successful expert episodes in %d attempts", key, report.kept[key],
                       config.episodes, report.attempted[key])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="beingh demo collect --env libero", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=("libero",), required=True)
    parser.add_argument("--suite", default="libero_spatial", choices=SUPPORTED_SUITES)
    parser.add_argument("--tasks", default=None, help="comma-separated task ids (default: all)")
    parser.add_argument("--episodes", type=int, required=True, help="successful episodes per task")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--image_size", type=int, default=128, help="camera resolution (px)")
    parser.add_argument("--seed", type=int, default=0, help="first layout seed")
    parser.add_argument("--max_steps", type=int, default=None, help="default: the suite's evaluation budget")
    parser.add_argument("--video_codec", default="h264", choices=("h264", "libsvtav1", "image"))
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    report = collect_libero_demos(LiberoCollectConfig(
        suite=args.suite, task_ids=parse_task_ids(args.tasks, num_tasks(args.suite)), episodes=args.episodes,
        out=args.out, image_size=args.image_size, seed=args.seed, max_steps=args.max_steps,
        video_codec=args.video_codec))
    print(json.dumps({"out": str(report.out), "kept": report.kept, "attempted": report.attempted,
                      "seeds": report.seeds, "replay_mismatches": report.replay_mismatches,
                      "frames": report.num_frames}, indent=2))
    return 0
