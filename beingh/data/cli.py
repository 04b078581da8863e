"""`beingh check` (validate a dataset YAML against the data) and `beingh stats` (compute/print statistics).

`check` lists every problem it finds rather than stopping at the first, each labelled with its cause
and placed by file, group, dataset, key and episode, then a summary by cause and place, and exits
non-zero if there is any. It inspects a data config's class attributes without instantiating it,
because instantiation stops at the first inconsistency.

What the data is checked for: the columns the config reads (declared and in every parquet), rows that
match the episode metadata, NaN/inf in every state/action column whatever its normalization, parquet
timestamps against the fps, video frame rates against the fps, statistics, and real samples at the
start, middle and end of the first, last and three middle episodes. `--full` reads every column of
every row and decodes every frame of every camera.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from beingh.data.dataset_config import DatasetConfigError, DatasetEntry, DatasetGroup, load_dataset_config
from beingh.data.embodiment import BaseDataConfig, get_data_config
from beingh.data.lerobot import EpisodeInfo, LeRobotDataset, error_cause
from beingh.data.metadata import MetadataSource, build_dataset_metadata, write_group_metadata
from beingh.data.normalize import check_mode
from beingh.data.registry import resolve_dataset_path
from beingh.data.rotation import ROTATION_DIMS
from beingh.data.sample import SampleBuilder
from beingh.data.stats import ColumnStats, compute_dataset_stats
from beingh.data.unified import validate_unified_mapping
from beingh.data.video import VideoDecodeError

_ROTATION_NAME = re.compile(r"rot|quat|orient", re.IGNORECASE)
_MODES_NEEDING_STATS = ("q99", "mean_std", "min_max", "scale")
_DECODE_CHUNK = 64
"""Frames decoded per request in `--full` (bounds memory for long episodes)."""
# Errors a broken dataset raises while being read; anything else is a bug and propagates.
_DATA_ERRORS = (ValueError, KeyError, OSError, VideoDecodeError)


@dataclass
class Problem:
    where: str
    """File, group, dataset, and the key, file or episode concerned."""
    message: str
    cause: str = "config"
    """Why: "config", "missing column", "row count", "non-finite value", "timestamps", "fps", "video decode"..."""
    dataset: str | None = None
    """The dataset's place (YAML file, group, dataset) for the summary; None for config problems."""
    episode: int | None = None

    def __str__(self) -> str:
        return f"[{self.cause}] {self.where}: {self.message}"


def _data_problem(where: str, err: BaseException, episode: int | None = None, place: str = "") -> Problem:
    at = f"{where}: {place}" if place else where
    episode = episode if episode is not None else getattr(err, "episode", None)
    return Problem(at, str(err), error_cause(err), where, episode)


def _config_modalities(cls: type[BaseDataConfig], embodiment_tag: str) -> dict:
    """The ModalityDefs of a config class without running its validating constructor."""
    config = cls.__new__(cls)
    config.embodiment_tag, config.use_fixed_view, config.max_view_num = embodiment_tag, False, -1
    return config.define_modalities()


def check_data_config(cls: type[BaseDataConfig], where: str, embodiment_tag: str = "new_embodiment") -> list[Problem]:
    """Problems of a data config on its own: slots, rotation declarations, widths, normalization modes."""
    problems: list[Problem] = []
    try:
        modalities = _config_modalities(cls, embodiment_tag)
    except Exception as err:  # a user config's define_modalities can fail in any way
        return [Problem(where, f"define_modalities() failed: {err}")]
    mapping = dict(cls.UNIFIED_MAPPING)
    for key in [*cls.STATE_KEYS, *cls.ACTION_KEYS]:
        at = f"{where}: key '{key}'"
        mod = modalities.get(key)
        if mod is None:
            problems.append(Problem(at, "no ModalityDef in define_modalities()"))
            continue
        if mod.rotation_type is None and _ROTATION_NAME.search(key.split(".", 1)[1]):
            problems.append(Problem(at, "looks like a rotation but has no rotation_type "
                                        f"(one of {sorted(ROTATION_DIMS)})"))
        if mod.rotation_type is not None and mod.width != ROTATION_DIMS[mod.rotation_type]:
            problems.append(Problem(at, f"rotation_type {mod.rotation_type!r} needs {ROTATION_DIMS[mod.rotation_type]} "
                                        f"values, the slice [{mod.start}:{mod.end}] has {mod.width}"))
        if key not in mapping:
            problems.append(Problem(at, "no UNIFIED_MAPPING slot"))
            continue
        try:
            validate_unified_mapping({key: mapping[key]}, owner=f"{cls.__name__}.UNIFIED_MAPPING")
        except ValueError as err:
            problems.append(Problem(at, str(err)))
            continue
        start, end = mapping[key]
        if end - start != mod.unified_width:
            problems.append(Problem(at, f"unified slot ({start}, {end}) has {end - start} dims but the modality gives "
                                        f"{mod.unified_width} (slice [{mod.start}:{mod.end}] after rotation conversion)"))
        modes = cls.state_normalization_modes if key.startswith("state.") else cls.action_normalization_modes
        try:
            check_mode(modes.get(key, "none"), at)
        except ValueError as err:
            problems.append(Problem(at, str(err)))
    valid = {k: v for k, v in mapping.items() if not any(p.where.endswith(f"key '{k}'") for p in problems)}
    for (a, span_a), (b, span_b) in itertools.combinations(valid.items(), 2):
        if a.split(".")[0] == b.split(".")[0]:
            try:
                validate_unified_mapping({a: span_a, b: span_b}, owner=f"{cls.__name__}.UNIFIED_MAPPING")
            except ValueError as err:
                problems.append(Problem(f"{where}: key '{a}'", f"overlapping UNIFIED_MAPPING slots: {err}"))
    if not problems:
        try:
            cls(embodiment_tag=embodiment_tag)
        except Exception as err:  # the config's own validation: report whatever it found
            problems.append(Problem(where, str(err)))
    return problems


def _column_width(dataset: LeRobotDataset, column: str) -> int:
    return int(np.prod(dataset.features[column].get("shape") or [1]))


def _check_data_files(dataset: LeRobotDataset, where: str) -> list[Problem]:
    """Every non-video column meta/info.json declares must be in every data parquet (schemas only)."""
    declared = [name for name, feature in dataset.features.items() if feature.get("dtype") != "video"]
    files = sorted({episode.data_file for episode in dataset.episodes})
    problems = []
    for path in tqdm(files, desc="data files", unit="file", disable=len(files) < 200):
        names = set(pq.read_schema(path).names)
        missing = [name for name in declared if name not in names]
        if missing:
            problems.append(Problem(f"{where}: file '{path}'", f"column(s) {missing} declared in "
                                    f"{dataset.root / 'meta' / 'info.json'} are missing from the data file",
                                    "missing column", where))
    return problems


def _check_columns(dataset: LeRobotDataset, cls: type[BaseDataConfig], entry: DatasetEntry,
                   where: str) -> list[Problem]:
    """The columns and cameras the config reads exist (declared and in every parquet) and are wide enough."""
    problems: list[Problem] = []
    modalities = _config_modalities(cls, entry.embodiment_tag)
    for key in [*cls.STATE_KEYS, *cls.ACTION_KEYS, *cls.LANGUAGE_KEYS]:
        mod = modalities.get(key)
        if mod is None:
            continue
        if mod.source_column not in dataset.features:
            problems.append(Problem(f"{where}: key '{key}'", f"column {mod.source_column!r} missing from the "
                                    f"dataset; columns: {sorted(dataset.features)}", "missing column", where))
        elif not key.startswith("language.") and mod.end > _column_width(dataset, mod.source_column):
            problems.append(Problem(f"{where}: key '{key}'", f"slice [{mod.start}:{mod.end}] is out of range: "
                                    f"column {mod.source_column!r} has {_column_width(dataset, mod.source_column)} dims",
                                    "config", where))
    for view in cls.VIDEO_KEYS:
        column = cls.VIDEO_SOURCE_COLUMNS.get(view)
        if column not in dataset.camera_keys:
            problems.append(Problem(f"{where}: view '{view}'", f"camera column {column!r} missing from the dataset; "
                                    f"cameras: {dataset.camera_keys}", "missing column", where))
    return problems + _check_data_files(dataset, where)


def _check_rows(dataset: LeRobotDataset, columns: list[str], where: str, progress: tqdm | None) -> list[Problem]:
    """Every data file: rows agree with the episode metadata, `columns` readable and free of NaN/inf."""
    problems = []
    for path, episodes in dataset.episodes_by_file.items():
        problems += [_data_problem(where, err) for err in dataset.file_problems(path, columns)]  # errors name the file
        if progress is not None:
            progress.update(sum(ep.length for ep in episodes))
    return problems


def _check_timing(dataset: LeRobotDataset, episodes: list[EpisodeInfo], where: str, full: bool) -> list[Problem]:
    """Parquet timestamps of every episode, and the video streams of `episodes`, against the fps."""
    try:
        errors = [*dataset.timestamp_problems(), *dataset.video_rate_problems(episodes)]
    except _DATA_ERRORS as err:
        return [_data_problem(where, err)]
    if full:  # the decode pass reports unreadable videos, per episode and camera
        errors = [err for err in errors if not isinstance(err, VideoDecodeError)]
    return [_data_problem(where, err) for err in errors]


def _decode_every_frame(dataset: LeRobotDataset, where: str, progress: tqdm) -> list[Problem]:
    """Decode every frame of every camera of every episode, at the frame times the rows give."""
    problems = []
    for ep in dataset.episodes:
        for camera in dataset.camera_keys:
            try:
                for start in range(0, ep.length, _DECODE_CHUNK):
                    frames = np.arange(start, min(start + _DECODE_CHUNK, ep.length))
                    dataset.read_images(ep.index, frames, camera)
                    progress.update(len(frames))
            except _DATA_ERRORS as err:
                problems.append(_data_problem(where, err, ep.index, f"episode {ep.index} camera '{camera}'"))
                progress.update(ep.length - start)
    return problems


def _check_statistics(dataset: LeRobotDataset, config: BaseDataConfig, modalities: dict, where: str,
                      stats_cache_dir: str | Path | None) -> tuple[list[Problem], object | None]:
    """Statistics of the config's columns and what its normalization modes need of them."""
    try:
        stats = compute_dataset_stats(dataset, stats_cache_dir, data_config=config)
        metadata = build_dataset_metadata(dataset, config, stats)
    except _DATA_ERRORS as err:
        cause = "statistics" if error_cause(err) in ("ValueError", "KeyError") else error_cause(err)
        return [Problem(where, f"cannot compute statistics: {err}", cause, where)], None
    problems = []
    for key in [*config.STATE_KEYS, *config.ACTION_KEYS]:
        mode = config.normalization_mode(key)
        if mode not in _MODES_NEEDING_STATS or modalities[key].converts_rotation:
            continue
        key_stats = metadata.stats_for(key)
        at = f"{where}: key '{key}'"
        if key_stats is None:
            problems.append(Problem(at, f"normalization {mode!r} needs statistics, none found", "statistics", where))
        elif mode == "q99" and not key_stats.has_quantiles:
            problems.append(Problem(at, f"normalization 'q99' needs q01/q99 statistics; those of column "
                                        f"{modalities[key].source_column!r} have none", "statistics", where))
    return problems, metadata


def _check_samples(dataset: LeRobotDataset, config: BaseDataConfig, metadata, episodes: list[EpisodeInfo],
                   where: str) -> list[Problem]:
    """Build real samples (rows, normalization, camera frames) at the start, middle and end of `episodes`."""
    builder = SampleBuilder(dataset, config, metadata)
    problems = []
    for ep in episodes:
        for frame in sorted({0, ep.length // 2, ep.length - 1}):
            try:
                builder(ep.index, frame, np.random.default_rng(0))
            except _DATA_ERRORS as err:
                problems.append(_data_problem(where, err, ep.index, f"episode {ep.index} frame {frame}"))
                break
    return problems


def check_dataset(dataset: LeRobotDataset, cls: type[BaseDataConfig], entry: DatasetEntry, where: str,
                  stats_cache_dir: str | Path | None, full: bool = False) -> list[Problem]:
    """Problems between a data config and one dataset (see the module docstring); `full` reads and decodes
    everything, with a progress bar."""
    problems = _check_columns(dataset, cls, entry, where)
    if problems:
        return problems
    config = cls(embodiment_tag=entry.embodiment_tag)
    modalities = _config_modalities(cls, entry.embodiment_tag)
    sampled = dataset.sample_episodes()
    progress = None
    if full:
        columns = [name for name, f in dataset.features.items() if f["dtype"] not in ("video", "image")]
        progress = tqdm(total=dataset.num_frames * (1 + len(dataset.camera_keys)), unit="frame",
                        desc=f"check --full {dataset.root.name}")
    else:
        columns = [*config.source_columns(), "timestamp"]
    problems += _check_rows(dataset, list(dict.fromkeys(columns)), where, progress)
    problems += _check_timing(dataset, dataset.episodes if full else sampled, where, full)
    if full:
        problems += _decode_every_frame(dataset, where, progress)
        progress.close()
    if problems:
        return problems
    problems, metadata = _check_statistics(dataset, config, modalities, where, stats_cache_dir)
    if problems:
        return problems
    return _check_samples(dataset, config, metadata, sampled, where)


def _iter_datasets(config_file: Path, groups: list[DatasetGroup]):
    for group in groups:
        for i, entry in enumerate(group.datasets):
            yield group, entry, f"{config_file}: group '{group.name}': dataset '{entry.name}' [{i}]"


def run_check(config_file: str | Path, stats_cache_dir: str | Path | None = None, full: bool = False
              ) -> list[Problem]:
    """Every problem of a dataset YAML, its data configs and its datasets."""
    config_file = Path(config_file)
    try:
        groups = load_dataset_config(config_file)
    except DatasetConfigError as err:
        return [Problem(str(config_file), str(err))]
    problems: list[Problem] = []
    checked_configs: dict[str, list[Problem]] = {}
    for group, entry, where in tqdm(list(_iter_datasets(config_file, groups)), desc="check", unit="dataset"):
        cls = get_data_config(entry.data_config_name)
        config_where = f"{where} (data config '{entry.data_config_name}')"
        if entry.data_config_name not in checked_configs:
            checked_configs[entry.data_config_name] = check_data_config(cls, config_where, entry.embodiment_tag)
            problems += checked_configs[entry.data_config_name]
        if checked_configs[entry.data_config_name]:
            continue
        try:
            path = resolve_dataset_path(entry.name, relative_to=config_file.parent)
            dataset = LeRobotDataset(path, group.video_backend, video_backend_kwargs=group.video_backend_kwargs)
        except (LookupError, OSError, ValueError, ImportError) as err:
            problems.append(_data_problem(where, err))
            continue
        problems += check_dataset(dataset, cls, entry, config_where, stats_cache_dir, full)
    return problems


def summarize(problems: list[Problem]) -> list[str]:
    """One line per (dataset, cause): how many problems and in which episodes."""
    groups: dict[tuple[str, str], list[Problem]] = {}
    for problem in problems:
        groups.setdefault((problem.dataset or problem.where, problem.cause), []).append(problem)
    lines = []
    for (place, cause), found in groups.items():
        episodes = sorted({p.episode for p in found if p.episode is not None})
        at = f" in episode(s) {episodes[:20]}{' ...' if len(episodes) > 20 else ''}" if episodes else ""
        lines.append(f"  [{cause}] {len(found)} problem(s){at}: {place}")
    return lines


def check_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beingh check", description="Validate a dataset YAML against the data.")
    parser.add_argument("--dataset_config_file", required=True, help="dataset YAML to check")
    parser.add_argument("--cache_dir", default=None, help="statistics cache folder (default: ~/.cache/beingh/stats)")
    parser.add_argument("--full", action="store_true",
                        help="read every row and decode every frame of every camera (slow: a full pass over the data)")
    args = parser.parse_args(argv)
    problems = run_check(args.dataset_config_file, args.cache_dir, args.full)
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dataset_config_file}:", file=sys.stderr)
        print("\n".join(summarize(problems)), file=sys.stderr)
        return 1
    print(f"OK: {args.dataset_config_file}")
    return 0


def _format_stats(name: str, stats: ColumnStats) -> str:
    fields = "  ".join(f"{f}={np.array2string(getattr(stats, f), precision=4, max_line_width=10_000)}"
                       for f in stats.present_fields)
    return f"    {name:<32} {fields}"


def stats_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beingh stats", description="Compute and print dataset statistics.")
    parser.add_argument("--dataset_config_file", required=True, help="dataset YAML")
    parser.add_argument("--cache_dir", default=None, help="statistics cache folder (default: ~/.cache/beingh/stats)")
    parser.add_argument("--output_dir", default=None, help="also write <group>_metadata.json files here")
    args = parser.parse_args(argv)
    config_file = Path(args.dataset_config_file)
    try:
        groups = load_dataset_config(config_file)
    except DatasetConfigError as err:
        print(f"ERROR {err}", file=sys.stderr)
        return 1
    sources: dict[str, list[MetadataSource]] = {g.name: [] for g in groups}
    for group, entry, where in tqdm(list(_iter_datasets(config_file, groups)), desc="stats", unit="dataset"):
        try:
            dataset = LeRobotDataset(resolve_dataset_path(entry.name, relative_to=config_file.parent),
                                     group.video_backend, video_backend_kwargs=group.video_backend_kwargs)
            config = get_data_config(entry.data_config_name)(embodiment_tag=entry.embodiment_tag)
            dataset.verify_timing()  # the fps goes into the metadata as the policy's control rate
            stats = compute_dataset_stats(dataset, args.cache_dir, data_config=config)
            metadata = build_dataset_metadata(dataset, config, stats)
        except (LookupError, OSError, ValueError, ImportError, VideoDecodeError) as err:
            print(f"ERROR [{error_cause(err)}] {where}: {err}", file=sys.stderr)
            return 1
        sources[group.name].append(MetadataSource(entry.name, metadata, dataset.num_frames, entry.embodiment_tag))
        tqdm.write(f"{where}: {dataset.num_episodes} episodes, {dataset.num_frames} frames")
        for modality_group, entries in metadata.statistics.items():
            for name, key_stats in entries.items():
                tqdm.write(_format_stats(f"{modality_group}.{name}", key_stats))
    if args.output_dir:
        for group in groups:
            path = write_group_metadata(args.output_dir, group.name, sources[group.name], group.stats_level)
            print(f"wrote {path}")
    return 0
