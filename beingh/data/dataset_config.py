"""The dataset YAML (`--dataset_config_file`): groups of LeRobot datasets to train on.

```yaml
libero_posttrain:                 # group name (also the name of <group>_metadata.json)
  dataset_names: [libero_spatial, libero_goal]     # registry names or dataset paths
  data_config_names: libero_nonorm                 # scalar = same for every dataset
  embodiment_tags: libero
  sampling_strategy: step                          # step | trajectory
  frame_step_size: 1
  weight: 1.0                                      # group sampling weight (default 1)
```

Per-dataset fields take a scalar (broadcast) or a list with one entry per dataset. Every problem is
reported with the file, group and key. Reference: upstream_data.md §3 (whose bugs we avoid: weight
defaulting to 0, crashes on omitted lists, silently dropped unknown keys).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from beingh.data.embodiment import get_data_config
from beingh.data.metadata import resolve_stats_level
from beingh.data.video import DECODER_OPTIONS, resolve_video_backend

logger = logging.getLogger(__name__)

SAMPLING_STRATEGIES = ("step", "trajectory")
VIT_TRANSFORM_KEYS = frozenset(
    {
        "type",
        "transform_type",
        "normalize_type",
        "pad2square",
        "use_thumbnail",
        "dynamic_image_size",
        "min_dynamic_patch",
        "max_dynamic_patch",
        "min_num_frame",
        "max_num_frame",
        "max_frame_number",
        "min_image_size",
        "max_image_size",
        "image_stride",
        "use_dynamic_size",
        "use_color_jitter",
        "use_coarse_dropout",
    }
)
"""Keys accepted in `vit_transform_args` (the reference's); only the default transform is implemented."""
_EFFECTIVE_VIT_TRANSFORM_KEYS = frozenset({"normalize_type", "transform_type"})

_REQUIRED_LIST_KEYS = ("dataset_names", "data_config_names", "embodiment_tags")
_PER_DATASET_INT_KEYS = {
    "frame_step_size": 1,
    "num_used_episodes_per_task": -1,
    "num_used_episodes_per_dataset": -1,
    "num_used_frames_per_dataset": -1,
}
_GROUP_KEYS = {
    "sampling_strategy",
    "video_backend",
    "video_backend_kwargs",
    "stats_level",
    "weight",
    "vit_transform_args",
    "is_mandatory",
}
KNOWN_KEYS = frozenset({*_REQUIRED_LIST_KEYS, *_PER_DATASET_INT_KEYS, *_GROUP_KEYS})


class DatasetConfigError(ValueError):
    """A problem in a dataset YAML; the message names the file, group and key."""


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a group."""

    name: str
    """Name as written in the YAML (registry name or path); the dataset's identity in metadata."""
    data_config_name: str
    embodiment_tag: str
    frame_step_size: int = 1
    num_used_episodes_per_task: int = -1
    num_used_episodes_per_dataset: int = -1
    num_used_frames_per_dataset: int = -1


@dataclass(frozen=True)
class DatasetGroup:
    """One top-level YAML group: datasets sampled together, sharing metadata statistics."""

    name: str
    datasets: tuple[DatasetEntry, ...]
    sampling_strategy: str = "step"
    video_backend: str = "pyav"
    video_backend_kwargs: dict[str, Any] = field(default_factory=dict)
    stats_level: str = "auto"
    weight: float = 1.0
    vit_transform_args: dict[str, Any] = field(default_factory=dict)
    is_mandatory: bool = False
    source_file: Path | None = None


def load_dataset_config(path: str | Path) -> list[DatasetGroup]:
    """Parse and validate a dataset YAML; data config names are checked against the registry."""
    path = Path(path)
    if not path.is_file():
        raise DatasetConfigError(f"dataset config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DatasetConfigError(f"{path}: invalid YAML: {err}") from err
    return parse_dataset_config(raw, source=path)


def parse_dataset_config(raw: Any, source: str | Path = "<dataset config>") -> list[DatasetGroup]:
    """Validate an already-loaded YAML mapping `{group_name: {...}}` (see module docstring)."""
    source = Path(source)
    if not isinstance(raw, dict) or not raw:
        raise DatasetConfigError(f"{source}: expected a mapping of group name -> group settings, got {raw!r}")
    groups = [_parse_group(source, str(name), body) for name, body in raw.items()]
    _check_data_configs(source, groups)
    return groups


def _parse_group(source: Path, name: str, body: Any) -> DatasetGroup:
    where = f"{source}: group '{name}'"
    if not isinstance(body, dict):
        raise DatasetConfigError(f"{where}: expected a mapping of settings, got {type(body).__name__}")
    unknown = sorted(set(body) - KNOWN_KEYS)
    if unknown:
        raise DatasetConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(KNOWN_KEYS)}")
    missing = [k for k in _REQUIRED_LIST_KEYS if k not in body]
    if missing:
        raise DatasetConfigError(f"{where}: missing required key(s) {missing}")

    names = body["dataset_names"]
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise DatasetConfigError(f"{where}: key 'dataset_names': expected a non-empty list of strings")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetConfigError(f"{where}: key 'dataset_names': duplicate dataset(s) {duplicates}")
    n = len(names)
    config_names = _broadcast(where, "data_config_names", body["data_config_names"], n, str)
    tags = _broadcast(where, "embodiment_tags", body["embodiment_tags"], n, str)
    ints = {k: _broadcast(where, k, body.get(k, default), n, int) for k, default in _PER_DATASET_INT_KEYS.items()}
    for i, step in enumerate(ints["frame_step_size"]):
        if step < 1:
            raise DatasetConfigError(f"{where}: key 'frame_step_size'[{i}]: must be >= 1, got {step}")
    datasets = tuple(
        DatasetEntry(
            name=names[i],
            data_config_name=config_names[i],
            embodiment_tag=tags[i],
            **{k: v[i] for k, v in ints.items()},
        )
        for i in range(n)
    )

    strategy = body.get("sampling_strategy", "step")
    if strategy not in SAMPLING_STRATEGIES:
        raise DatasetConfigError(
            f"{where}: key 'sampling_strategy': expected one of {SAMPLING_STRATEGIES}, got {strategy!r}"
        )
    try:
        backend = resolve_video_backend(str(body.get("video_backend", "pyav")))
    except ValueError as err:
        raise DatasetConfigError(f"{where}: key 'video_backend': {err}") from err
    stats_level = body.get("stats_level", "auto")
    try:
        resolve_stats_level(stats_level)
    except ValueError as err:
        raise DatasetConfigError(f"{where}: key 'stats_level': {err}") from err
    weight = body.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise DatasetConfigError(f"{where}: key 'weight': expected a number >= 0, got {weight!r}")
    is_mandatory = body.get("is_mandatory", False)
    if not isinstance(is_mandatory, bool):
        raise DatasetConfigError(f"{where}: key 'is_mandatory': expected true/false, got {is_mandatory!r}")
    return DatasetGroup(
        name=name,
        datasets=datasets,
        sampling_strategy=strategy,
        video_backend=backend,
        video_backend_kwargs=_video_backend_kwargs(where, body.get("video_backend_kwargs")),
        stats_level=stats_level,
        weight=float(weight),
        vit_transform_args=_vit_transform_args(where, body.get("vit_transform_args")),
        is_mandatory=is_mandatory,
        source_file=source,
    )


def _broadcast(where: str, key: str, value: Any, n: int, kind: type) -> list:
    """Scalar -> n copies; list -> must have n entries of `kind` (None entries of int keys become defaults)."""
    values = value if isinstance(value, list) else [value] * n
    if len(values) != n:
        raise DatasetConfigError(
            f"{where}: key '{key}': has {len(values)} entries but 'dataset_names' has {n}; "
            "give one entry per dataset or a single value for all"
        )
    out = []
    for i, v in enumerate(values):
        if v is None and kind is int:
            v = _PER_DATASET_INT_KEYS[key]
        if isinstance(v, bool) or not isinstance(v, kind) or (kind is str and not v):
            raise DatasetConfigError(f"{where}: key '{key}'[{i}]: expected {kind.__name__}, got {v!r}")
        out.append(v)
    return out


def _mapping(where: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DatasetConfigError(f"{where}: key '{key}': expected a mapping, got {value!r}")
    return dict(value)


def _video_backend_kwargs(where: str, value: Any) -> dict[str, Any]:
    kwargs = _mapping(where, "video_backend_kwargs", value)
    unknown = sorted(set(kwargs) - set(DECODER_OPTIONS))
    if unknown:
        raise DatasetConfigError(
            f"{where}: key 'video_backend_kwargs': unknown key(s) {unknown}; known: {list(DECODER_OPTIONS)}"
        )
    return kwargs


def _vit_transform_args(where: str, value: Any) -> dict[str, Any]:
    args = _mapping(where, "vit_transform_args", value)
    unknown = sorted(set(args) - VIT_TRANSFORM_KEYS)
    if unknown:
        raise DatasetConfigError(
            f"{where}: key 'vit_transform_args': unknown key(s) {unknown}; known: {sorted(VIT_TRANSFORM_KEYS)}"
        )
    if args.get("normalize_type", "imagenet") != "imagenet":
        raise DatasetConfigError(
            f"{where}: key 'vit_transform_args.normalize_type': only 'imagenet' is supported, "
            f"got {args['normalize_type']!r}"
        )
    if args.get("transform_type", "default") != "default":
        raise DatasetConfigError(
            f"{where}: key 'vit_transform_args.transform_type': only 'default' is supported for robot data, "
            f"got {args['transform_type']!r}"
        )
    ignored = sorted(set(args) - _EFFECTIVE_VIT_TRANSFORM_KEYS)
    if ignored:
        # Accepted so the reference's YAMLs load, but (as in the reference) they change nothing: say so.
        logger.warning("%s: vit_transform_args %s have no effect: the transform is always the default one "
                       "(crop 95-100%%, colour jitter, ImageNet normalization)", where, ignored)
    return args


def _check_data_configs(source: Path, groups: list[DatasetGroup]) -> None:
    for group in groups:
        for i, entry in enumerate(group.datasets):
            try:
                get_data_config(entry.data_config_name)
            except (KeyError, ValueError) as err:
                raise DatasetConfigError(
                    f"{source}: group '{group.name}': key 'data_config_names'[{i}] "
                    f"(dataset '{entry.name}'): {err}"
                ) from err
