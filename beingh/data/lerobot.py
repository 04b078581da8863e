"""Read-only LeRobot dataset: v2.0/v2.1 (one parquet/mp4 per episode) and v3.0 (multi-episode files).

Indexes the metadata once, then serves random access by (episode, frame) from per-process caches:
each data parquet is read once per requested column (LRU-bounded by bytes) and each video stays open
in the decoder, so a sample costs array slicing plus one exact-frame decode per camera. Every path
comes from this dataset's own info.json templates (the original used the first dataset's).

Array conventions: list columns become (n, d) arrays (even when d == 1; nested lists add dims),
scalar columns become (n,) arrays. Floating point -> float32, integers -> int64, booleans stay bool.

Nothing non-finite leaves the reader: when a float column is first read from a file its NaN/inf rows
are indexed once, and any read touching one raises `NonFiniteValueError` naming the file, column,
episode and frame (clean files cost one dictionary test per read). Timing follows LeRobot: parquet
timestamps must advance by 1/fps and every video frame must lie within `tolerance_s` (1e-4 s by
default) of its row's timestamp, so a timestamp between two frames is an error, never a silent choice.
Errors carry a `cause` label ("row count", "non-finite value", "timestamps", ...; see `error_cause`).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from beingh.data.video import (
    DEFAULT_TOLERANCE_S,
    ProcessLocalLRU,
    VideoDecodeError,
    make_video_decoder,
    video_frame_rate,
)

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
CAMERA_DTYPES = ("video", "image")
_REQUIRED_INFO_FIELDS = ("codebase_version", "fps", "features", "data_path")
_V3_EPISODE_COLUMNS = (
    "episode_index",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)
# A timestamp this far past its episode's video segment belongs to the next episode.
_SEGMENT_SLACK_S = 1e-4


class DatasetFormatError(ValueError):
    """The dataset on disk does not match the LeRobot layout (message names the file and key).

    `episode` is the episode concerned, where there is one.
    """

    cause = "format"

    def __init__(self, message: str, episode: int | None = None):
        super().__init__(message)
        self.episode = episode


class MissingColumnError(DatasetFormatError):
    cause = "missing column"


class RowCountError(DatasetFormatError):
    """A data file's rows disagree with the episode metadata (count or episode order)."""

    cause = "row count"


class NonFiniteValueError(DatasetFormatError):
    cause = "non-finite value"


class ImageDecodeError(DatasetFormatError):
    cause = "image decode"


class TimestampError(DatasetFormatError):
    """Parquet timestamps do not advance by 1/fps (within tolerance_s)."""

    cause = "timestamps"


class FrameRateError(DatasetFormatError):
    """A video stream's frame rate disagrees with meta/info.json's fps."""

    cause = "fps"


def error_cause(err: BaseException) -> str:
    """A short label for why reading data failed, for reports and skipped-sample logs."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, str):
        return cause
    if isinstance(err, FileNotFoundError):
        return "missing file"
    if isinstance(err, ImportError):
        return "missing dependency"
    if isinstance(err, pa.ArrowException):
        return "unreadable parquet"
    if isinstance(err, OSError):
        return "read error"
    return type(err).__name__


@dataclass(frozen=True)
class VideoSegment:
    """Where one camera of one episode lives: a file and the time its first frame starts at."""

    path: Path
    from_timestamp: float = 0.0
    to_timestamp: float | None = None


@dataclass(frozen=True)
class EpisodeInfo:
    index: int
    length: int
    tasks: list[str]
    data_file: Path
    file_row_start: int
    """Row of frame 0 inside `data_file` (0 for per-episode files)."""
    dataset_from_index: int
    """Global frame range [dataset_from_index, dataset_to_index) in dataset order."""
    dataset_to_index: int
    videos: dict[str, VideoSegment] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found (expected a LeRobot dataset root containing meta/info.json)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path} is not valid JSON: {e}") from e


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (required by LeRobot v2.x datasets)")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{path}:{line_no} is not valid JSON: {e}") from e
        missing = [k for k in required if k not in row]
        if missing:
            raise DatasetFormatError(f"{path}:{line_no} lacks required keys {missing}")
        rows.append(row)
    return rows


def _format_template(template: str, info_path: Path, key: str, **values: Any) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetFormatError(
            f"{info_path}: cannot fill template {key}={template!r} with {sorted(values)}: {e!r}"
        ) from e


def _arrow_to_numpy(column: pa.ChunkedArray | pa.Array, path: Path, name: str) -> np.ndarray:
    """Contiguous numpy array from a scalar or (nested) list column, without Python loops over rows."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    shape = [n]
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        if arr.null_count:
            raise DatasetFormatError(f"{path}: column {name!r} has {arr.null_count} null entries")
        if pa.types.is_fixed_size_list(arr.type):
            width = arr.type.list_size
        else:
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            width = int(lengths[0]) if len(lengths) else 0
            if len(lengths) and (lengths != width).any():
                raise DatasetFormatError(
                    f"{path}: column {name!r} has lists of different lengths "
                    f"({int(lengths.min())}..{int(lengths.max())}); expected a fixed-size vector column"
                )
        shape.append(width)
        arr = arr.flatten()
    if arr.null_count:
        raise DatasetFormatError(f"{path}: column {name!r} has {arr.null_count} null values")
    if pa.types.is_floating(arr.type):
        dtype = np.float32
    elif pa.types.is_integer(arr.type):
        dtype = np.int64
    elif pa.types.is_boolean(arr.type):
        dtype = np.bool_
    else:
        raise DatasetFormatError(f"{path}: column {name!r} has non-numeric type {column.type}")
    return np.ascontiguousarray(arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False)).reshape(shape)


def _decode_image(value: dict, root: Path, where: str) -> np.ndarray:
    """PNG/JPEG bytes (or a file path when bytes are absent) -> (H, W, 3) uint8 RGB."""
    data = value.get("bytes") if value else None
    if data is not None:
        source: Any = io.BytesIO(data)
    elif value and value.get("path"):
        source = Path(value["path"]) if Path(value["path"]).is_absolute() else root / value["path"]
        if not source.is_file():
            raise FileNotFoundError(f"{where}: image file {source} not found")
    else:
        raise DatasetFormatError(f"{where}: image entry has neither bytes nor path")
    try:
        with Image.open(source) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for truncated or unknown images
        raise ImageDecodeError(f"{where}: cannot decode the image: {e}") from e


class LeRobotDataset:
    """Random-access reader for one LeRobot dataset directory.

    Not thread-safe (one instance per thread or process); pickling drops the caches, and caches
    inherited through fork are discarded on first use, so DataLoader workers are safe.
    `video_backend_kwargs` (the dataset YAML's key of that name) go to `make_video_decoder`; their
    `tolerance_s` (default 1e-4 s, LeRobot's) also bounds the timestamp checks.
    """

    def __init__(self, root: str | Path, video_backend: str = "pyav", cache_bytes: int = 512 * 2**20,
                 video_backend_kwargs: Mapping[str, Any] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"LeRobot dataset root {self.root} is not a directory")
        self._info_path = self.root / "meta" / "info.json"
        self.info: dict = _read_json(self._info_path)
        self._validate_info()
        self.version: str = self.info["codebase_version"]
        self.fps = float(self.info["fps"])
        self.features: dict = self.info["features"]
        self.camera_keys: list[str] = [k for k, f in self.features.items() if f["dtype"] in CAMERA_DTYPES]
        self.video_keys: list[str] = [k for k in self.camera_keys if self.features[k]["dtype"] == "video"]
        if self.version == "v3.0":
            self.tasks: dict[int, str] = self._load_tasks_v3()
            self.episodes: list[EpisodeInfo] = self._load_episodes_v3()
        else:
            self.tasks = self._load_tasks_v2()
            self.episodes = self._load_episodes_v2()
        self._by_index = {ep.index: ep for ep in self.episodes}
        self.num_episodes = len(self.episodes)
        self.num_frames = sum(ep.length for ep in self.episodes)
        self._episodes_by_file: dict[Path, list[EpisodeInfo]] = {}
        for ep in sorted(self.episodes, key=lambda e: e.dataset_from_index):
            self._episodes_by_file.setdefault(ep.data_file, []).append(ep)
        self._check_files_exist()
        self.video_backend = video_backend
        decoder_kwargs = {"tolerance_s": DEFAULT_TOLERANCE_S, **(video_backend_kwargs or {})}
        self.tolerance_s = float(decoder_kwargs["tolerance_s"])
        self._decoder = make_video_decoder(video_backend, **decoder_kwargs)
        self.cache_bytes = cache_bytes
        self._columns = ProcessLocalLRU(cache_bytes)
        self._schemas: dict[Path, list[str]] = {}
        self._nonfinite: dict[tuple[Path, str], np.ndarray] = {}
        """(data file, float column) -> sorted file rows holding NaN/inf; only files that have some."""

    # ----------------------------------------------------------------- metadata

    def _validate_info(self) -> None:
        where = self._info_path
        if not isinstance(self.info, dict):
            raise DatasetFormatError(f"{where} must hold a JSON object, got {type(self.info).__name__}")
        missing = [k for k in _REQUIRED_INFO_FIELDS if k not in self.info]
        version = self.info.get("codebase_version")
        if version in ("v2.0", "v2.1") and "chunks_size" not in self.info:
            missing.append("chunks_size")
        if missing:
            raise DatasetFormatError(f"{where} lacks required fields {missing}")
        if version not in SUPPORTED_VERSIONS:
            raise DatasetFormatError(
                f"{where}: codebase_version {version!r} is not supported; supported: {list(SUPPORTED_VERSIONS)}"
            )
        features = self.info["features"]
        if not isinstance(features, dict) or not features:
            raise DatasetFormatError(f"{where}: 'features' must be a non-empty object")
        for key, feat in features.items():
            if not isinstance(feat, dict) or "dtype" not in feat:
                raise DatasetFormatError(f"{where}: features[{key!r}] must be an object with a 'dtype'")
        has_video = any(f["dtype"] == "video" for f in features.values())
        if has_video and not self.info.get("video_path"):
            raise DatasetFormatError(f"{where}: has video features but no 'video_path' template")
        if not isinstance(self.info["fps"], int | float) or self.info["fps"] <= 0:
            raise DatasetFormatError(f"{where}: 'fps' must be a positive number, got {self.info['fps']!r}")

    def _load_tasks_v2(self) -> dict[int, str]:
        rows = _read_jsonl(self.root / "meta" / "tasks.jsonl", ("task_index", "task"))
        return {int(r["task_index"]): str(r["task"]) for r in rows}

    def _load_tasks_v3(self) -> dict[int, str]:
        path = self.root / "meta" / "tasks.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (required by LeRobot v3.0 datasets)")
        table = pq.read_table(path)
        # LeRobot writes the task text as the pandas index; older writers may use a 'task' column.
        text_column = "task" if "task" in table.column_names else None
        if text_column is None and table.schema.pandas_metadata:
            index_columns = [
                c for c in table.schema.pandas_metadata.get("index_columns", []) if isinstance(c, str)
            ]
            text_column = index_columns[0] if index_columns else None
        if text_column is None and "__index_level_0__" in table.column_names:
            text_column = "__index_level_0__"
        if "task_index" not in table.column_names or text_column not in table.column_names:
            raise DatasetFormatError(
                f"{path}: expected a 'task_index' column and the task text (column 'task' or the pandas index); "
                f"found columns {table.column_names}"
            )
        indices = table.column("task_index").to_pylist()
        texts = table.column(text_column).to_pylist()
        return {int(i): str(t) for i, t in zip(indices, texts)}

    def _load_episodes_v2(self) -> list[EpisodeInfo]:
        path = self.root / "meta" / "episodes.jsonl"
        rows = sorted(_read_jsonl(path, ("episode_index", "length")), key=lambda r: int(r["episode_index"]))
        chunks_size = int(self.info["chunks_size"])
        episodes, start = [], 0
        for row in rows:
            index, length = int(row["episode_index"]), int(row["length"])
            chunk = index // chunks_size
            data_file = self.root / _format_template(
                self.info["data_path"], self._info_path, "data_path", episode_chunk=chunk, episode_index=index
            )
            videos = {
                key: VideoSegment(
                    self.root
                    / _format_template(
                        self.info["video_path"],
                        self._info_path,
                        "video_path",
                        episode_chunk=chunk,
                        episode_index=index,
                        video_key=key,
                    )
                )
                for key in self.video_keys
            }
            episodes.append(
                EpisodeInfo(
                    index, length, list(row.get("tasks", [])), data_file, 0, start, start + length, videos
                )
            )
            start += length
        self._check_unique(episodes, path)
        return episodes

    def _load_episodes_v3(self) -> list[EpisodeInfo]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise FileNotFoundError(
                f"no episode metadata under {self.root / 'meta' / 'episodes'} (chunk-*/file-*.parquet)"
            )
        video_columns = [
            f"videos/{key}/{name}"
            for key in self.video_keys
            for name in ("chunk_index", "file_index", "from_timestamp")
        ]
        rows: list[dict] = []
        for path in files:
            names = pq.read_schema(path).names
            missing = [c for c in (*_V3_EPISODE_COLUMNS, *video_columns) if c not in names]
            if missing:
                raise DatasetFormatError(f"{path}: episode metadata lacks columns {missing}")
            wanted = [*_V3_EPISODE_COLUMNS, *video_columns]
            wanted += [
                c for c in ("tasks", *(f"videos/{k}/to_timestamp" for k in self.video_keys)) if c in names
            ]
            rows.extend(pq.read_table(path, columns=wanted).to_pylist())
        rows.sort(key=lambda r: int(r["episode_index"]))
        episodes = []
        for row in rows:
            data_file = self.root / _format_template(
                self.info["data_path"],
                self._info_path,
                "data_path",
                chunk_index=row["data/chunk_index"],
                file_index=row["data/file_index"],
            )
            videos = {}
            for key in self.video_keys:
                prefix = f"videos/{key}/"
                video_file = self.root / _format_template(
                    self.info["video_path"],
                    self._info_path,
                    "video_path",
                    video_key=key,
                    chunk_index=row[prefix + "chunk_index"],
                    file_index=row[prefix + "file_index"],
                )
                videos[key] = VideoSegment(
                    video_file, float(row[prefix + "from_timestamp"]), row.get(prefix + "to_timestamp")
                )
            start, stop, length = (
                int(row["dataset_from_index"]),
                int(row["dataset_to_index"]),
                int(row["length"]),
            )
            if stop - start != length:
                raise DatasetFormatError(
                    f"{self.root / 'meta' / 'episodes'}: episode {row['episode_index']} has length {length} but "
                    f"dataset_from_index..dataset_to_index = {start}..{stop}"
                )
            episodes.append(
                EpisodeInfo(
                    int(row["episode_index"]),
                    length,
                    list(row.get("tasks") or []),
                    data_file,
                    0,
                    start,
                    stop,
                    videos,
                )
            )
        self._check_unique(episodes, files[0].parent.parent)
        # Episodes are written contiguously into each data file: row = global index - file's first index.
        first_index: dict[Path, int] = {}
        for ep in episodes:
            first_index[ep.data_file] = min(
                first_index.get(ep.data_file, ep.dataset_from_index), ep.dataset_from_index
            )
        return [
            EpisodeInfo(
                ep.index,
                ep.length,
                ep.tasks,
                ep.data_file,
                ep.dataset_from_index - first_index[ep.data_file],
                ep.dataset_from_index,
                ep.dataset_to_index,
                ep.videos,
            )
            for ep in episodes
        ]

    @staticmethod
    def _check_unique(episodes: list[EpisodeInfo], where: Path) -> None:
        indices = [ep.index for ep in episodes]
        if len(set(indices)) != len(indices):
            raise DatasetFormatError(f"{where}: duplicate episode_index values")

    def _check_files_exist(self) -> None:
        paths = set(self._episodes_by_file)
        paths.update(seg.path for ep in self.episodes for seg in ep.videos.values())
        missing = sorted(p for p in paths if not p.is_file())
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise FileNotFoundError(
                f"{self.root}: {len(missing)} data/video files listed by the metadata are missing: {shown}"
            )

    # ------------------------------------------------------------------ columns

    @property
    def episodes_by_file(self) -> dict[Path, list[EpisodeInfo]]:
        """Each data file and the episodes it holds, in row order."""
        return self._episodes_by_file

    def episode(self, episode_index: int) -> EpisodeInfo:
        ep = self._by_index.get(int(episode_index))
        if ep is None:
            raise KeyError(f"episode {episode_index} not in {self.root} ({self.num_episodes} episodes)")
        return ep

    def _file_columns(self, path: Path, columns: Iterable[str]) -> dict[str, Any]:
        """The requested columns of one data file, read once and cached (numpy, or arrow for images)."""
        entry = self._columns.get(path)
        if entry is None:
            entry = {}
        missing = [c for c in dict.fromkeys(columns) if c not in entry]
        if not missing:
            return entry
        names = self._schemas.get(path)
        if names is None:
            names = self._schemas[path] = pq.read_schema(path).names
        absent = [c for c in missing if c not in names]
        if absent:
            raise MissingColumnError(f"{path}: no column(s) {absent}; available: {names}")
        validate = not entry
        if validate and "episode_index" in names and "episode_index" not in missing:
            missing.append("episode_index")
        table = pq.read_table(path, columns=missing)
        for name in missing:
            column = table.column(name)
            if pa.types.is_struct(column.type):
                entry[name] = column.combine_chunks()
            else:
                entry[name] = _arrow_to_numpy(column, path, name)
                self._index_nonfinite(path, name, entry[name])
        if validate:
            self._validate_file_rows(path, entry.get("episode_index"), table.num_rows)
        self._columns.put(path, entry, cost=sum(a.nbytes for a in entry.values()))
        return entry

    def _validate_file_rows(self, path: Path, episode_column: np.ndarray | None, num_rows: int) -> None:
        """The file must hold exactly its episodes' rows, in the order the metadata says."""
        episodes = self._episodes_by_file.get(path, [])
        expected_rows = sum(ep.length for ep in episodes)
        if num_rows != expected_rows:
            raise RowCountError(
                f"{path} has {num_rows} rows but the episode metadata gives its episodes "
                f"{[ep.index for ep in episodes][:10]} {expected_rows} frames in total"
            )
        if episode_column is None:
            return
        for ep in episodes:
            rows = episode_column[ep.file_row_start : ep.file_row_start + ep.length]
            if (rows != ep.index).any():
                raise RowCountError(
                    f"{path}: rows {ep.file_row_start}..{ep.file_row_start + ep.length} should hold episode "
                    f"{ep.index} (per the episode metadata) but hold episode_index {sorted(set(rows.tolist()))}"
                )

    def _rows(self, ep: EpisodeInfo, frame_indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        bad = (idx < 0) | (idx >= ep.length)
        if bad.any():
            raise IndexError(
                f"frame indices {idx[bad][:5].tolist()} out of range [0, {ep.length}) for episode {ep.index} of {self.root}"
            )
        return ep.file_row_start + idx

    def _numeric(self, entry: dict[str, Any], path: Path, column: str) -> np.ndarray:
        array = entry[column]
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{path}: column {column!r} holds images; use read_images()")
        return array

    def _index_nonfinite(self, path: Path, column: str, array: np.ndarray) -> None:
        """Remember the rows of a freshly read float column that hold NaN/inf (once per file and column)."""
        if array.dtype.kind != "f":
            return
        finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
        if not finite.all():
            self._nonfinite[(path, column)] = np.flatnonzero(~finite)

    def _locate(self, path: Path, file_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(episode indices, frames) of rows of a data file (rows sorted or not)."""
        episodes = self._episodes_by_file[path]
        starts = np.array([ep.file_row_start for ep in episodes])
        position = np.searchsorted(starts, file_rows, side="right") - 1
        return np.array([ep.index for ep in episodes])[position], file_rows - starts[position]

    def _nonfinite_error(self, path: Path, column: str, bad_rows: np.ndarray) -> NonFiniteValueError:
        episodes, frames = self._locate(path, bad_rows[:1])
        episode, frame = int(episodes[0]), int(frames[0])
        more = f" (and {len(bad_rows) - 1} more row(s))" if len(bad_rows) > 1 else ""
        return NonFiniteValueError(
            f"{self.root}: column {column!r} is NaN/inf at episode {episode} frame {frame} "
            f"({path} row {int(bad_rows[0])}){more}",
            episode,
        )

    def _refuse_nonfinite(self, path: Path, columns: Iterable[str], rows: np.ndarray) -> None:
        for column in columns:
            bad = self._nonfinite.get((path, column))
            if bad is not None:
                hit = bad[np.isin(bad, rows)]
                if hit.size:
                    raise self._nonfinite_error(path, column, hit)

    def read_rows(
        self, episode_index: int, columns: list[str], frame_indices: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Values of `columns` at `frame_indices` of one episode: (n, d) for vectors, (n,) for scalars.

        Raises NonFiniteValueError when a requested row of a float column is NaN/inf.
        """
        ep = self.episode(episode_index)
        rows = self._rows(ep, frame_indices)
        entry = self._file_columns(ep.data_file, columns)
        if self._nonfinite:
            self._refuse_nonfinite(ep.data_file, columns, rows)
        return {c: self._numeric(entry, ep.data_file, c)[rows] for c in columns}

    def episode_column(self, episode_index: int, column: str) -> np.ndarray:
        """A whole episode's column: (length, d) for vectors, (length,) for scalars."""
        ep = self.episode(episode_index)
        return self.read_rows(episode_index, [column], np.arange(ep.length))[column]

    def column(self, column: str) -> np.ndarray:
        """The whole dataset's column in episode order (num_frames, d) or (num_frames,), for statistics.

        Raises NonFiniteValueError naming the episode and frame of the first NaN/inf.
        """
        parts = []
        files = list(self._episodes_by_file.items())
        for path, episodes in tqdm(files, desc=f"reading {column}", disable=len(files) < 200):
            array = self._numeric(self._file_columns(path, [column]), path, column)
            bad = self._nonfinite.get((path, column))
            if bad is not None:
                raise self._nonfinite_error(path, column, bad)
            parts.extend(array[ep.file_row_start : ep.file_row_start + ep.length] for ep in episodes)
        return np.concatenate(parts)

    def file_problems(self, path: Path, columns: Iterable[str]) -> list[DatasetFormatError]:
        """Read `columns` of one data file and report what is wrong: rows that disagree with the episode
        metadata (on the file's first read), a missing or unreadable column, NaN/inf values per column."""
        columns = list(columns)
        try:
            self._file_columns(path, columns)
        except DatasetFormatError as err:
            return [err]
        except (pa.ArrowException, OSError) as err:
            failure = DatasetFormatError(f"{path}: cannot read columns {columns}: {err}")
            failure.cause = error_cause(err)
            return [failure]
        problems: list[DatasetFormatError] = []
        for column in columns:
            bad = self._nonfinite.get((path, column))
            if bad is not None:
                episodes = np.unique(self._locate(path, bad)[0]).tolist()
                error = self._nonfinite_error(path, column, bad)
                problems.append(NonFiniteValueError(f"{error}; episodes {episodes[:20]}", error.episode))
        return problems

    # ------------------------------------------------------------------- timing

    def timestamp_problems(self) -> list[TimestampError]:
        """Episodes whose parquet timestamps do not advance by 1/fps (LeRobot's `check_timestamps_sync`).

        A step may differ from 1/fps by `tolerance_s` plus the rounding of the stored float32 values.
        """
        period = 1.0 / self.fps
        problems = []
        for path, file_episodes in self._episodes_by_file.items():
            stored = self._numeric(self._file_columns(path, ["timestamp"]), path, "timestamp").reshape(-1)
            for ep in file_episodes:
                times = stored[ep.file_row_start : ep.file_row_start + ep.length]
                steps = np.diff(times.astype(np.float64))
                slack = self.tolerance_s + 2 * np.spacing(np.abs(times[1:]).astype(np.float32)).astype(np.float64)
                bad = ~(np.abs(steps - period) <= slack)  # NaN steps are bad too
                if bad.any():
                    i = int(np.argmax(bad))
                    problems.append(TimestampError(
                        f"{path}: episode {ep.index}: timestamp steps from {times[i]:.6f}s (frame {i}) to "
                        f"{times[i + 1]:.6f}s (frame {i + 1}) but fps {self.fps:g} in {self._info_path} means "
                        f"{period:.6f}s per frame (tolerance_s {self.tolerance_s:g}); {int(bad.sum())} bad step(s) "
                        f"in this episode",
                        ep.index,
                    ))
        return problems

    def video_rate_problems(self, episodes: Iterable[EpisodeInfo]) -> list[DatasetFormatError | VideoDecodeError]:
        """Video files (of `episodes`) that cannot be opened or whose stream frame rate is not the fps."""
        holders = Counter(seg.path for ep in self.episodes for seg in ep.videos.values())
        files = {seg.path: ep.index for ep in episodes for seg in ep.videos.values()}
        problems: list[DatasetFormatError | VideoDecodeError] = []
        for path, episode in files.items():
            episode = episode if holders[path] == 1 else None  # a v3.0 file holds many episodes
            try:
                rate = video_frame_rate(path)
            except VideoDecodeError as err:
                err.episode = episode
                problems.append(err)
                continue
            if rate is not None and abs(1.0 / rate - 1.0 / self.fps) > self.tolerance_s:
                problems.append(FrameRateError(
                    f"{path}: the video stream runs at {rate:g} fps but {self._info_path} says fps {self.fps:g}",
                    episode,
                ))
        return problems

    def sample_episodes(self, count: int = 5) -> list[EpisodeInfo]:
        """The first and last episodes and `count - 2` spread evenly between them (all when fewer)."""
        if self.num_episodes <= count:
            return list(self.episodes)
        positions = np.unique(np.linspace(0, self.num_episodes - 1, count).round().astype(int))
        return [self.episodes[i] for i in positions]

    def verify_timing(self) -> None:
        """Raise if any episode's timestamps or a sample of the video streams disagree with the fps.

        Run wherever the fps becomes the policy's control rate (statistics, training start).
        """
        problems = [*self.timestamp_problems(), *self.video_rate_problems(self.sample_episodes())]
        if problems:
            first = problems[0]
            more = f" ({len(problems) - 1} more; `beingh check` lists them)" if len(problems) > 1 else ""
            raise type(first)(f"{first}{more}")

    def source_files(self) -> list[Path]:
        """Every file that defines the rows: info.json, the episode metadata and the data files."""
        if self.version == "v3.0":
            episode_meta = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        else:
            episode_meta = [self.root / "meta" / "episodes.jsonl"]
        return [self._info_path, *episode_meta, *sorted(self._episodes_by_file)]

    def task_text(self, episode_index: int, frame_index: int) -> str:
        task_index = int(
            self.read_rows(episode_index, ["task_index"], np.array([frame_index]))["task_index"][0]
        )
        text = self.tasks.get(task_index)
        if text is None:
            tasks_file = "tasks.parquet" if self.version == "v3.0" else "tasks.jsonl"
            raise DatasetFormatError(
                f"{self.root / 'meta' / tasks_file}: no task_index {task_index} (used by episode {episode_index})"
            )
        return text

    # ------------------------------------------------------------------- images

    def read_images(self, episode_index: int, frame_indices: np.ndarray, camera_key: str) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB frames of one camera at `frame_indices` (exact frames)."""
        if camera_key not in self.camera_keys:
            raise KeyError(f"{camera_key!r} is not a camera of {self.root}; cameras: {self.camera_keys}")
        ep = self.episode(episode_index)
        rows = self._rows(ep, frame_indices)
        if rows.size == 0:
            raise ValueError(f"no frame indices requested for {camera_key!r} of episode {episode_index}")
        if camera_key in ep.videos:
            return self._read_video(ep, rows, camera_key)
        images = self._file_columns(ep.data_file, [camera_key])[camera_key]
        values = images.take(pa.array(rows)).to_pylist()
        return np.stack([
            _decode_image(v, self.root, f"{ep.data_file} column {camera_key!r} episode {ep.index} frame {frame}")
            for v, frame in zip(values, rows - ep.file_row_start)
        ])

    def _read_video(self, ep: EpisodeInfo, rows: np.ndarray, camera_key: str) -> np.ndarray:
        segment = ep.videos[camera_key]
        timestamps = self._numeric(self._file_columns(ep.data_file, ["timestamp"]), ep.data_file, "timestamp")
        if self._nonfinite:
            self._refuse_nonfinite(ep.data_file, ["timestamp"], rows)
        times = timestamps[rows].astype(np.float64) + segment.from_timestamp
        if segment.to_timestamp is not None and (times >= segment.to_timestamp - _SEGMENT_SLACK_S).any():
            late = float(times.max())
            raise DatasetFormatError(
                f"{segment.path}: episode {ep.index} ({camera_key}) needs time {late:.6f}s but its video segment "
                f"ends at {segment.to_timestamp:.6f}s: the video is shorter than the parquet timestamps"
            )
        return self._decoder.decode(segment.path, times)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_columns"] = ProcessLocalLRU(self.cache_bytes)
        state["_nonfinite"] = {}
        return state

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset(root={str(self.root)!r}, version={self.version}, episodes={self.num_episodes}, "
            f"frames={self.num_frames}, cameras={self.camera_keys})"
        )
