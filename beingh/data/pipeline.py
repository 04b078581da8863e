"""The training data loader: dataset YAML -> packed batches, deterministic, sharded and resumable.

Composition: `LeRobotDataset` (read) -> `SampleBuilder` (unified state/action, views) -> image transform
-> `PromptBuilder` (token layout) -> `TokenBudgetPacker` + `pack_samples` (one `PackedBatch` per step).

Determinism and resumption. Data is split into logical streams, `max(1, num_workers)` per rank; each
stream owns a data shard, its RNG and its packer buffer (`PackStream`), and every sample is rebuilt
from a `SampleKey` (which carries its own augmentation seed), so a stream's position is a small dict.
DataLoader workers each run one stream and yield `(stream, state_after_pack, pack)`; the DataLoader
returns worker outputs round-robin, so pack n comes from stream n mod W. `TrainLoader` records the
last state of every stream and the number of packs consumed; on resume it assigns stream
(w + consumed) mod W to worker w, which continues the sequence exactly.

Bad data. A sample whose data cannot be read or is invalid (a NaN state, a damaged video, rows that
disagree with the metadata) stops training by default with its dataset, episode, frame and cause.
`max_bad_samples` N lets a run skip up to N such samples per rank: each skip is logged by the main
process with its reason (workers send the reasons along with their packs), the N+1-th aborts.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from dataclasses import astuple, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from beingh.batch import PackedBatch
from beingh.data.dataset_config import DatasetConfigError, DatasetGroup, load_dataset_config
from beingh.data.embodiment import get_data_config
from beingh.data.image import ImageTransform, build_image_transform
from beingh.data.lerobot import DatasetFormatError, LeRobotDataset, error_cause
from beingh.data.metadata import (
    MetadataSource,
    build_dataset_metadata,
    build_group_metadata,
    select_metadata,
    training_statistics_only,
    training_variant,
    write_group_metadata,
)
from beingh.data.packing import TokenBudgetPacker, pack_samples
from beingh.data.prompt import PromptBuilder, TokenizedSample, tokens_per_image
from beingh.data.registry import resolve_dataset_path
from beingh.data.sample import SampleBuilder
from beingh.data.sampler import DatasetItems, GroupIndex, SampleKey, ShardSampler
from beingh.data.stats import compute_dataset_stats
from beingh.data.video import VideoDecodeError

logger = logging.getLogger(__name__)

SAMPLE_DATA_ERRORS = (DatasetFormatError, VideoDecodeError, OSError, pa.ArrowException)
"""Errors that mean a sample's data is bad (skippable with max_bad_samples); anything else is a bug."""


class BadSampleError(RuntimeError):
    """A sample could not be built from its data; the message names dataset, episode, frame and cause."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DataArgs:
    """Images, views, prompt and DataLoader settings (TRAINING_GUIDE "Data Arguments")."""

    force_image_size: int = field(default=224, metadata=_help("Input image size"))
    down_sample_ratio: float = field(default=0.5, metadata=_help("ViT downsample ratio"))
    max_view_num: int = field(default=-1, metadata=_help("Max camera views (-1 = all)"))
    use_fixed_view: bool = field(default=False, metadata=_help("Use single fixed view"))
    num_workers: int = field(default=12, metadata=_help("DataLoader workers"))
    prefetch_factor: int = field(default=8, metadata=_help("DataLoader prefetch factor"))
    prompt_template: str = field(
        default="long", metadata=_help("Instruction template: `long`, `short` or a string with {task}")
    )
    vit_dropout_prob: float = field(
        default=0.0, metadata=_help("Drop each view with this probability (at least one view is kept)")
    )
    state_dropout_prob: float = field(default=0.0, metadata=_help("Zero the whole state with this probability"))
    max_bad_samples: int = field(
        default=0,
        metadata=_help(
            "Skip up to this many samples with bad data per rank (each logged with its reason), then abort; "
            "0 stops at the first, naming its dataset, episode, frame and cause"
        ),
    )


@dataclass
class SequenceArgs:
    """Token packing and attention layout (TRAINING_GUIDE "Sequence Arguments")."""

    max_num_tokens: int = field(default=8704, metadata=_help("Max tokens per batch"))
    expected_num_tokens: int = field(default=8192, metadata=_help("Target tokens per batch"))
    prefer_buffer_before: int = field(default=4096, metadata=_help("Buffer preference threshold"))
    max_buffer_size: int = field(default=4, metadata=_help("Maximum buffer size"))
    max_num_tokens_per_sample: int = field(default=8704, metadata=_help("Longer samples are skipped"))
    attn_mode: str = field(
        default="causal", metadata=_help("Attention mode: causal, full, actionfull or causal_actionfull")
    )


@dataclass
class GroupMetadata:
    """What `write_group_metadata` needs for one YAML group."""

    name: str
    sources: list[MetadataSource]
    stats_level: str


class SampleSource:
    """SampleKey -> TokenizedSample. Owns the datasets, per-dataset sample builders and the prompt builder.

    `names[group][dataset]` says where a dataset comes from (YAML file, group, name) in error messages.
    """

    def __init__(self, builders: list[list[SampleBuilder]], prompt_builder: PromptBuilder,
                 image_transform: ImageTransform, image_size: int, names: list[list[str]]):
        self.builders = builders
        self.prompt_builder = prompt_builder
        self.image_transform = image_transform
        self.image_size = image_size
        self.names = names

    def build(self, key: SampleKey) -> TokenizedSample:
        """The sample of `key`; BadSampleError (dataset, episode, frame, cause) when its data is bad."""
        try:
            return self._build(key)
        except SAMPLE_DATA_ERRORS as err:
            raise BadSampleError(
                f"{self.names[key.group][key.dataset]}: episode {key.episode} frame {key.frame}: "
                f"[{error_cause(err)}] {err}"
            ) from err

    def _build(self, key: SampleKey) -> TokenizedSample:
        rng = np.random.default_rng(key.seed)
        sample = self.builders[key.group][key.dataset](key.episode, key.frame, rng)
        if sample.images:
            pixel_values = torch.stack([self.image_transform(image, rng) for image in sample.images])
        else:
            pixel_values = torch.zeros(0, 3, self.image_size, self.image_size)
        return self.prompt_builder.tokenize(sample, pixel_values)


@dataclass
class _KeyedSample:
    key: SampleKey
    sample: TokenizedSample

    @property
    def num_tokens(self) -> int:
        return self.sample.num_tokens


class PackStream:
    """One logical data stream: a shard's sampler + a packer. `state_dict()` between packs is exact.

    A bad sample is skipped (the next key of its group is drawn) while this stream has skipped at most
    `max_bad_samples`; `take_skipped()` hands the reasons to whoever reports them.
    """

    def __init__(self, source: SampleSource, groups: list[GroupIndex], sequence_args: SequenceArgs, seed: int,
                 shard: int, num_shards: int, max_bad_samples: int = 0):
        self.source = source
        self.max_bad_samples = max_bad_samples
        self.bad_samples = 0
        self._skipped: list[str] = []
        self.sampler = ShardSampler(groups, seed=seed, shard=shard, num_shards=num_shards)
        self.packer = TokenBudgetPacker(
            max_num_tokens=sequence_args.max_num_tokens,
            expected_num_tokens=sequence_args.expected_num_tokens,
            prefer_buffer_before=sequence_args.prefer_buffer_before,
            max_buffer_size=sequence_args.max_buffer_size,
            max_num_tokens_per_sample=sequence_args.max_num_tokens_per_sample,
        )

    def _build(self, key: SampleKey) -> _KeyedSample:
        return _KeyedSample(key, self.source.build(key))

    def _draw_from(self, group: int) -> _KeyedSample:
        while True:
            try:
                return self._build(self.sampler.next_key(group))
            except BadSampleError as err:
                self.bad_samples += 1
                if self.bad_samples > self.max_bad_samples:
                    if self.max_bad_samples == 0:
                        raise
                    raise BadSampleError(f"more than --max_bad_samples {self.max_bad_samples} bad samples; "
                                         f"the last: {err}") from err
                self._skipped.append(str(err))

    def take_skipped(self) -> list[str]:
        """Reasons of the samples skipped since the last call."""
        skipped, self._skipped = self._skipped, []
        return skipped

    def _draw(self) -> _KeyedSample:
        return self._draw_from(self.sampler.next_group())

    def next_pack(self) -> PackedBatch:
        mandatory = [partial(self._draw_from, g) for g in self.sampler.mandatory]
        items = self.packer.next_pack(self._draw, mandatory)
        return pack_samples([item.sample for item in items])

    def state_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler.state_dict(),
            "buffer": [list(astuple(item.key)) for item in self.packer.buffer],
            "num_skipped": self.packer.num_skipped,
            "bad_samples": self.bad_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.packer.buffer = [self._build(SampleKey(*values)) for values in state["buffer"]]
        self.packer.num_skipped = int(state["num_skipped"])
        self.bad_samples = int(state.get("bad_samples", 0))  # states saved before bad-sample skipping had none


class _StreamDataset(IterableDataset):
    """Runs one PackStream per DataLoader worker (or one in-process when num_workers == 0)."""

    def __init__(self, loader: TrainLoader, rotation: int, states: dict[int, dict]):
        self.loader = loader
        self.rotation = rotation
        self.states = states

    def __iter__(self) -> Iterator[tuple[int, dict, list[str], PackedBatch]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if num_workers != self.loader.num_streams:
            raise RuntimeError(f"expected {self.loader.num_streams} workers, DataLoader started {num_workers}")
        stream_id = (worker + self.rotation) % num_workers
        stream = self.loader.make_stream(stream_id)
        if stream_id in self.states:
            stream.load_state_dict(self.states[stream_id])
        while True:
            pack = stream.next_pack()
            yield stream_id, stream.state_dict(), stream.take_skipped(), pack


class TrainLoader:
    """Infinite iterator of `PackedBatch` for one rank, with exact `state_dict`/`load_state_dict`."""

    def __init__(self, groups: list[DatasetGroup], group_indexes: list[GroupIndex], source: SampleSource,
                 metadata: list[GroupMetadata], data_args: DataArgs, sequence_args: SequenceArgs, rank: int,
                 world_size: int, seed: int, pin_memory: bool = False,
                 multiprocessing_context: str | None = "forkserver", log: logging.Logger | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if data_args.max_bad_samples < 0:
            raise ValueError(f"--max_bad_samples must be >= 0, got {data_args.max_bad_samples}")
        self.groups = groups
        self.group_indexes = group_indexes
        self.source = source
        self.metadata = metadata
        self.data_args = data_args
        self.sequence_args = sequence_args
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pin_memory = pin_memory
        self.multiprocessing_context = multiprocessing_context
        self.num_streams = max(1, data_args.num_workers)
        self.consumed = 0
        self.stream_states: dict[int, dict] = {}
        self.bad_samples = 0
        """Samples skipped for bad data on this rank, over all streams (at most max_bad_samples)."""
        self.log = log or logger

    def make_stream(self, stream_id: int) -> PackStream:
        return PackStream(
            self.source,
            self.group_indexes,
            self.sequence_args,
            seed=self.seed,
            shard=self.rank * self.num_streams + stream_id,
            num_shards=self.world_size * self.num_streams,
            max_bad_samples=self.data_args.max_bad_samples,
        )

    def __iter__(self) -> Iterator[PackedBatch]:
        dataset = _StreamDataset(self, self.consumed % self.num_streams, dict(self.stream_states))
        workers = self.data_args.num_workers
        if workers > 0 and self.multiprocessing_context == "forkserver":
            # The fork server imports the data stack once; workers then fork from it in ~0.1 s, not ~3 s.
            multiprocessing.get_context("forkserver").set_forkserver_preload([__name__])
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=self.data_args.prefetch_factor if workers > 0 else None,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            multiprocessing_context=self.multiprocessing_context if workers > 0 else None,
        )
        limit = self.data_args.max_bad_samples
        for stream_id, state, skipped, pack in loader:
            for reason in skipped:
                self.bad_samples += 1
                if self.bad_samples > limit:
                    raise BadSampleError(f"more than --max_bad_samples {limit} bad samples; the last: {reason}")
                self.log.warning("skipped bad sample %d of at most %d (--max_bad_samples): %s",
                                 self.bad_samples, limit, reason)
            self.stream_states[stream_id] = state
            self.consumed += 1
            yield pack

    def state_dict(self) -> dict[str, Any]:
        """Position after the packs consumed so far (packs prefetched but not yielded are not counted)."""
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "num_streams": self.num_streams,
            "seed": self.seed,
            "consumed": self.consumed,
            "bad_samples": self.bad_samples,
            "streams": {str(k): v for k, v in self.stream_states.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"world_size": self.world_size, "num_streams": self.num_streams, "seed": self.seed}
        mismatch = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if mismatch:
            raise ValueError(
                "data loader state does not match this run (saved, now): "
                + ", ".join(f"{k}={a!r}, {b!r}" for k, (a, b) in mismatch.items())
                + "; resume with the same world size, --num_workers and seed for an exact continuation"
            )
        self.consumed = int(state["consumed"])
        self.bad_samples = int(state.get("bad_samples", 0))  # states saved before bad-sample skipping had none
        self.stream_states = {int(k): v for k, v in state["streams"].items()}

    def group_metadata(self) -> list[GroupMetadata]:
        return self.metadata

    def check_metadata(self, hierarchical: bool) -> None:
        """Raise now if `write_metadata(..., hierarchical)` cannot record a group's training statistics."""
        if not hierarchical:
            for m in self.metadata:
                training_statistics_only(build_group_metadata(m.name, m.sources, m.stats_level), m.name)

    def write_metadata(self, directory: str | Path, hierarchical: bool = True) -> list[Path]:
        """Write `<directory>/<group>_metadata.json` for every group (see `write_group_metadata`)."""
        return [write_group_metadata(directory, m.name, m.sources, m.stats_level, hierarchical)
                for m in self.metadata]


def _load_group(group: DatasetGroup, group_id: int, data_args: DataArgs, action_chunk_length: int, seed: int,
                stats_cache_dir: str | Path | None) -> tuple[GroupIndex, list[SampleBuilder], GroupMetadata]:
    base_dir = group.source_file.parent if group.source_file is not None else None
    datasets, configs, sources = [], [], []
    for entry in group.datasets:
        dataset = LeRobotDataset(resolve_dataset_path(entry.name, relative_to=base_dir), group.video_backend,
                                 video_backend_kwargs=group.video_backend_kwargs)
        config = get_data_config(entry.data_config_name)(
            embodiment_tag=entry.embodiment_tag,
            use_fixed_view=data_args.use_fixed_view,
            max_view_num=data_args.max_view_num,
        )
        dataset.verify_timing()  # the fps goes into the metadata as the policy's control rate
        stats = compute_dataset_stats(dataset, stats_cache_dir, data_config=config)
        metadata = build_dataset_metadata(dataset, config, stats)
        datasets.append(dataset)
        configs.append(config)
        sources.append(MetadataSource(entry.name, metadata, dataset.num_frames, entry.embodiment_tag))
    document = build_group_metadata(group.name, sources, group.stats_level)
    builders, items = [], []
    for i, (entry, dataset, config) in enumerate(zip(group.datasets, datasets, configs)):
        variant = training_variant(document, group.name, entry.name) or "merged"
        builders.append(
            SampleBuilder(
                dataset,
                config,
                select_metadata(document, group.name, metadata_variant=variant),
                action_chunk_length=action_chunk_length,
                state_dropout_prob=data_args.state_dropout_prob,
                view_dropout_prob=data_args.vit_dropout_prob,
            )
        )
        items.append(
            DatasetItems(
                where=f"{group.source_file}: group '{group.name}': dataset '{entry.name}' [{i}]",
                entry=entry,
                episode_indices=np.asarray([ep.index for ep in dataset.episodes], dtype=np.int64),
                lengths=np.asarray([ep.length for ep in dataset.episodes], dtype=np.int64),
                tasks=[tuple(ep.tasks) for ep in dataset.episodes],
                trajectory=group.sampling_strategy == "trajectory",
                seed=seed,
            )
        )
    index = GroupIndex(group_id, group, items, seed)
    return index, builders, GroupMetadata(group.name, sources, group.stats_level)


def build_train_loader(
    dataset_config_file: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    data_args: DataArgs | None = None,
    sequence_args: SequenceArgs | None = None,
    action_chunk_length: int = 16,
    conv_style: str = "being_h0",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 42,
    stats_cache_dir: str | Path | None = None,
    pin_memory: bool = False,
    multiprocessing_context: str | None = "forkserver",
    log: logging.Logger | None = None,
) -> TrainLoader:
    """Build the loader of one rank from a dataset YAML (statistics are computed or read from the cache).

    Workers start with `forkserver` by default: a forked worker inherits the parent's open video decoders
    (whose codec threads do not exist in the child) and thread pools, which can deadlock. `"fork"`
    starts faster and is safe when the parent process has not decoded video. `log` reports skipped bad
    samples (default: this module's logger).
    """
    data_args = data_args or DataArgs()
    sequence_args = sequence_args or SequenceArgs()
    groups = load_dataset_config(dataset_config_file)
    indexes, builders, metadata = [], [], []
    for group_id, group in enumerate(groups):
        try:
            index, group_builders, group_metadata = _load_group(
                group, group_id, data_args, action_chunk_length, seed, stats_cache_dir
            )
        except (ValueError, KeyError, FileNotFoundError, LookupError, VideoDecodeError) as err:
            if isinstance(err, DatasetConfigError):
                raise
            raise DatasetConfigError(f"{dataset_config_file}: group '{group.name}': {err}") from err
        indexes.append(index)
        builders.append(group_builders)
        metadata.append(group_metadata)
    prompt_builder = PromptBuilder(
        tokenizer,
        tokens_per_image(data_args.force_image_size, data_args.down_sample_ratio),
        action_chunk_length=action_chunk_length,
        prompt_template=data_args.prompt_template,
        attn_mode=sequence_args.attn_mode,
        conv_style=conv_style,
    )
    source = SampleSource(
        builders, prompt_builder, build_image_transform(data_args.force_image_size, train=True),
        data_args.force_image_size, names=[[items.where for items in index.datasets] for index in indexes],
    )
    return TrainLoader(groups, indexes, source, metadata, data_args, sequence_args, rank, world_size, seed,
                       pin_memory, multiprocessing_context, log)
