"""Exact-frame video decoding by timestamp, with decoders kept open per process.

The original loader returned the keyframe at or before the requested time instead of the frame
shown at that time, so observations lagged the state/action for long-GOP videos. Here every request
returns the frame whose presentation time is nearest the target, and fails loudly when no frame lies
within `tolerance_s` (LeRobot's 1e-4 s by default): a timestamp past the end of the video or between two
frames is an error. The tolerance must stay below half a frame interval, so the choice is never ambiguous.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_VIDEO_BACKENDS = ("pyav", "torchcodec")
DECODER_OPTIONS = ("tolerance_s", "max_open_files", "threads")
"""Keyword arguments of `make_video_decoder` that a dataset YAML may set (`video_backend_kwargs`)."""
# The shipped upstream YAMLs name the PyAV path through torchvision ("torchvision_av").
_BACKEND_ALIASES = {"pyav": "pyav", "av": "pyav", "torchvision_av": "pyav", "torchcodec": "torchcodec"}
DEFAULT_TOLERANCE_S = 1e-4
"""How far a frame may lie from its requested timestamp by default (LeRobot's `tolerance_s`)."""
# Frames this close to a target are the target: covers float32 timestamps (LeRobot's own tolerance).
_SAME_TIME_S = 1e-4
# Cache entries inherited through fork: never used and never freed, because freeing FFmpeg objects
# created by the parent can block forever on the parent's (absent) worker threads.
_FORK_INHERITED: list[Any] = []


class VideoDecodeError(RuntimeError):
    """A requested timestamp has no frame within tolerance, or the file cannot be decoded."""

    cause = "video decode"


def check_tolerance(tolerance_s: float, frame_duration: float | None, path: Path) -> None:
    """A tolerance of half a frame or more could match two frames: refuse it instead of picking one."""
    if tolerance_s <= 0:
        raise ValueError(f"tolerance_s must be > 0, got {tolerance_s}")
    if frame_duration is not None and tolerance_s >= 0.5 * frame_duration:
        raise ValueError(
            f"tolerance_s {tolerance_s:g}s is not below half the frame interval ({0.5 * frame_duration:g}s) of "
            f"{path}: a timestamp between two frames would match both"
        )


def video_frame_rate(path: str | Path) -> float | None:
    """The frame rate a video stream declares (container header only, nothing decoded); None if unknown."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except av.error.FFmpegError as e:
        raise VideoDecodeError(f"cannot open video {path}: {e}") from e
    return float(rate) if rate else None


def resolve_video_backend(name: str) -> str:
    """Map a backend name (or an upstream alias) to one of `SUPPORTED_VIDEO_BACKENDS`."""
    backend = _BACKEND_ALIASES.get(name.lower())
    if backend is None:
        raise ValueError(
            f"unsupported video_backend {name!r}; supported: {list(SUPPORTED_VIDEO_BACKENDS)} "
            f"(aliases: {sorted(set(_BACKEND_ALIASES) - set(SUPPORTED_VIDEO_BACKENDS))})"
        )
    return backend


class ProcessLocalLRU:
    """LRU cache bounded by a total cost, emptied when used from a new process.

    Open files and decoders must not be shared across fork (shared file offsets, codec state), so a
    DataLoader worker that inherits a populated cache starts from an empty one instead.
    """

    def __init__(self, capacity: float, on_evict: Callable[[Any], None] | None = None):
        self.capacity = capacity
        self._on_evict = on_evict
        self._items: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
        self._total = 0.0
        self._pid = os.getpid()

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            _FORK_INHERITED.append(self._items)
            self._items = OrderedDict()
            self._total = 0.0
            self._pid = os.getpid()

    def get(self, key: Hashable) -> Any | None:
        self._check_process()
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any, cost: float = 1.0) -> None:
        """Insert (or replace) `key`; evicts least recently used items, never the one just added."""
        self._check_process()
        if key in self._items:
            self._total -= self._items.pop(key)[1]
        self._items[key] = (value, cost)
        self._total += cost
        while self._total > self.capacity and len(self._items) > 1:
            _, (old, old_cost) = self._items.popitem(last=False)
            self._total -= old_cost
            if self._on_evict is not None:
                self._on_evict(old)

    def clear(self) -> None:
        self._check_process()
        while self._items:
            _, (old, _) = self._items.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(old)
        self._total = 0.0

    def __len__(self) -> int:
        self._check_process()
        return len(self._items)


class VideoFrameDecoder(ABC):
    """Decodes frames of video files by presentation timestamp (seconds).

    Not thread-safe: keep one instance per thread or process. Picklable (open files are dropped), so it
    can travel to spawned DataLoader workers.
    """

    def __init__(self, tolerance_s: float = DEFAULT_TOLERANCE_S, max_open_files: int = 16):
        self.tolerance_s = float(tolerance_s)
        self.max_open_files = max_open_files
        self._open = ProcessLocalLRU(max_open_files, on_evict=self._close_handle)

    @abstractmethod
    def _open_handle(self, path: Path) -> Any: ...

    @abstractmethod
    def _close_handle(self, handle: Any) -> None: ...

    @abstractmethod
    def _decode_sorted(self, handle: Any, path: Path, timestamps: np.ndarray) -> list[np.ndarray]: ...

    def decode(self, path: str | Path, timestamps: Sequence[float] | np.ndarray) -> np.ndarray:
        """Return the frames nearest each timestamp as (n, H, W, 3) uint8 RGB, in request order."""
        path = Path(path)
        ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        if ts.size == 0:
            raise ValueError(f"no timestamps requested from {path}")
        handle = self._open.get(path)
        if handle is None:
            if not path.is_file():
                raise FileNotFoundError(f"video file not found: {path}")
            handle = self._open_handle(path)
            self._open.put(path, handle)
        order = np.argsort(ts, kind="stable")
        frames = np.stack(self._decode_sorted(handle, path, ts[order]))
        return frames[np.argsort(order)] if (np.diff(order) < 0).any() else frames

    def close(self) -> None:
        self._open.clear()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open = ProcessLocalLRU(self.max_open_files, on_evict=self._close_handle)


@dataclass
class _DecodedFrame:
    time: float
    frame: Any  # av.VideoFrame, converted to RGB only when returned


class _PyAVVideo:
    """One open file: container, decoder position and the last two decoded frames.

    Keeping the position lets increasing timestamps (a loader walking an episode) decode forward
    without seeking again.
    """

    def __init__(self, path: Path, threads: int):
        import av
        from av.video.reformatter import VideoReformatter

        self.path = path
        try:
            self.container = av.open(str(path))
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"cannot open video {path}: {e}") from e
        if not self.container.streams.video:
            self.container.close()
            raise VideoDecodeError(f"{path} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_count = threads
        self.time_base = float(self.stream.time_base)
        self.start_time = (self.stream.start_time or 0) * self.time_base
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.frame_duration = 1.0 / float(rate) if rate else None
        self.keyframe_interval = 0.0
        self._last_keyframe_time: float | None = None
        self._frames = None
        self._recent: deque[_DecodedFrame] = deque(maxlen=2)
        # One single-threaded RGB converter per file: a frame's own converter is rebuilt per frame.
        self._to_rgb = VideoReformatter()

    def close(self) -> None:
        self.container.close()

    def _decode_next(self) -> bool:
        """Decode one more frame into `_recent`; False at end of stream."""
        if self._frames is None:
            return False
        try:
            frame = next(self._frames)
        except StopIteration:
            self._frames = None
            return False
        if frame.pts is None:
            raise VideoDecodeError(f"{self.path}: decoded a frame without a timestamp (pts)")
        time = frame.pts * self.time_base
        if frame.key_frame:
            if self._last_keyframe_time is not None:
                self.keyframe_interval = max(self.keyframe_interval, time - self._last_keyframe_time)
            self._last_keyframe_time = time
        self._recent.append(_DecodedFrame(time, frame))
        return True

    def _seek_before(self, t: float) -> None:
        """Position the decoder so the first decoded frame is at or before `t` (or is the first frame).

        A backward seek can land after the target (HEVC with B-frames); then re-seek further back.
        """
        step = self.frame_duration or 0.05
        back = 0.0
        while True:
            target = max(t - back, self.start_time)
            self.container.seek(int(round(target / self.time_base)), stream=self.stream, backward=True)
            self._frames = self.container.decode(self.stream)
            self._recent.clear()
            self._last_keyframe_time = None
            if not self._decode_next():
                raise VideoDecodeError(f"{self.path}: no frame decoded after seeking to {target:.6f}s")
            if self._recent[-1].time <= t + _SAME_TIME_S or target <= self.start_time:
                return
            back = max(2.0 * back, 2.0 * step)

    def _can_continue(self, t: float) -> bool:
        if not self._recent or self._recent[0].time > t + _SAME_TIME_S:
            return False
        window = max(self.keyframe_interval, 4.0 * (self.frame_duration or 0.05))
        return t - self._recent[-1].time <= window

    def frame_at(self, t: float, tolerance_s: float) -> np.ndarray:
        import av

        try:
            if not self._can_continue(t):
                self._seek_before(t)
            while self._recent[-1].time < t - _SAME_TIME_S and self._decode_next():
                pass
        except av.error.FFmpegError as e:
            self._frames = None
            self._recent.clear()
            raise VideoDecodeError(f"{self.path}: decoding failed near {t:.6f}s: {e}") from e
        best = min(self._recent, key=lambda f: abs(f.time - t))
        if abs(best.time - t) > tolerance_s:
            before, after = self._recent[0].time, self._recent[-1].time
            if self._frames is None and t > after:
                where = f"beyond the end of video {self.path}: last frame at {after:.6f}s"
            elif before < t < after:
                where = f"between two frames of video {self.path}, at {before:.6f}s and {after:.6f}s"
            else:
                where = f"not found in video {self.path}: nearest frame at {best.time:.6f}s"
            raise VideoDecodeError(
                f"timestamp {t:.6f}s is {where} (tolerance_s {tolerance_s:g}); the video is shorter than its "
                f"timestamps, or they are misaligned or use another fps"
            )
        return self._to_rgb.reformat(best.frame, format="rgb24", threads=1).to_ndarray()


class PyAVFrameDecoder(VideoFrameDecoder):
    """PyAV (FFmpeg) backend: seek to the keyframe before the target, decode forward to the nearest frame."""

    def __init__(self, tolerance_s: float = DEFAULT_TOLERANCE_S, max_open_files: int = 16, threads: int = 1):
        super().__init__(tolerance_s, max_open_files)
        self.threads = threads

    def _open_handle(self, path: Path) -> _PyAVVideo:
        return _PyAVVideo(path, self.threads)

    def _close_handle(self, handle: _PyAVVideo) -> None:
        handle.close()

    def _decode_sorted(self, handle: _PyAVVideo, path: Path, timestamps: np.ndarray) -> list[np.ndarray]:
        check_tolerance(self.tolerance_s, handle.frame_duration, path)
        return [handle.frame_at(float(t), self.tolerance_s) for t in timestamps]


class TorchCodecFrameDecoder(VideoFrameDecoder):
    """torchcodec backend (optional dependency); exact seek mode, one decoder per open file."""

    def __init__(self, tolerance_s: float = DEFAULT_TOLERANCE_S, max_open_files: int = 16, threads: int = 1):
        try:
            from torchcodec.decoders import VideoDecoder
        except Exception as e:  # ImportError, or OSError when its FFmpeg/CUDA libraries are missing
            raise ImportError(
                "video_backend='torchcodec' needs a working torchcodec: `pip install torchcodec` built for "
                "your torch version, plus FFmpeg shared libraries (e.g. apt-get install libavcodec59 "
                f"libavformat59 libavutil57 libswscale6). Or use video_backend='pyav'. ({e})"
            ) from e
        super().__init__(tolerance_s, max_open_files)
        self.threads = threads
        self._decoder_cls = VideoDecoder

    def __setstate__(self, state: dict) -> None:
        from torchcodec.decoders import VideoDecoder

        super().__setstate__(state)
        self._decoder_cls = VideoDecoder

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_decoder_cls"] = None
        return state

    def _open_handle(self, path: Path) -> Any:
        try:
            return self._decoder_cls(
                str(path), seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=self.threads
            )
        except Exception as e:
            raise VideoDecodeError(f"torchcodec cannot open video {path}: {e}") from e

    def _close_handle(self, handle: Any) -> None:
        """torchcodec decoders release their file when garbage-collected: dropping the reference suffices."""

    def _decode_sorted(self, handle: Any, path: Path, timestamps: np.ndarray) -> list[np.ndarray]:
        meta = handle.metadata
        duration = 1.0 / meta.average_fps if meta.average_fps else 0.05
        tol = self.tolerance_s
        check_tolerance(tol, duration, path)
        end = meta.end_stream_seconds
        # torchcodec returns the frame *displayed* at t; shifting by half a frame selects the nearest one.
        query = timestamps + 0.5 * duration - _SAME_TIME_S
        if end is not None:
            query = np.minimum(query, end - _SAME_TIME_S)
        try:
            batch = handle.get_frames_played_at(seconds=query.tolist())
        except Exception as e:
            raise VideoDecodeError(
                f"torchcodec failed on {path} at timestamps {timestamps.tolist()}: {e}"
            ) from e
        pts = batch.pts_seconds.numpy().astype(np.float64)
        bad = np.abs(pts - timestamps) > tol
        if bad.any():
            i = int(np.argmax(bad))
            raise VideoDecodeError(
                f"timestamp {timestamps[i]:.6f}s not found in video {path}: nearest frame at {pts[i]:.6f}s "
                f"(tolerance_s {tol:g}); the video is shorter than its timestamps, or they are misaligned or "
                f"use another fps"
            )
        return list(batch.data.numpy())


def make_video_decoder(
    backend: str = "pyav", tolerance_s: float = DEFAULT_TOLERANCE_S, max_open_files: int = 16, threads: int = 1
) -> VideoFrameDecoder:
    """Build a decoder for `backend` (see `resolve_video_backend`).

    tolerance_s: how far the nearest frame may lie from a requested time (below half a frame interval).
    threads: codec threads per decoder; 1 suits DataLoader workers (one core each).
    """
    name = resolve_video_backend(backend)
    if name == "pyav":
        return PyAVFrameDecoder(tolerance_s, max_open_files, threads)
    return TorchCodecFrameDecoder(tolerance_s, max_open_files, threads)
