"""Exact-frame decoding on synthetic clips whose frames encode their own index.

Frame i is a flat gray of level 10 + 6*i, so the decoded frame's index is recoverable despite lossy
coding, and returning the keyframe before the target (the original's bug) is caught immediately.
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import types
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from beingh.data.video import (
    SUPPORTED_VIDEO_BACKENDS,
    PyAVFrameDecoder,
    VideoDecodeError,
    make_video_decoder,
    resolve_video_backend,
)

FPS = 20
NUM_FRAMES = 40


def _write_clip(path: Path, codec: str, gop: int, options: dict[str, str]) -> Path:
    if codec not in av.codecs_available:
        pytest.skip(f"encoder {codec} is not in this PyAV build")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = 64, 48, "yuv420p", gop
        stream.options = options
        for i in range(NUM_FRAMES):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 + 6 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _frame_ids(frames: np.ndarray) -> np.ndarray:
    return np.rint((frames.reshape(len(frames), -1).mean(axis=1) - 10) / 6).astype(int)


CLIPS = {
    "h264_bframes_g12": ("libx264", 12, {"bf": "2", "crf": "18"}),
    # x265 with g=2 (LeRobot's setting) makes backward seeks land after the target.
    "hevc_g2": ("libx265", 2, {"x265-params": "log-level=error:crf=18"}),
    "hevc_pyramid_g6": ("libx265", 6, {"x265-params": "log-level=error:crf=18:bframes=4:b-pyramid=1"}),
    "av1_g8": ("libsvtav1", 8, {"crf": "20", "svtav1-params": "enable-overlays=0"}),
}


@pytest.fixture(scope="module", params=sorted(CLIPS))
def clip(request, tmp_path_factory) -> Path:
    codec, gop, options = CLIPS[request.param]
    return _write_clip(tmp_path_factory.mktemp("clips") / f"{request.param}.mp4", codec, gop, options)


def test_random_access_returns_exact_frames(clip):
    decoder = make_video_decoder("pyav")
    rng = np.random.default_rng(0)
    targets = rng.integers(0, NUM_FRAMES, 60)
    got = [int(_frame_ids(decoder.decode(clip, [i / FPS]))[0]) for i in targets]
    assert got == targets.tolist()


def test_batch_in_any_order_and_jittered_times_pick_nearest(clip):
    decoder = make_video_decoder("pyav", tolerance_s=0.49 / FPS)
    targets = np.array([37, 3, 3, 20, 0, 39, 11])
    jitter = np.array([0.2, -0.3, 0.0, 0.45, 0.1, -0.45, -0.2]) / FPS
    frames = decoder.decode(clip, targets / FPS + jitter)
    assert frames.shape == (len(targets), 48, 64, 3) and frames.dtype == np.uint8
    assert _frame_ids(frames).tolist() == targets.tolist()


def test_sequential_walk_decodes_forward_without_seeking(clip, monkeypatch):
    decoder = PyAVFrameDecoder()
    decoder.decode(clip, [0.0])
    seeks = []
    original_seek = av.container.InputContainer.seek

    def counting_seek(self, *args, **kwargs):
        seeks.append(args)
        return original_seek(self, *args, **kwargs)

    monkeypatch.setattr(av.container.InputContainer, "seek", counting_seek)
    ids = [int(_frame_ids(decoder.decode(clip, [i / FPS]))[0]) for i in range(1, NUM_FRAMES)]
    assert ids == list(range(1, NUM_FRAMES))
    assert len(seeks) == 0


def test_hevc_clip_really_has_late_seeks(tmp_path):
    """Guards the HEVC test above: a naive seek+first-frame decoder is wrong on this clip."""
    path = _write_clip(tmp_path / "hevc.mp4", *CLIPS["hevc_g2"])
    late = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for i in range(NUM_FRAMES):
            container.seek(int(i / FPS / stream.time_base), stream=stream, backward=True)
            first = next(container.decode(stream))
            late += first.pts * stream.time_base > i / FPS + 1e-6
    assert late > 0


def test_timestamp_beyond_end_names_file_and_time(clip):
    decoder = make_video_decoder("pyav")
    with pytest.raises(
        VideoDecodeError, match=rf"timestamp 2\.10+s is beyond the end of video .*{clip.name}"
    ):
        decoder.decode(clip, [0.0, (NUM_FRAMES + 2) / FPS])


def test_explicit_tolerance_rejects_misaligned_time(clip):
    decoder = make_video_decoder("pyav", tolerance_s=1e-3)
    assert _frame_ids(decoder.decode(clip, [5 / FPS + 5e-4]))[0] == 5
    with pytest.raises(VideoDecodeError, match=r"between two frames of video .* at 0\.250000s and 0\.300000s"):
        decoder.decode(clip, [5 / FPS + 0.3 / FPS])


def test_default_tolerance_is_lerobots_and_a_time_between_frames_is_an_error(clip):
    """LeRobot's tolerance_s (1e-4 s): exact frame times decode, a time exactly between two frames fails."""
    decoder = make_video_decoder("pyav")
    assert decoder.tolerance_s == 1e-4
    assert _frame_ids(decoder.decode(clip, [7 / FPS + 5e-5]))[0] == 7
    with pytest.raises(VideoDecodeError, match=r"timestamp 0\.375000s is between two frames"):
        decoder.decode(clip, [7.5 / FPS])


def test_tolerance_of_half_a_frame_is_refused(clip):
    """With tolerance >= half a frame a time between two frames would match both: refuse, never pick one."""
    with pytest.raises(ValueError, match="not below half the frame interval"):
        make_video_decoder("pyav", tolerance_s=0.5 / FPS).decode(clip, [7.5 / FPS])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        make_video_decoder("pyav").decode(tmp_path / "nope.mp4", [0.0])


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoDecodeError, match="cannot open video .*garbage.mp4"):
        make_video_decoder("pyav").decode(path, [0.0])


def test_backend_names():
    assert resolve_video_backend("pyav") == "pyav"
    assert resolve_video_backend("torchvision_av") == "pyav"
    assert resolve_video_backend("av") == "pyav"
    assert isinstance(make_video_decoder("torchvision_av"), PyAVFrameDecoder)
    for name in ("decord", "opencv"):
        with pytest.raises(ValueError, match=r"unsupported video_backend .*'pyav', 'torchcodec'"):
            make_video_decoder(name)
    assert SUPPORTED_VIDEO_BACKENDS == ("pyav", "torchcodec")


def test_torchcodec_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # as if not installed, even where it is
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(ImportError, match="pip install torchcodec.*video_backend='pyav'"):
        make_video_decoder("torchcodec")


class _FakeTorchCodecDecoder:
    """torchcodec's documented played-at semantics (frame whose [pts, pts + duration) holds t), via PyAV."""

    def __init__(self, source, seek_mode, dimension_order, num_ffmpeg_threads):
        assert (seek_mode, dimension_order) == ("exact", "NHWC")
        with av.open(source) as container:
            decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
        self.pts = np.array([t for t, _ in decoded])
        self.frames = np.stack([f for _, f in decoded])
        self.metadata = types.SimpleNamespace(average_fps=FPS, end_stream_seconds=self.pts[-1] + 1 / FPS)

    def get_frames_played_at(self, seconds):
        seconds = np.asarray(seconds)
        if (seconds >= self.metadata.end_stream_seconds).any():
            raise IndexError("Invalid pts in seconds")
        idx = np.searchsorted(self.pts, seconds, side="right") - 1
        return types.SimpleNamespace(
            data=torch.from_numpy(self.frames[idx]), pts_seconds=torch.from_numpy(self.pts[idx])
        )


def test_torchcodec_backend_picks_nearest_frame(clip, monkeypatch):
    package = types.ModuleType("torchcodec")
    decoders = types.ModuleType("torchcodec.decoders")
    decoders.VideoDecoder = _FakeTorchCodecDecoder
    package.decoders = decoders
    monkeypatch.setitem(sys.modules, "torchcodec", package)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", decoders)
    decoder = make_video_decoder("torchcodec", tolerance_s=0.49 / FPS)
    targets = np.array([37, 3, 20, 0, 39, 11])
    jitter = np.array([0.2, -0.3, 0.45, 0.0, -0.45, -0.2]) / FPS
    assert _frame_ids(decoder.decode(clip, targets / FPS + jitter)).tolist() == targets.tolist()
    with pytest.raises(VideoDecodeError, match=rf"2\.10+s not found in video .*{clip.name}"):
        decoder.decode(clip, [(NUM_FRAMES + 2) / FPS])


def _decode_in_child(decoder, path, queue):
    queue.put(_frame_ids(decoder.decode(path, [7 / FPS, 30 / FPS])).tolist())


def test_decoder_survives_fork_and_pickle(clip):
    decoder = make_video_decoder("pyav")
    decoder.decode(clip, [20 / FPS])  # leaves an open container and a decoder position behind
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_decode_in_child, args=(decoder, clip, queue))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and queue.get(timeout=5) == [7, 30]
    assert _frame_ids(decoder.decode(clip, [21 / FPS])).tolist() == [21]
    clone = pickle.loads(pickle.dumps(decoder))
    assert _frame_ids(clone.decode(clip, [2 / FPS])).tolist() == [2]
