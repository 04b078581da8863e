"""Which (dataset, episode, frame) comes next: deterministic, sharded, weighted, resumable.

Every group keeps its own epoch counter. In an epoch, the group's items (frames in `step` mode,
episodes in `trajectory` mode) are permuted with a seed that depends only on (seed, group, epoch),
identically on every rank and worker, and shard `s` of `S` takes positions `s, s+S, ...`: across
the shards every item is used exactly once per epoch. A shard draws the group of each sample by its
weight from its own RNG. The position of a shard is a few integers plus an RNG state (`state_dict`).

Indexes are numpy arrays per episode (not one Python tuple per frame, reference §10 "Performance").
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from beingh.data.dataset_config import DatasetConfigError, DatasetEntry, DatasetGroup

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleKey:
    """Everything needed to rebuild one sample bit-for-bit."""

    group: int
    dataset: int
    """Index of the dataset within its group."""
    episode: int
    frame: int
    seed: int
    """Seeds view selection, dropout and image augmentation of this sample."""


def select_episodes(
    episode_indices: np.ndarray, lengths: np.ndarray, tasks: list[tuple[str, ...]], entry: DatasetEntry, seed: int
) -> np.ndarray:
    """Positions (into the arrays) of the episodes kept by the `num_used_episodes_*` limits.

    Episodes of length 0 are dropped. Per-task capping (at most N episodes per distinct task list) runs
    first, then the per-dataset cap; both draw with `random.Random(seed)` so every process agrees.
    """
    kept = [i for i in range(len(episode_indices)) if lengths[i] > 0]
    if entry.num_used_episodes_per_task > 0:
        order = list(kept)
        random.Random(seed).shuffle(order)
        per_task: dict[tuple[str, ...], int] = {}
        chosen = []
        for i in order:
            count = per_task.get(tasks[i], 0)
            if count < entry.num_used_episodes_per_task:
                per_task[tasks[i]] = count + 1
                chosen.append(i)
        kept = sorted(chosen)
    if 0 < entry.num_used_episodes_per_dataset < len(kept):
        kept = sorted(random.Random(seed).sample(kept, entry.num_used_episodes_per_dataset))
    return np.asarray(kept, dtype=np.int64)


class DatasetItems:
    """The items of one dataset in a group: episode-level arrays, expanded lazily per epoch.

    step mode: item = one frame, strided by `frame_step_size` from a random start offset per episode
    (re-drawn each epoch, so strided training still sees every frame over epochs).
    trajectory mode: item = one episode; the frame is drawn uniformly when the item is visited.
    With `num_used_frames_per_dataset`, a fixed random subset of frames (without replacement).
    """

    def __init__(
        self,
        where: str,
        entry: DatasetEntry,
        episode_indices: np.ndarray,
        lengths: np.ndarray,
        tasks: list[tuple[str, ...]],
        trajectory: bool,
        seed: int,
    ):
        self.where = where
        self.trajectory = trajectory
        self.step = entry.frame_step_size
        if trajectory and (self.step > 1 or entry.num_used_frames_per_dataset > 0):
            raise DatasetConfigError(
                f"{where}: 'frame_step_size' > 1 and 'num_used_frames_per_dataset' apply to step sampling only "
                "(trajectory sampling draws one uniform frame per episode visit)"
            )
        if self.step > 1 and entry.num_used_frames_per_dataset > 0:
            raise DatasetConfigError(
                f"{where}: set either 'frame_step_size' > 1 or 'num_used_frames_per_dataset', not both"
            )
        keep = select_episodes(episode_indices, lengths, tasks, entry, seed)
        self.episodes = np.asarray(episode_indices, dtype=np.int64)[keep]
        self.lengths = np.asarray(lengths, dtype=np.int64)[keep]
        if len(self.episodes) == 0:
            raise DatasetConfigError(f"{where}: no episodes left after the num_used_episodes_* limits")
        self.length_of = dict(zip(self.episodes.tolist(), self.lengths.tolist()))
        self.fixed: tuple[np.ndarray, np.ndarray] | None = None
        total = int(self.lengths.sum())
        if not trajectory and 0 < entry.num_used_frames_per_dataset < total:
            positions = np.sort(np.asarray(random.Random(seed).sample(range(total), entry.num_used_frames_per_dataset)))
            starts = np.cumsum(self.lengths) - self.lengths
            episode_pos = np.searchsorted(starts, positions, side="right") - 1
            self.fixed = (self.episodes[episode_pos], positions - starts[episode_pos])

    def for_epoch(self, rng: np.random.Generator) -> _EpochItems:
        if self.trajectory:
            return _EpochItems(self.episodes, None, None, None)
        if self.fixed is not None:
            return _EpochItems(self.fixed[0], self.fixed[1], None, None)
        offsets = rng.integers(0, np.minimum(self.step, self.lengths))
        counts = (self.lengths - offsets + self.step - 1) // self.step
        return _EpochItems(self.episodes, offsets, counts, self.step)


@dataclass
class _EpochItems:
    """Item j -> (episode, frame) for one epoch. frames None = trajectory (frame drawn later);
    counts None = explicit per-item arrays; else per-episode strided ranges."""

    episodes: np.ndarray
    frames_or_offsets: np.ndarray | None
    counts: np.ndarray | None
    step: int | None

    def __len__(self) -> int:
        return int(self.counts.sum()) if self.counts is not None else len(self.episodes)

    def lookup(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.frames_or_offsets is None:
            return self.episodes[j], np.full(len(j), -1, dtype=np.int64)
        if self.counts is None:
            return self.episodes[j], self.frames_or_offsets[j]
        ends = np.cumsum(self.counts)
        e = np.searchsorted(ends, j, side="right")
        within = j - (ends[e] - self.counts[e])
        return self.episodes[e], self.frames_or_offsets[e] + within * self.step


class GroupIndex:
    """All datasets of one group and their per-epoch, per-shard item order."""

    def __init__(self, group_id: int, group: DatasetGroup, datasets: list[DatasetItems], seed: int):
        self.group_id = group_id
        self.group = group
        self.datasets = datasets
        self.seed = seed

    def shard(self, epoch: int, shard: int, num_shards: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(dataset, episode, frame) arrays of this shard's items in `epoch` (frame -1: draw at visit)."""
        epoch_items = [
            d.for_epoch(np.random.default_rng([self.seed, self.group_id, i, epoch]))
            for i, d in enumerate(self.datasets)
        ]
        sizes = np.asarray([len(e) for e in epoch_items], dtype=np.int64)
        total = int(sizes.sum())
        order = np.random.default_rng([self.seed, self.group_id, 1_000_003, epoch]).permutation(total)
        if total < num_shards:
            logger.warning(
                "group '%s' has %d items for %d data shards: repeating items so every shard has one",
                self.group.name, total, num_shards,
            )
            order = np.tile(order, math.ceil(num_shards / total))
        positions = order[shard::num_shards]
        ends = np.cumsum(sizes)
        dataset = np.searchsorted(ends, positions, side="right")
        local = positions - (ends[dataset] - sizes[dataset])
        episode = np.empty(len(positions), dtype=np.int64)
        frame = np.empty(len(positions), dtype=np.int64)
        for i, items in enumerate(epoch_items):
            mask = dataset == i
            if mask.any():
                episode[mask], frame[mask] = items.lookup(local[mask])
        return dataset, episode, frame, total


class ShardSampler:
    """The key stream of one data shard (one rank x DataLoader worker): weighted groups, resumable."""

    def __init__(self, groups: list[GroupIndex], seed: int, shard: int, num_shards: int):
        weights = np.asarray([g.group.weight for g in groups], dtype=np.float64)
        if weights.sum() <= 0:
            raise DatasetConfigError(
                f"{groups[0].group.source_file}: every group has weight 0; give at least one group a weight > 0"
            )
        self.groups = groups
        self.probabilities = weights / weights.sum()
        self.mandatory = [i for i, g in enumerate(groups) if g.group.is_mandatory]
        self.seed = seed
        self.shard = shard
        self.num_shards = num_shards
        self.rng = np.random.default_rng([seed, 7919, shard, num_shards])
        self.epochs = [0] * len(groups)
        self.positions = [0] * len(groups)
        self._orders: dict[int, tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def _order(self, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cached = self._orders.get(g)
        if cached is None or cached[0] != self.epochs[g]:
            dataset, episode, frame, _ = self.groups[g].shard(self.epochs[g], self.shard, self.num_shards)
            cached = self._orders[g] = (self.epochs[g], (dataset, episode, frame))
        return cached[1]

    def next_group(self) -> int:
        return int(self.rng.choice(len(self.groups), p=self.probabilities))

    def next_key(self, g: int) -> SampleKey:
        dataset, episode, frame = self._order(g)
        while self.positions[g] >= len(dataset):
            self.epochs[g] += 1
            self.positions[g] = 0
            dataset, episode, frame = self._order(g)
        i = self.positions[g]
        self.positions[g] += 1
        d, e, f = int(dataset[i]), int(episode[i]), int(frame[i])
        if f < 0:
            f = int(self.rng.integers(0, self.groups[g].datasets[d].length_of[e]))
        return SampleKey(group=g, dataset=d, episode=e, frame=f, seed=int(self.rng.integers(0, 2**63 - 1)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "num_shards": self.num_shards,
            "epochs": list(self.epochs),
            "positions": list(self.positions),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["shard"], state["num_shards"]) != (self.shard, self.num_shards):
            raise ValueError(
                f"data sampler state is for shard {state['shard']}/{state['num_shards']}, "
                f"this sampler is shard {self.shard}/{self.num_shards} (world size or num_workers changed?)"
            )
        if len(state["epochs"]) != len(self.groups):
            raise ValueError(
                f"data sampler state has {len(state['epochs'])} groups, the dataset config has {len(self.groups)}"
            )
        self.epochs = list(state["epochs"])
        self.positions = list(state["positions"])
        self.rng.bit_generator.state = state["rng"]
