"""Dataset metadata (statistics + modality shapes + embodiment) and the hierarchical `<group>_metadata.json`.

File layout (written at training start into `<output_dir>/experiment_cfg/`, copied into checkpoints;
`--save_merged_metadata False` writes the group entry alone, holding the statistics training used):

    {
      "<group>": {statistics, modalities, embodiment_tag,       # stats merged over ALL datasets
                  "stats_level": "task" | "embodiment" | "merged",   # the level training normalized with
                  "default_variant": <variant used for training the first dataset, null = top level>,
                  "datasets": [...], "num_frames": N},
      "<group>_variants": {
         "<dataset name>": {..., "stats_level": "task", "embodiment_variant": "<name>", "num_frames"},
         "<embodiment>":   {..., "stats_level": "embodiment", "datasets": [...], "num_frames"}
      }
    }

Unlike the reference (reference/upstream_data.md §5.3, §10.4, §10.6): task variants hold each dataset's
own statistics, embodiment variants merge only that embodiment's datasets (exact frame-weighted
pooling), the top level really merges everything, and datasets are identified by their YAML name.

Statistics keys drop the group prefix: `statistics["state"]["eef_position"]` (GR00T/Being-H layout).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beingh.data.embodiment import NEW_EMBODIMENT, BaseDataConfig
from beingh.data.stats import ColumnStats, merge_stats
from beingh.data.unified import MODALITY_GROUPS, modality_group

if TYPE_CHECKING:
    from beingh.data.lerobot import LeRobotDataset

logger = logging.getLogger(__name__)

STATS_LEVELS = ("task", "embodiment", "merged")
"""Which statistics normalize a dataset: its own, its embodiment's merged, or the whole group's."""
AUTO_STATS_LEVEL = "embodiment"
"""`stats_level: auto` means per-embodiment: one robot's datasets share a scale (what the reference
effectively trained single-robot groups with) and different robots are never pooled together."""
SELECTION_MODES = ("auto", "task", "embodiment", "merged")


def _short(key: str) -> tuple[str, str]:
    """'state.eef_position' -> ('state', 'eef_position')."""
    return modality_group(key), key.split(".", 1)[1]


@dataclass
class VideoMeta:
    resolution: tuple[int, int]
    """(width, height)."""
    channels: int
    fps: float


@dataclass
class ModalityMeta:
    absolute: bool
    rotation_type: str | None
    shape: list[int]
    continuous: bool


@dataclass
class DatasetMetadata:
    """What inference needs to (un)normalize one embodiment's data.

    `statistics[group][name]` and `modalities[group][name]` use names without the group prefix.
    """

    statistics: dict[str, dict[str, ColumnStats]]
    modalities: dict[str, dict[str, Any]] = field(default_factory=dict)
    embodiment_tag: str = NEW_EMBODIMENT
    data_config: str | None = None
    """Registered name of the DataConfig these statistics were cut with; None for statistics merged over
    datasets of different configs. Inference refuses a different config (keys would silently go missing)."""

    @property
    def fps(self) -> float | None:
        """Frame rate of the dataset (from its first camera), None when the metadata has no camera."""
        videos = self.modalities.get("video") or {}
        return next(iter(videos.values())).fps if videos else None

    def stats_for(self, key: str) -> ColumnStats | None:
        """Statistics of a logical key such as 'action.eef_position' (None when absent)."""
        group, name = _short(key)
        return self.statistics.get(group, {}).get(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistics": {g: {k: s.to_dict() for k, s in stats.items()} for g, stats in self.statistics.items()},
            "modalities": {
                "video": {k: {"resolution": list(v.resolution), "channels": v.channels, "fps": v.fps}
                          for k, v in self.modalities.get("video", {}).items()},
                **{g: {k: vars(m).copy() for k, m in self.modalities.get(g, {}).items()} for g in MODALITY_GROUPS},
            },
            "embodiment_tag": self.embodiment_tag,
            **({"data_config": self.data_config} if self.data_config is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "metadata") -> DatasetMetadata:
        """Parse our files and the reference's (extra fields such as stats_level are ignored)."""
        if "statistics" not in data:
            raise ValueError(f"{where}: no 'statistics' field (have {sorted(data)})")
        statistics = {
            group: {name: ColumnStats.from_dict(s, where=f"{where}.statistics.{group}.{name}")
                    for name, s in (data["statistics"].get(group) or {}).items()}
            for group in MODALITY_GROUPS
        }
        raw = data.get("modalities") or {}
        modalities: dict[str, dict[str, Any]] = {
            "video": {k: VideoMeta(tuple(v["resolution"]), int(v.get("channels", 3)), float(v.get("fps", 30)))
                      for k, v in (raw.get("video") or {}).items()},
        }
        for group in MODALITY_GROUPS:
            modalities[group] = {
                k: ModalityMeta(bool(v.get("absolute", True)), v.get("rotation_type"), list(v.get("shape", [])),
                                bool(v.get("continuous", True)))
                for k, v in (raw.get(group) or {}).items()
            }
        return cls(statistics, modalities, str(data.get("embodiment_tag") or NEW_EMBODIMENT), data.get("data_config"))


def build_dataset_metadata(
    dataset: LeRobotDataset, data_config: BaseDataConfig, column_stats: Mapping[str, ColumnStats]
) -> DatasetMetadata:
    """One dataset's metadata: its own column statistics sliced per modality key, and its shapes."""
    statistics: dict[str, dict[str, ColumnStats]] = {g: {} for g in MODALITY_GROUPS}
    modalities: dict[str, dict[str, Any]] = {"video": {}, **{g: {} for g in MODALITY_GROUPS}}
    for key in data_config.STATE_KEYS + data_config.ACTION_KEYS:
        mod = data_config.modality(key)
        if mod.source_column not in column_stats:
            raise ValueError(f"{dataset.root}: no statistics for column {mod.source_column!r} (needed by {key!r})")
        stats = column_stats[mod.source_column]
        if mod.end > stats.dim:
            raise ValueError(f"{dataset.root}: {key!r} slices [{mod.start}:{mod.end}] of {mod.source_column!r}, "
                             f"which has {stats.dim} dims")
        group, name = _short(key)
        statistics[group][name] = stats.slice(mod.start, mod.end)
        modalities[group][name] = ModalityMeta(mod.absolute, mod.rotation_type, [mod.width], mod.continuous)
    for key in data_config.VIDEO_KEYS:
        column = data_config.VIDEO_SOURCE_COLUMNS[key]
        feature = dataset.features.get(column)
        if feature is None:
            raise ValueError(f"{dataset.root}: no video/image feature {column!r} (for {key!r}); "
                             f"cameras: {dataset.camera_keys}")
        height, width, channels = (list(feature["shape"]) + [3])[:3]
        modalities["video"][key.split(".", 1)[1]] = VideoMeta((int(width), int(height)), int(channels),
                                                              float(dataset.fps))
    return DatasetMetadata(statistics, modalities, data_config.embodiment_tag, data_config.registered_name)


@dataclass
class MetadataSource:
    """One dataset of a training group, as the metadata writer needs it."""

    name: str
    """The dataset's YAML name (its identity; never the directory basename)."""
    metadata: DatasetMetadata
    """Built from this dataset's own statistics."""
    num_frames: int
    embodiment: str | None = None
    """Embodiment-variant name; defaults to `metadata.embodiment_tag`."""

    @property
    def embodiment_name(self) -> str:
        return self.embodiment or self.metadata.embodiment_tag


def resolve_stats_level(level: str | None) -> str:
    level = level or "auto"
    if level == "auto":
        return AUTO_STATS_LEVEL
    if level not in STATS_LEVELS:
        raise ValueError(f"stats_level must be 'auto' or one of {list(STATS_LEVELS)}, got {level!r}")
    return level


def _merge_metadata(sources: Sequence[MetadataSource], tag: str) -> DatasetMetadata:
    statistics = {
        group: merge_stats([(s.metadata.statistics.get(group, {}), s.num_frames) for s in sources],
                           skip_mismatched=True)
        for group in MODALITY_GROUPS
    }
    modalities: dict[str, dict[str, Any]] = {}
    for source in sources:
        for group, entries in source.metadata.modalities.items():
            for name, meta in entries.items():
                modalities.setdefault(group, {}).setdefault(name, meta)
    configs = {s.metadata.data_config for s in sources}
    return DatasetMetadata(statistics, modalities, tag, configs.pop() if len(configs) == 1 else None)


def build_group_metadata(group: str, sources: Sequence[MetadataSource], stats_level: str = "auto") -> dict:
    """The `{group, group_variants}` document for one training group (see module docstring)."""
    if not sources:
        raise ValueError(f"group {group!r}: no datasets to write metadata for")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"group {group!r}: duplicate dataset names {names}")
    if "merged" in names:
        raise ValueError(f"group {group!r}: 'merged' names the top-level statistics; rename that dataset")
    level = resolve_stats_level(stats_level)
    by_embodiment: dict[str, list[MetadataSource]] = {}
    for source in sources:
        by_embodiment.setdefault(source.embodiment_name, []).append(source)
    variant_of_embodiment = {emb: f"{emb}_embodiment" if emb in names else emb for emb in by_embodiment}

    variants: dict[str, dict] = {}
    for source in sources:
        variants[source.name] = {**source.metadata.to_dict(), "stats_level": "task", "num_frames": source.num_frames,
                                 "embodiment_variant": variant_of_embodiment[source.embodiment_name]}
    for emb, members in by_embodiment.items():
        merged = _merge_metadata(members, members[0].metadata.embodiment_tag)
        variants[variant_of_embodiment[emb]] = {
            **merged.to_dict(), "stats_level": "embodiment", "datasets": [m.name for m in members],
            "num_frames": sum(m.num_frames for m in members),
        }
    tags = {s.metadata.embodiment_tag for s in sources}
    top = _merge_metadata(sources, tags.pop() if len(tags) == 1 else NEW_EMBODIMENT)
    document = {
        group: {**top.to_dict(), "stats_level": level, "default_variant": None, "datasets": names,
                "num_frames": sum(s.num_frames for s in sources)},
        f"{group}_variants": variants,
    }
    document[group]["default_variant"] = training_variant(document, group, sources[0].name)
    return document


def training_variant(document: Mapping[str, Any], group: str, dataset_name: str) -> str | None:
    """Name of the variant whose statistics normalize `dataset_name` in training (None = top level)."""
    top, variants = _group_entries(document, group)
    if dataset_name not in variants or variants[dataset_name].get("stats_level") != "task":
        raise ValueError(f"group {group!r} has no dataset {dataset_name!r}; datasets: {top.get('datasets')}")
    level = resolve_stats_level(top.get("stats_level"))
    if level == "task":
        return dataset_name
    if level == "embodiment":
        return variants[dataset_name]["embodiment_variant"]
    return None


def training_statistics_only(document: Mapping[str, Any], group: str) -> dict:
    """The `{group: ...}` document without variants (`--save_merged_metadata False`): its top level is the
    one set of statistics every dataset of the group was normalized with in training.

    Raises when the datasets were normalized with different statistics (per-task or per-embodiment
    levels over several datasets/embodiments): one flat entry cannot record them.
    """
    top, variants = _group_entries(document, group)
    used = {training_variant(document, group, name) for name in top["datasets"]}
    if len(used) > 1:
        names = sorted(str(name) for name in used)
        raise ValueError(f"group {group!r} normalizes its datasets with {len(used)} different statistics "
                         f"(variants {names}, stats_level {top['stats_level']!r}); only the hierarchical "
                         "metadata records them all")
    (name,) = used
    chosen = top if name is None else variants[name]
    kept = {k: v for k, v in chosen.items() if k in ("statistics", "modalities", "embodiment_tag", "data_config")}
    return {group: {**kept, "stats_level": top["stats_level"], "default_variant": None,
                    "datasets": top["datasets"], "num_frames": top["num_frames"]}}


def write_group_metadata(path: str | Path, group: str, sources: Sequence[MetadataSource],
                         stats_level: str = "auto", hierarchical: bool = True) -> Path:
    """Write (or update, keeping other groups) `<group>_metadata.json`; `path` is the file or its folder.

    `hierarchical=False` writes only the statistics training used (`training_statistics_only`).
    """
    path = Path(path)
    file = path / f"{group}_metadata.json" if path.suffix != ".json" else path
    document = json.loads(file.read_text()) if file.is_file() else {}
    entries = build_group_metadata(group, sources, stats_level)
    if not hierarchical:
        entries = training_statistics_only(entries, group)
        document.pop(f"{group}_variants", None)
    document.update(entries)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2))
    tmp.replace(file)
    return file


def _group_entries(document: Mapping[str, Any], group: str) -> tuple[dict, dict]:
    if group not in document:
        groups = [k for k in document if not k.endswith("_variants")]
        raise ValueError(f"metadata has no group {group!r}; groups: {groups}")
    top, variants = document[group], dict(document.get(f"{group}_variants") or {})
    if "statistics" not in top:
        # Reference "legacy" layout: {group: {sub_dataset: metadata}} with no merged top level.
        return {}, {name: {**meta, "stats_level": "task"} for name, meta in top.items()}
    return top, variants


def select_metadata(document: Mapping[str, Any], group: str, metadata_variant: str | None = None,
                    stats_selection_mode: str = "auto") -> DatasetMetadata:
    """Pick statistics from a metadata document.

    - `metadata_variant` names a variant (task or embodiment) or "merged" (the top level). A name that
      does not exist raises with the available ones (the reference silently fell back).
    - Without a name: "task"/"embodiment" take the only variant of that level (or the default variant if
      it has that level; several candidates raise), "merged" the top level, and "auto" the variant
      training used for the group's first dataset (`default_variant`) -- the exact training statistics
      for single-dataset and single-embodiment groups.
    """
    if stats_selection_mode not in SELECTION_MODES:
        raise ValueError(f"stats_selection_mode must be one of {list(SELECTION_MODES)}, got {stats_selection_mode!r}")
    top, variants = _group_entries(document, group)
    where = f"metadata[{group!r}]"
    if (metadata_variant is None and stats_selection_mode == "merged") or metadata_variant == "merged":
        if not top:
            raise ValueError(f"{where}: this file has no merged top level; variants: {sorted(variants)}")
        return DatasetMetadata.from_dict(top, where=where)
    if metadata_variant is not None:
        if metadata_variant not in variants:
            raise ValueError(f"{where}: no variant {metadata_variant!r}; available: {sorted(variants)} or 'merged'")
        level = variants[metadata_variant].get("stats_level")
        if stats_selection_mode in ("task", "embodiment") and level != stats_selection_mode:
            raise ValueError(f"{where}: variant {metadata_variant!r} is a {level!r} variant, but "
                             f"stats_selection_mode={stats_selection_mode!r}")
        return DatasetMetadata.from_dict(variants[metadata_variant], where=f"{where}[{metadata_variant!r}]")
    default = top.get("default_variant")
    if stats_selection_mode == "auto":
        name = default if default is not None else (None if top else next(iter(variants), None))
    else:
        candidates = [n for n, v in variants.items() if v.get("stats_level") == stats_selection_mode]
        if default in candidates or len(candidates) == 1:
            name = default if default in candidates else candidates[0]
        else:
            raise ValueError(f"{where}: {len(candidates)} {stats_selection_mode!r} variants, pass "
                             f"metadata_variant= one of {candidates}")
    if name is None:
        return DatasetMetadata.from_dict(top, where=where)
    return DatasetMetadata.from_dict(variants[name], where=f"{where}[{name!r}]")


def find_metadata_file(path_or_dir: str | Path, dataset_name: str) -> Path:
    """The metadata file: `path_or_dir` itself, or `<dir>/<name>_metadata.json`, or under `experiment_cfg/`."""
    path = Path(path_or_dir)
    if path.is_file():
        return path
    tried = [path / f"{dataset_name}_metadata.json", path / "experiment_cfg" / f"{dataset_name}_metadata.json"]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no metadata for {dataset_name!r}: tried {[str(t) for t in tried]}")


def load_metadata(path_or_dir: str | Path, dataset_name: str, metadata_variant: str | None = None,
                  stats_selection_mode: str = "auto") -> DatasetMetadata:
    """Load `<dataset_name>_metadata.json` (dataset_name = the training group) and select statistics."""
    file = find_metadata_file(path_or_dir, dataset_name)
    try:
        document = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    try:
        return select_metadata(document, dataset_name, metadata_variant, stats_selection_mode)
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from err
