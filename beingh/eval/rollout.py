"""Closed-loop MetaWorld rollouts with action chunking: execute `execute_steps` of each predicted chunk,
then ask the policy again (optionally telling it how many steps ran, for real-time chunking)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from beingh.data.embodiment import BaseDataConfig, get_data_config
from beingh.eval.chunking import ChunkExecutor, ChunkPolicy
from beingh.eval.collect import CAMERA_COLUMN, EXTRA_CAMERA_COLUMNS, extra_cameras_for
from beingh.eval.mapping import action_columns, policy_observation
from beingh.eval.metaworld_env import ACTION_DIM, EVAL_SEED_START, MetaWorldEnv, MetaWorldObservation
from beingh.eval.video_io import write_mp4

logger = logging.getLogger(__name__)

EMBODIMENT_TAG = "metaworld"


@dataclass
class RolloutConfig:
    execute_steps: int = 8  # actions executed from each chunk before replanning
    max_steps: int = 200
    rtc: bool = False  # report executed steps so the policy can lock the committed chunk prefix
    image_size: int = 224
    camera: str = "corner2"
    data_config_name: str = "metaworld"  # "metaworld_goal" (privileged object/goal state), "metaworld_2view"


@dataclass
class EpisodeResult:
    task: str
    seed: int
    success: bool
    steps: int
    policy_calls: int
    frames: list[np.ndarray] | None = field(default=None, repr=False)


def metaworld_data_config(name: str = "metaworld") -> BaseDataConfig:
    return get_data_config(name)(embodiment_tag=EMBODIMENT_TAG)


def metaworld_observation(observation: MetaWorldObservation, instruction: str,
                          data_config: BaseDataConfig) -> dict[str, Any]:
    """Env observation -> policy observation dict (the columns `beingh demo collect` writes)."""
    columns = {"observation.state": observation.state,
               "observation.environment_state": observation.environment_state}
    images = {CAMERA_COLUMN: observation.image,
              **{EXTRA_CAMERA_COLUMNS[camera]: image for camera, image in observation.extra_images.items()}}
    return policy_observation(data_config, columns, images, instruction)


def data_config_cameras(data_config: BaseDataConfig) -> tuple[str, ...]:
    """The extra MetaWorld cameras the data config's views need (besides the main one)."""
    return extra_cameras_for(list(data_config.VIDEO_SOURCE_COLUMNS.values()))


def metaworld_action_chunk(reply: dict[str, Any], data_config: BaseDataConfig) -> np.ndarray:
    """Policy reply -> (T, 4) [dx, dy, dz, grip] chunk."""
    chunk = action_columns(data_config, reply)["action"]
    if chunk.shape[1] != ACTION_DIM or len(chunk) == 0:
        raise ValueError(f"policy chunk has shape {chunk.shape}, expected (T, {ACTION_DIM})")
    return chunk.astype(np.float32)


def run_episode(env: MetaWorldEnv, policy: ChunkPolicy, seed: int, config: RolloutConfig,
                record: bool = False) -> EpisodeResult:
    data_config = metaworld_data_config(config.data_config_name)
    executor = ChunkExecutor(policy, config.execute_steps, config.rtc)
    executor.reset()
    observation = env.reset(seed)
    frames = [observation.image] if record else None
    success, done = False, False
    while not done:
        action = executor.next_action(lambda obs=observation: metaworld_observation(obs, env.instruction, data_config),
                                      lambda reply: metaworld_action_chunk(reply, data_config))
        observation, success, done = env.step(action)
        if frames is not None:
            frames.append(observation.image)
    return EpisodeResult(env.task, seed, success, env.steps, executor.calls, frames)


def evaluate(policy: ChunkPolicy, tasks: list[str], episodes: int, config: RolloutConfig,
             seed_start: int = EVAL_SEED_START, video_dir: Path | None = None, videos_per_task: int = 2,
             fps: int = 20) -> dict[str, Any]:
    """Success rate per task and overall on seeds seed_start..seed_start+episodes-1 (evaluation range)."""
    if seed_start < EVAL_SEED_START:
        raise ValueError(f"evaluation seeds must be >= {EVAL_SEED_START} (training demos use lower seeds), "
                         f"got {seed_start}")
    results: dict[str, Any] = {"config": asdict(config), "seed_start": seed_start, "tasks": {}, "episodes": []}
    progress = tqdm(total=episodes * len(tasks), desc="eval", unit="ep")
    for task in tasks:
        env = MetaWorldEnv(task, config.image_size, config.camera, config.max_steps,
                           data_config_cameras(metaworld_data_config(config.data_config_name)))
        successes = 0
        for i in range(episodes):
            record = video_dir is not None and i < videos_per_task
            result = run_episode(env, policy, seed_start + i, config, record=record)
            successes += result.success
            entry = {k: v for k, v in asdict(result).items() if k != "frames"}
            if record:
                path = Path(video_dir) / f"{task}_seed{result.seed}_{'success' if result.success else 'fail'}.mp4"
                write_mp4(path, result.frames, fps)
                entry["video"] = str(path)
            results["episodes"].append(entry)
            progress.update(1)
            progress.set_postfix(task=task, success=f"{successes}/{i + 1}")
        env.close()
        results["tasks"][task] = {"success_rate": successes / episodes, "successes": successes,
                                  "episodes": episodes}
        logger.info("%s: success %d/%d", task, successes, episodes)
    progress.close()
    total = sum(t["successes"] for t in results["tasks"].values())
    results["overall_success_rate"] = total / (episodes * len(tasks))
    return results
