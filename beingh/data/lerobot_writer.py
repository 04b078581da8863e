"""Writer for the LeRobot v3.0 on-disk layout (the one LeRobot 0.4.4 writes).

We write datasets ourselves (MetaWorld demos, tests) because the official writer needs a torchvision that
does not exist for CPU torch here. The layout matches the official fixtures: one data parquet with one row
group per episode, one mp4 per camera holding every episode back to back (g=2 like LeRobot), or PNG image
structs in the data parquet, `meta/episodes` with per-episode video spans and stats, `meta/tasks.parquet`
with the task text as the pandas index, `meta/stats.json` and `meta/info.json`.

Everything is written under a temporary sibling directory that is renamed to `root` in `finalize()`, so a
crashed collection never leaves a half-written dataset that a reader would accept.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_MB = 100
VIDEO_FILES_SIZE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"

# (PyAV encoder name, info.json "video.codec") per writer codec; crf and g=2 as in LeRobot's encoder.
VIDEO_CODECS = {"h264": ("libx264", "h264"), "libsvtav1": ("libsvtav1", "av1")}
VIDEO_CRF = 30
VIDEO_GOP = 2

DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
# Image stats are computed on at most this many frames per episode (LeRobot subsamples too).
MAX_IMAGE_STATS_FRAMES = 32


def _is_camera(feature: dict[str, Any]) -> bool:
    return feature["dtype"] in ("video", "image")


def _feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min/max/mean/std/count/q01..q99 of (n, d) numeric values, or per channel -> (3, 1, 1) for
    (n, 3, h, w) images in [0, 1] (LeRobot's layout)."""
    is_image = values.ndim == 4
    flat = values.transpose(0, 2, 3, 1).reshape(-1, values.shape[1]) if is_image else values
    stats = {
        "min": flat.min(axis=0),
        "max": flat.max(axis=0),
        "mean": flat.mean(axis=0, dtype=np.float64),
        "std": flat.std(axis=0, dtype=np.float64),
        "count": np.array([len(values)], dtype=np.int64),
    }
    for q in QUANTILES:
        stats[f"q{round(q * 100):02d}"] = np.quantile(flat.astype(np.float64), q, axis=0)
    if is_image:
        stats = {k: (v if k == "count" else v.astype(np.float64).reshape(-1, 1, 1)) for k, v in stats.items()}
    return stats


def aggregate_stats(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Pool per-episode stats: exact min/max/mean/std/count, count-weighted mean of quantiles (as LeRobot)."""
    counts = np.array([s["count"][0] for s in per_episode], dtype=np.float64)
    weights = counts / counts.sum()

    def wsum(key: str) -> np.ndarray:
        return sum(w * np.asarray(s[key], dtype=np.float64) for w, s in zip(weights, per_episode, strict=True))

    mean = wsum("mean")
    second_moment = sum(
        w * (np.asarray(s["std"], np.float64) ** 2 + np.asarray(s["mean"], np.float64) ** 2)
        for w, s in zip(weights, per_episode, strict=True)
    )
    out = {
        "min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
        "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(second_moment - mean**2, 0.0)),
        "count": np.array([int(counts.sum())], dtype=np.int64),
    }
    for key in per_episode[0]:
        if key.startswith("q"):
            out[key] = wsum(key)
    return out


def _hf_feature(feature: dict[str, Any]) -> dict[str, Any]:
    """The `huggingface` schema-metadata entry that datasets 4.x writes for one feature."""
    if feature["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": feature["dtype"], "_type": "Value"}
    if list(feature["shape"]) == [1]:
        return value
    return {"feature": value, "length": int(feature["shape"][0]), "_type": "List"}


def _arrow_type(feature: dict[str, Any]) -> pa.DataType:
    if feature["dtype"] == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    scalar = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    if list(feature["shape"]) == [1]:
        return scalar
    return pa.list_(scalar, int(feature["shape"][0]))


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class _VideoStream:
    """One mp4 per camera; every episode is appended to the same stream, so an episode's span in the file is
    [first global frame / fps, (last + 1) / fps)."""

    def __init__(self, path: Path, fps: int, height: int, width: int, codec: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(VIDEO_CODECS[codec][0], rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = Fraction(1, fps)
        self.stream.options = {"crf": str(VIDEO_CRF), "g": str(VIDEO_GOP)}
        if codec == "libsvtav1":
            self.stream.options["preset"] = "12"
        self.num_frames = 0

    def append(self, frames: list[np.ndarray]) -> None:
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = self.num_frames
            self.container.mux(self.stream.encode(frame))
            self.num_frames += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()


@dataclass
class _EpisodeBuffer:
    frames: dict[str, list[np.ndarray]] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tasks)


class LeRobotV3Writer:
    """Writes a LeRobot v3.0 dataset frame by frame.

    `features` uses LeRobot's `create()` format: {key: {"dtype": "video"|"image"|"float32"|..., "shape": [...],
    "names": [...]}}. Camera features are stored as video (`video_codec` "h264" or "libsvtav1") or, with
    `video_codec="image"`, as PNG image structs in the data parquet. timestamp/frame_index/episode_index/
    index/task_index are added automatically.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict[str, dict[str, Any]],
        robot_type: str,
        video_codec: str = "h264",
    ):
        if video_codec not in (*VIDEO_CODECS, "image"):
            raise ValueError(f"video_codec={video_codec!r}: expected one of {[*VIDEO_CODECS, 'image']}")
        self.root = Path(root)
        if self.root.exists():
            raise FileExistsError(f"LeRobotV3Writer: output directory {self.root} already exists")
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps={fps!r}: expected a positive integer")
        self.fps = int(fps)
        self.robot_type = robot_type
        self.video_codec = video_codec
        self.features = self._build_features(features)
        self.camera_keys = [k for k, f in self.features.items() if _is_camera(f)]
        self.tmp_root = self.root.parent / f".{self.root.name}.tmp-{os.getpid()}"
        if self.tmp_root.exists():
            shutil.rmtree(self.tmp_root)
        self.tmp_root.mkdir(parents=True)
        self.schema = pa.schema(
            [(k, _arrow_type(f)) for k, f in self.features.items() if f["dtype"] != "video"],
            metadata={"huggingface": json.dumps({"info": {"features": {
                k: _hf_feature(f) for k, f in self.features.items() if f["dtype"] != "video"}}})},
        )
        self._data_writer: pq.ParquetWriter | None = None
        self._videos: dict[str, _VideoStream] = {}
        self._episode = _EpisodeBuffer()
        self._episode_rows: list[dict[str, Any]] = []
        self._episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self._tasks: dict[str, int] = {}
        self._num_frames = 0
        self._finalized = False

    def _build_features(self, features: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for key, feature in features.items():
            if key in DEFAULT_FEATURES or key == "task":
                raise ValueError(f"feature {key!r} is added by the writer; do not declare it")
            if "dtype" not in feature or "shape" not in feature:
                raise ValueError(f"feature {key!r}: expected 'dtype' and 'shape', got {sorted(feature)}")
            feature = {"dtype": feature["dtype"], "shape": [int(s) for s in feature["shape"]],
                       "names": feature.get("names")}
            if _is_camera(feature):
                if len(feature["shape"]) != 3 or feature["shape"][2] != 3:
                    raise ValueError(f"camera feature {key!r}: expected shape (H, W, 3), got {feature['shape']}")
                feature["dtype"] = "image" if self.video_codec == "image" else "video"
                feature["names"] = feature["names"] or ["height", "width", "channels"]
                if feature["dtype"] == "video":
                    height, width, _ = feature["shape"]
                    if height % 2 or width % 2:
                        raise ValueError(f"camera feature {key!r}: yuv420p video needs even H and W")
                    feature["info"] = {
                        "video.height": height, "video.width": width,
                        "video.codec": VIDEO_CODECS[self.video_codec][1], "video.pix_fmt": "yuv420p",
                        "video.is_depth_map": False, "video.fps": self.fps, "video.channels": 3,
                        "has_audio": False,
                    }
            elif len(feature["shape"]) != 1:
                raise ValueError(f"feature {key!r}: only 1-D numeric features are supported, got {feature['shape']}")
            else:
                np.dtype(feature["dtype"])
            out[key] = feature
        return {**out, **DEFAULT_FEATURES}

    @property
    def num_episodes(self) -> int:
        return len(self._episode_rows)

    def add_frame(self, frame: dict[str, Any], task: str) -> None:
        """Buffer one frame of the current episode. `frame` holds every declared (non-default) feature."""
        if self._finalized:
            raise RuntimeError("LeRobotV3Writer.add_frame after finalize()")
        expected = {k for k in self.features if k not in DEFAULT_FEATURES}
        if set(frame) != expected:
            raise ValueError(f"add_frame: keys {sorted(frame)} != declared features {sorted(expected)}")
        if not isinstance(task, str) or not task:
            raise ValueError(f"add_frame: task must be a non-empty string, got {task!r}")
        checked = {}
        for key, value in frame.items():
            feature = self.features[key]
            value = np.asarray(value)
            if _is_camera(feature):
                if value.dtype != np.uint8 or list(value.shape) != feature["shape"]:
                    raise ValueError(f"add_frame[{key!r}]: expected uint8 {feature['shape']}, "
                                     f"got {value.dtype} {list(value.shape)}")
            else:
                if list(value.reshape(-1).shape) != feature["shape"]:
                    raise ValueError(f"add_frame[{key!r}]: expected shape {feature['shape']}, got {list(value.shape)}")
                value = value.reshape(-1).astype(feature["dtype"])
            checked[key] = value
        for key, value in checked.items():  # only a fully valid frame enters the buffer
            self._episode.frames.setdefault(key, []).append(value)
        self._episode.tasks.append(task)

    def clear_episode(self) -> None:
        """Drop the buffered frames of the current episode (e.g. a failed demo)."""
        self._episode = _EpisodeBuffer()

    def save_episode(self) -> None:
        """Write the buffered episode: one data row group, its video frames, its row in meta/episodes."""
        length = len(self._episode)
        if length == 0:
            raise RuntimeError("save_episode: no frames were added to this episode")
        episode_index = self.num_episodes
        for task in self._episode.tasks:
            self._tasks.setdefault(task, len(self._tasks))
        columns: dict[str, Any] = {
            "timestamp": np.arange(length, dtype=np.float32) / np.float32(self.fps),
            "frame_index": np.arange(length, dtype=np.int64),
            "episode_index": np.full(length, episode_index, dtype=np.int64),
            "index": np.arange(self._num_frames, self._num_frames + length, dtype=np.int64),
            "task_index": np.array([self._tasks[t] for t in self._episode.tasks], dtype=np.int64),
        }
        for key in self.features:
            if key not in DEFAULT_FEATURES:
                columns[key] = np.stack(self._episode.frames[key])
        row: dict[str, Any] = {
            "episode_index": episode_index,
            "tasks": list(dict.fromkeys(self._episode.tasks)),
            "length": length,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": self._num_frames,
            "dataset_to_index": self._num_frames + length,
        }
        self._write_data(columns, episode_index)
        for key in self.camera_keys:
            if self.features[key]["dtype"] == "video":
                row.update(self._write_video(key, columns[key]))
        stats = {key: self._stats_of(key, columns[key]) for key in self.features}
        for key, feature_stats in stats.items():
            for name, value in feature_stats.items():
                row[f"stats/{key}/{name}"] = value
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        self._episode_rows.append(row)
        self._episode_stats.append(stats)
        self._num_frames += length
        self._episode = _EpisodeBuffer()

    def _stats_of(self, key: str, values: np.ndarray) -> dict[str, np.ndarray]:
        if _is_camera(self.features[key]):
            step = max(1, len(values) // MAX_IMAGE_STATS_FRAMES)
            images = values[::step].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            stats = _feature_stats(images)
            stats["count"] = np.array([len(values)], dtype=np.int64)
            return stats
        return _feature_stats(values.reshape(len(values), -1))

    def _write_data(self, columns: dict[str, Any], episode_index: int) -> None:
        arrays = []
        for field_ in self.schema:
            value = columns[field_.name]
            if self.features[field_.name]["dtype"] == "image":
                value = [{"bytes": _png_bytes(img), "path": f"frame-{i:06d}.png"} for i, img in enumerate(value)]
                arrays.append(pa.array(value, type=field_.type))
            elif pa.types.is_fixed_size_list(field_.type):
                flat = pa.array(np.ascontiguousarray(value).reshape(-1), type=field_.type.value_type)
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, field_.type.list_size))
            else:
                arrays.append(pa.array(value.reshape(-1), type=field_.type))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if self._data_writer is None:
            path = self.tmp_root / DATA_PATH.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self.schema, compression="snappy")
        self._data_writer.write_table(table, row_group_size=len(table))

    def _write_video(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        if key not in self._videos:
            height, width, _ = self.features[key]["shape"]
            path = self.tmp_root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            self._videos[key] = _VideoStream(path, self.fps, height, width, self.video_codec)
        video = self._videos[key]
        start = video.num_frames
        video.append(list(frames))
        return {
            f"videos/{key}/chunk_index": 0,
            f"videos/{key}/file_index": 0,
            f"videos/{key}/from_timestamp": start / self.fps,
            f"videos/{key}/to_timestamp": video.num_frames / self.fps,
        }

    def finalize(self) -> Path:
        """Close files, write meta/ and move the dataset into place. Returns the dataset root."""
        if self._finalized:
            return self.root
        if len(self._episode):
            raise RuntimeError(f"finalize: {len(self._episode)} buffered frames were never saved (save_episode)")
        if not self._episode_rows:
            raise RuntimeError("finalize: no episodes were saved")
        self._data_writer.close()
        for video in self._videos.values():
            video.close()
        meta = self.tmp_root / "meta"
        (meta / "episodes/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(self._episodes_table(), self.tmp_root / EPISODES_PATH, compression="snappy")
        pq.write_table(self._tasks_table(), meta / "tasks.parquet", compression="snappy")
        stats = {key: aggregate_stats([s[key] for s in self._episode_stats]) for key in self.features}
        with open(meta / "stats.json", "w") as f:
            json.dump({k: {n: v.tolist() for n, v in s.items()} for k, s in stats.items()}, f, indent=4)
        with open(meta / "info.json", "w") as f:
            json.dump(self._info(), f, indent=4)
        os.replace(self.tmp_root, self.root)
        self._finalized = True
        return self.root

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._data_writer is not None:
            self._data_writer.close()
        for video in self._videos.values():
            video.container.close()
        shutil.rmtree(self.tmp_root, ignore_errors=True)
        self._finalized = True

    def _episodes_table(self) -> pa.Table:
        columns: dict[str, list[Any]] = {}
        for row in self._episode_rows:
            for key, value in row.items():
                columns.setdefault(key, []).append(value.tolist() if isinstance(value, np.ndarray) else value)
        arrays = {}
        for key, values in columns.items():
            if key == "tasks":
                arrays[key] = pa.array(values, type=pa.list_(pa.string()))
            elif key.endswith("_timestamp"):
                arrays[key] = pa.array(values, type=pa.float64())
            elif key.startswith("stats/"):
                arrays[key] = pa.array(values, type=self._stats_type(key))
            else:
                arrays[key] = pa.array(values, type=pa.int64())
        return pa.table(arrays)

    def _stats_type(self, column: str) -> pa.DataType:
        _, key, name = column.split("/")
        feature = self.features[key]
        is_int = np.issubdtype(np.dtype(feature["dtype"]), np.integer) if not _is_camera(feature) else False
        if name == "count" or (is_int and name in ("min", "max")):
            leaf = pa.int64()
        else:
            leaf = pa.float64()
        if name != "count" and _is_camera(feature):
            return pa.list_(pa.list_(pa.list_(leaf)))
        return pa.list_(leaf)

    def _tasks_table(self) -> pa.Table:
        """task_index column + the task text as the pandas index, exactly as pandas/LeRobot write it."""
        tasks = sorted(self._tasks, key=self._tasks.get)
        pandas_meta = {
            "index_columns": ["__index_level_0__"],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                "numpy_type": "str", "metadata": {"encoding": "UTF-8"}}],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                 "numpy_type": "int64", "metadata": None},
                {"name": None, "field_name": "__index_level_0__", "pandas_type": "object",
                 "numpy_type": "str", "metadata": None},
            ],
            "attributes": {},
            "creator": {"library": "pyarrow", "version": pa.__version__},
        }
        schema = pa.schema([("task_index", pa.int64()), ("__index_level_0__", pa.large_string())],
                           metadata={"pandas": json.dumps(pandas_meta)})
        return pa.table([pa.array([self._tasks[t] for t in tasks], pa.int64()), pa.array(tasks, pa.large_string())],
                        schema=schema)

    def _info(self) -> dict[str, Any]:
        has_video = any(self.features[k]["dtype"] == "video" for k in self.camera_keys)
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": self.num_episodes,
            "total_frames": self._num_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{self.num_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if has_video else None,
            "features": self.features,
        }
