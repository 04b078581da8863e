"""MetaWorld scripted-expert demonstrations -> LeRobot v3.0 dataset (the format `beingh train` reads).

Columns: `observation.images.corner` (video; plus `observation.images.top` with extra camera `topview`,
which the `metaworld_2view` config reads), `observation.state` = [hand xyz, gripper opening],
`observation.environment_state` = [object xyz, goal xyz] (privileged: the `metaworld` data config does not
feed it to the model, `metaworld_goal` does), `action` = expert [dx, dy, dz, grip] clipped to [-1, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from beingh.data.lerobot_writer import LeRobotV3Writer
from beingh.eval.metaworld_env import (
    ACTION_DIM,
    EVAL_SEED_START,
    STATE_DIM,
    TRAIN_SEED_START,
    MetaWorldEnv,
    MetaWorldObservation,
    ScriptedExpert,
)

logger = logging.getLogger(__name__)

CAMERA_COLUMN = "observation.images.corner"
# Extra MetaWorld cameras a data config may ask for, by the dataset column they are written to.
EXTRA_CAMERA_COLUMNS: dict[str, str] = {"topview": "observation.images.top"}
FPS = 20  # MetaWorld: frame_skip 5 x 0.01 s timestep = 0.05 s per control step
ROBOT_TYPE = "sawyer"


@dataclass
class CollectConfig:
    tasks: list[str]
    episodes: int  # successful episodes per task (all attempted ones with keep_failed)
    out: Path
    image_size: int = 224
    camera: str = "corner2"
    seed: int = TRAIN_SEED_START
    keep_failed: bool = False
    max_steps: int = 200
    video_codec: str = "h264"
    extra_cameras: tuple[str, ...] = ()  # keys of EXTRA_CAMERA_COLUMNS, written next to the main camera
    max_attempts_factor: int = 3  # give up on a task after episodes * factor attempts


@dataclass
class CollectReport:
    out: Path
    kept: dict[str, int]
    attempted: dict[str, int]
    seeds: dict[str, list[int]]
    num_frames: int


def extra_cameras_for(video_columns: list[str]) -> tuple[str, ...]:
    """The extra cameras whose columns a data config reads (its VIDEO_SOURCE_COLUMNS values)."""
    known = {CAMERA_COLUMN, *EXTRA_CAMERA_COLUMNS.values()}
    unknown = sorted(set(video_columns) - known)
    if unknown:
        raise ValueError(f"MetaWorld demos have no camera column {unknown}; known: {sorted(known)}")
    return tuple(camera for camera, column in EXTRA_CAMERA_COLUMNS.items() if column in video_columns)


def _camera_column(camera: str) -> str:
    if camera not in EXTRA_CAMERA_COLUMNS:
        raise ValueError(f"extra camera {camera!r}: expected one of {sorted(EXTRA_CAMERA_COLUMNS)}")
    return EXTRA_CAMERA_COLUMNS[camera]


def metaworld_features(image_size: int, extra_cameras: tuple[str, ...] = ()) -> dict[str, dict]:
    video = {"dtype": "video", "shape": (image_size, image_size, 3), "names": ["height", "width", "channels"]}
    return {
        CAMERA_COLUMN: video,
        **{_camera_column(camera): dict(video) for camera in extra_cameras},
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,),
                              "names": ["hand_x", "hand_y", "hand_z", "gripper_opening"]},
        "observation.environment_state": {"dtype": "float32", "shape": (6,),
                                          "names": ["obj_x", "obj_y", "obj_z", "goal_x", "goal_y", "goal_z"]},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": ["dx", "dy", "dz", "grip"]},
    }


def _frame(observation: MetaWorldObservation, action: np.ndarray) -> dict[str, np.ndarray]:
    return {
        CAMERA_COLUMN: observation.image,
        **{_camera_column(camera): image for camera, image in observation.extra_images.items()},
        "observation.state": observation.state,
        "observation.environment_state": observation.environment_state,
        "action": action,
    }


def collect_demos(config: CollectConfig) -> CollectReport:
    """Roll out the scripted expert on seeds seed, seed+1, ... per task; keep successful episodes."""
    attempts_per_task = config.episodes * (1 if config.keep_failed else config.max_attempts_factor)
    if config.seed < 0 or config.seed + attempts_per_task > EVAL_SEED_START:
        raise ValueError(f"--seed {config.seed}: training seeds must stay in [0, {EVAL_SEED_START}) so they never "
                         f"overlap evaluation seeds (needs up to {attempts_per_task} seeds per task)")
    writer = LeRobotV3Writer(config.out, FPS, metaworld_features(config.image_size, config.extra_cameras), ROBOT_TYPE,
                             video_codec=config.video_codec)
    report = CollectReport(out=Path(config.out), kept={}, attempted={}, seeds={}, num_frames=0)
    try:
        progress = tqdm(total=config.episodes * len(config.tasks), desc="collect", unit="ep")
        for task in config.tasks:
            env = MetaWorldEnv(task, config.image_size, config.camera, config.max_steps, config.extra_cameras)
            expert = ScriptedExpert(task)
            report.kept[task], report.attempted[task], report.seeds[task] = 0, 0, []
            seed = config.seed
            while report.kept[task] < config.episodes and report.attempted[task] < attempts_per_task:
                success, length = _record_episode(env, expert, seed, writer)
                report.attempted[task] += 1
                if success or config.keep_failed:
                    writer.save_episode()
                    report.kept[task] += 1
                    report.seeds[task].append(seed)
                    report.num_frames += length
                    progress.update(1)
                else:
                    writer.clear_episode()
                seed += 1
                progress.set_postfix(task=task, kept=report.kept[task], tried=report.attempted[task])
            env.close()
            if report.kept[task] < config.episodes:
                logger.warning("%s: only %d/%d successful expert episodes in %d attempts", task,
                               report.kept[task], config.episodes, report.attempted[task])
        progress.close()
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    return report


def _record_episode(env: MetaWorldEnv, expert: ScriptedExpert, seed: int, writer: LeRobotV3Writer
                    ) -> tuple[bool, int]:
    observation = env.reset(seed)
    success, done, length = False, False, 0
    while not done:
        action = expert(observation)
        writer.add_frame(_frame(observation, action), task=env.instruction)
        observation, success, done = env.step(action)
        length += 1
    return success, length
