"""Per-dimension statistics of dataset columns: computed once per dataset, cached outside it, merged exactly.

The cache lives in `cache_dir` (default `$BEINGH_CACHE_DIR/stats` or `~/.cache/beingh/stats`), never in
the dataset folder: the reference wrote `meta/stats.json` into the dataset from every rank at once
(reference/upstream_data.md §10.14). One entry per (dataset path, column, what the DataConfig reads of
that column), holding a content fingerprint: path, size, mtime and ctime of every file the statistics
read (info.json, episode metadata, every data parquet). A file edited in place changes the fingerprint
and the entry is recomputed; a new column does not invalidate the others. A file lock per entry makes
concurrent ranks compute each column once; the others wait and read the cache. Non-finite input is
refused, naming the dataset, column, episode and frame.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:
    from beingh.data.embodiment import BaseDataConfig
    from beingh.data.lerobot import LeRobotDataset

logger = logging.getLogger(__name__)

MOMENT_FIELDS = ("mean", "std", "min", "max")
QUANTILE_FIELDS = ("q01", "q99")
STAT_FIELDS = MOMENT_FIELDS + QUANTILE_FIELDS
_CACHE_FORMAT = 2


@dataclass
class ColumnStats:
    """Per-dimension statistics of one column (or of a slice of it, for one modality key).

    `std` is the population std (ddof 0). `q01`/`q99` are the 1st/99th percentiles (linear
    interpolation); after `merge_column_stats` they are bounds (min of q01s, max of q99s), not quantiles.
    They are None only in metadata files that lack them (LeRobot's own stats.json has none); then the
    `q99` normalization refuses to run instead of guessing.
    """

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray | None
    q99: np.ndarray | None
    count: int = 0

    def __post_init__(self) -> None:
        if (self.q01 is None) != (self.q99 is None):
            raise ValueError("ColumnStats: q01 and q99 must both be given or both be None")
        for name in self.present_fields:
            setattr(self, name, np.atleast_1d(np.asarray(getattr(self, name), dtype=np.float64)))
        dims = {getattr(self, name).shape for name in self.present_fields}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise ValueError(f"ColumnStats fields must be 1-D and of equal length, got shapes {dims}")

    @property
    def present_fields(self) -> tuple[str, ...]:
        """The fields that hold values: all of STAT_FIELDS, or MOMENT_FIELDS when quantiles are absent."""
        return STAT_FIELDS if self.q01 is not None else MOMENT_FIELDS

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def has_quantiles(self) -> bool:
        return self.q01 is not None

    def slice(self, start: int, end: int) -> ColumnStats:
        if not 0 <= start < end <= self.dim:
            raise ValueError(f"stats slice [{start}:{end}] out of range for a {self.dim}-dim column")
        fields = {name: getattr(self, name) for name in STAT_FIELDS}
        return ColumnStats(**{k: None if v is None else v[start:end] for k, v in fields.items()}, count=self.count)

    def to_dict(self) -> dict[str, list[float]]:
        """JSON form used in metadata files (the reference's field names, `[]` for absent quantiles)."""
        return {name: [] if getattr(self, name) is None else getattr(self, name).tolist() for name in STAT_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]], count: int = 0, where: str = "stats") -> ColumnStats:
        def given(name: str) -> bool:
            return data.get(name) is not None and len(data[name]) > 0

        missing = [name for name in MOMENT_FIELDS if not given(name)]
        if missing:
            raise ValueError(f"{where}: missing statistics {missing} (have {sorted(data)})")
        quantiles = all(given(name) for name in QUANTILE_FIELDS)
        values = {name: data[name] for name in MOMENT_FIELDS}
        values.update({name: data[name] if quantiles else None for name in QUANTILE_FIELDS})
        return cls(**values, count=count)

    @classmethod
    def from_values(cls, values: np.ndarray) -> ColumnStats:
        """Exact statistics of a (N, d) or (N,) array."""
        x = np.asarray(values, dtype=np.float64)
        x = x.reshape(len(x), -1)
        if len(x) == 0:
            raise ValueError("cannot compute statistics of an empty column")
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            raise ValueError(f"cannot compute statistics of NaN/inf values (row {int(np.argmin(finite))} of {len(x)})")
        q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
        return cls(mean=x.mean(0), std=x.std(0), min=x.min(0), max=x.max(0), q01=q01, q99=q99, count=len(x))


def merge_column_stats(items: Sequence[tuple[ColumnStats, int]]) -> ColumnStats:
    """Pool statistics of disjoint parts, each weighted by its frame count.

    mean = sum w_i mu_i ; var = sum w_i (sigma_i^2 + mu_i^2) - mean^2 (exact pooled population variance);
    min/max exact; q01 = min of q01s and q99 = max of q99s (conservative bounds, not quantiles).
    """
    if not items:
        raise ValueError("merge_column_stats: nothing to merge")
    dims = {stats.dim for stats, _ in items}
    if len(dims) != 1:
        raise ValueError(f"merge_column_stats: dimension mismatch {sorted(dims)}")
    weights = np.asarray([float(n) for _, n in items])
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"merge_column_stats: frame counts must be >= 0 with a positive total, got {weights}")
    w = (weights / weights.sum())[:, None]
    means = np.stack([s.mean for s, _ in items])
    stds = np.stack([s.std for s, _ in items])
    mean = (w * means).sum(0)
    var = np.maximum((w * (stds**2 + means**2)).sum(0) - mean**2, 0.0)
    quantiles = all(s.has_quantiles for s, _ in items)
    return ColumnStats(
        mean=mean,
        std=np.sqrt(var),
        min=np.min([s.min for s, _ in items], axis=0),
        max=np.max([s.max for s, _ in items], axis=0),
        q01=np.min([s.q01 for s, _ in items], axis=0) if quantiles else None,
        q99=np.max([s.q99 for s, _ in items], axis=0) if quantiles else None,
        count=int(weights.sum()),
    )


def merge_stats(
    items: Sequence[tuple[Mapping[str, ColumnStats], int]], skip_mismatched: bool = False
) -> dict[str, ColumnStats]:
    """Merge {key: ColumnStats} dicts of several datasets, weighted by frame count.

    A key is merged over the datasets that have it. A key whose width differs between datasets raises,
    or, with `skip_mismatched`, is left out with a warning (two robots may use one name for different
    things; the per-embodiment statistics still have it).
    """
    keys: dict[str, None] = {}
    for stats, _ in items:
        keys.update(dict.fromkeys(stats))
    merged = {}
    for key in keys:
        parts = [(stats[key], n) for stats, n in items if key in stats]
        try:
            merged[key] = merge_column_stats(parts)
        except ValueError as err:
            if not skip_mismatched:
                raise ValueError(f"merge_stats: cannot merge {key!r}: {err}") from err
            logger.warning("merge_stats: leaving %r out of the merged statistics: %s", key, err)
    return merged


def default_cache_dir() -> Path:
    root = os.environ.get("BEINGH_CACHE_DIR")
    return Path(root) / "stats" if root else Path.home() / ".cache" / "beingh" / "stats"


def dataset_fingerprint(dataset: LeRobotDataset) -> str:
    """Changes whenever a file the statistics read changes: path, size, mtime and ctime of each."""
    digest = hashlib.sha256()
    for path in dataset.source_files():
        st = path.stat()
        digest.update(f"{path.relative_to(dataset.root)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}\n".encode())
    return digest.hexdigest()


def column_usage(data_config: BaseDataConfig | None, column: str) -> list[list]:
    """What a DataConfig reads of `column` and how it normalizes it: part of the cache key."""
    if data_config is None:
        return []
    relative = data_config.ACTION_RELATIVE_TO_STATE
    usage = []
    for key in [*data_config.STATE_KEYS, *data_config.ACTION_KEYS]:
        mod = data_config.modality(key)
        if mod.source_column == column:
            usage.append([key, mod.start, mod.end, mod.absolute, mod.rotation_type,
                          data_config.normalization_mode(key), relative.get(key)])
    return usage


def _cache_file(cache_dir: Path, dataset: LeRobotDataset, column: str, usage: list[list]) -> Path:
    key = json.dumps([str(Path(dataset.root).resolve()), column, usage, _CACHE_FORMAT])
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _read_cache(path: Path, fingerprint: str) -> ColumnStats | None:
    """The cached statistics, or None when absent, unreadable or computed from other file contents."""
    try:
        data = json.loads(path.read_text())
        if data.get("fingerprint") != fingerprint:
            logger.info("stats cache %s is stale (the dataset's files changed): recomputing", path)
            return None
        return ColumnStats.from_dict(data["stats"], count=int(data["count"]), where=str(path))
    except (OSError, ValueError, KeyError) as err:
        if path.exists():
            logger.warning("ignoring unreadable stats cache %s (%s)", path, err)
        return None


def _write_cache(path: Path, dataset: LeRobotDataset, column: str, usage: list[list], fingerprint: str,
                 stats: ColumnStats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"dataset": str(Path(dataset.root).resolve()), "column": column, "usage": usage,
               "fingerprint": fingerprint, "count": stats.count, "stats": stats.to_dict()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)  # atomic: concurrent ranks never read a half-written file


def numeric_columns(dataset: LeRobotDataset) -> list[str]:
    """Float feature columns (state/action-like); index, time and image columns are excluded."""
    return [
        name for name, feature in dataset.features.items()
        if str(feature.get("dtype", "")).startswith("float") and name != "timestamp"
    ]


def compute_dataset_stats(
    dataset: LeRobotDataset,
    cache_dir: str | Path | None = None,
    columns: Iterable[str] | None = None,
    data_config: BaseDataConfig | None = None,
) -> dict[str, ColumnStats]:
    """Exact statistics of `columns` (default: the data config's source columns, else every float
    column), one column in memory at a time.

    Cached per column under `cache_dir`; only missing or stale columns are read. Raises
    NonFiniteValueError (dataset, column, episode, frame) on NaN/inf input.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if columns is None:
        columns = data_config.source_columns() if data_config is not None else numeric_columns(dataset)
    wanted = list(dict.fromkeys(columns))
    unknown = [c for c in wanted if c not in dataset.features]
    if unknown:
        raise ValueError(f"{dataset.root}: no column(s) {unknown}; available: {sorted(dataset.features)}")
    fingerprint = dataset_fingerprint(dataset)
    files = {column: _cache_file(cache_dir, dataset, column, column_usage(data_config, column)) for column in wanted}
    result: dict[str, ColumnStats] = {}
    todo = []
    for column in wanted:
        cached = _read_cache(files[column], fingerprint)
        if cached is not None:
            result[column] = cached
        else:
            todo.append(column)
    for column in tqdm(todo, desc=f"stats {Path(dataset.root).name}", unit="col", disable=not todo):
        file = files[column]
        with _exclusive(file.with_suffix(".lock")):
            stats = _read_cache(file, fingerprint)  # another rank may have computed it while we waited
            if stats is None:
                stats = ColumnStats.from_values(dataset.column(column))
                _write_cache(file, dataset, column, column_usage(data_config, column), fingerprint, stats)
        result[column] = stats
    return {column: result[column] for column in wanted}


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Inter-process lock so concurrent ranks compute a column once and the others read the cache."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
