"""One training/inference sample before tokenization and packing, and its builder for LeRobot frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from beingh.data.embodiment import BaseDataConfig, embodiment_id
from beingh.data.metadata import DatasetMetadata
from beingh.data.transforms import EmbodimentTransform, slice_modalities

if TYPE_CHECKING:
    from beingh.data.lerobot import LeRobotDataset


@dataclass
class RobotSample:
    """A sample in the unified space, ready for the prompt builder and the packer.

    Built by the sample builder from a LeRobot frame (training) or by the policy from an
    observation (inference, where `action` is zeros and `action_mask` all False).
    """

    images: list[np.ndarray]
    """One (H, W, 3) uint8 RGB frame per selected view, in view order."""
    state: np.ndarray
    """(200,) float32 normalized unified state (zeros in unused slots)."""
    action: np.ndarray
    """(T, 200) float32 normalized unified action chunk."""
    action_mask: np.ndarray
    """(T, 200) bool: valid unified dims at chunk steps inside the episode."""
    instruction: str
    """Task text (without the prompt template)."""
    embodiment_id: int


class SampleBuilder:
    """Frame (episode, t) of a LeRobot dataset -> RobotSample.

    Views: the current frame of each selected view. State: frame t. Actions: the chunk a_t .. a_{t+T-1}
    (LeRobot convention: action[t] is issued at observation t). Past the episode end, delta actions
    (`absolute=False`) are zero ("no motion") and absolute ones repeat the last row, and those steps are
    masked out of the loss (the reference kept them unmasked, reference/upstream_data.md §10.8).

    `state_dropout_prob` zeroes the whole unified state; `view_dropout_prob` drops each view
    independently when there are several, always keeping at least one.
    """

    def __init__(self, dataset: LeRobotDataset, data_config: BaseDataConfig, metadata: DatasetMetadata,
                 action_chunk_length: int = 16, state_dropout_prob: float = 0.0, view_dropout_prob: float = 0.0):
        if action_chunk_length < 1:
            raise ValueError(f"action_chunk_length must be >= 1, got {action_chunk_length}")
        for name, p in (("state_dropout_prob", state_dropout_prob), ("view_dropout_prob", view_dropout_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.dataset = dataset
        self.data_config = data_config
        self.transform = EmbodimentTransform(data_config, metadata)
        self.action_chunk_length = action_chunk_length
        self.state_dropout_prob = state_dropout_prob
        self.view_dropout_prob = view_dropout_prob
        self.embodiment_id = embodiment_id(data_config.embodiment_tag)
        self.state_keys = list(data_config.STATE_KEYS)
        self.action_keys = list(data_config.ACTION_KEYS)
        self.state_columns = list(dict.fromkeys(data_config.modality(k).source_column for k in self.state_keys))
        self.action_columns = list(dict.fromkeys(data_config.modality(k).source_column for k in self.action_keys))
        self._check_dataset()

    def _check_dataset(self) -> None:
        """Fail at construction, naming the dataset and key, rather than on the first sample."""
        where = f"{self.dataset.root} with data config {self.data_config.name}"
        for key in self.state_keys + self.action_keys:
            mod = self.data_config.modality(key)
            feature = self.dataset.features.get(mod.source_column)
            if feature is None:
                raise ValueError(f"{where}: {key!r} reads column {mod.source_column!r}, which the dataset lacks; "
                                 f"columns: {sorted(self.dataset.features)}")
            width = int(np.prod(feature.get("shape") or [1]))
            if mod.end > width:
                raise ValueError(f"{where}: {key!r} slices [{mod.start}:{mod.end}] of {mod.source_column!r}, "
                                 f"which has {width} dims")
        for view, column in self.data_config.VIDEO_SOURCE_COLUMNS.items():
            if view in self.data_config.VIDEO_KEYS and column not in self.dataset.camera_keys:
                raise ValueError(f"{where}: view {view!r} reads camera {column!r}; cameras: {self.dataset.camera_keys}")

    def _views(self, rng: np.random.Generator) -> list[str]:
        views = self.data_config.select_views(rng)
        if len(views) > 1 and self.view_dropout_prob > 0:
            keep = rng.random(len(views)) >= self.view_dropout_prob
            if not keep.any():
                keep[rng.integers(len(views))] = True
            views = [v for v, k in zip(views, keep) if k]
        return views

    def __call__(self, episode_index: int, frame_index: int, rng: np.random.Generator) -> RobotSample:
        length = self.dataset.episode(episode_index).length
        if not 0 <= frame_index < length:
            raise IndexError(f"frame {frame_index} out of range [0, {length}) in episode {episode_index} "
                             f"of {self.dataset.root}")
        frame = np.array([frame_index])
        state = slice_modalities(self.data_config, self.dataset.read_rows(episode_index, self.state_columns, frame),
                                 self.state_keys)
        state = {key: values[0] for key, values in state.items()}

        steps = frame_index + np.arange(self.action_chunk_length)
        valid = steps < length
        rows = self.dataset.read_rows(episode_index, self.action_columns, np.minimum(steps, length - 1))
        actions = slice_modalities(self.data_config, rows, self.action_keys)
        for key, values in actions.items():
            if not self.data_config.modality(key).absolute:
                values[~valid] = 0.0
        action, action_mask = self.transform.actions_to_unified(actions, valid, state)

        unified_state = self.transform.state_to_unified(state)
        if self.state_dropout_prob > 0 and rng.random() < self.state_dropout_prob:
            unified_state = np.zeros_like(unified_state)

        images = [self.dataset.read_images(episode_index, frame, self.data_config.VIDEO_SOURCE_COLUMNS[v])[0]
                  for v in self._views(rng)]
        return RobotSample(
            images=images,
            state=unified_state,
            action=action,
            action_mask=action_mask,
            instruction=self.dataset.task_text(episode_index, frame_index),
            embodiment_id=self.embodiment_id,
        )
