"""LeRobotDataset against pyarrow ground truth, across the v2.1 / v3.0 fixtures of the same recording.

The v30_image fixture stores the same frames as lossless PNG, so it is the ground truth for video
decoding: decoded frames must be close to the PNG of their own index (PSNR) and closer to it than to
the neighbouring frames' PNGs wherever the scene moves enough for that to be measurable.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LEROBOT_FIXTURES
from PIL import Image

from beingh.data.lerobot import DatasetFormatError, LeRobotDataset
from beingh.data.video import VideoDecodeError

ALL = ["v21_av1", "v30_av1", "v30_h264", "v30_image"]
VIDEO = ["v21_av1", "v30_av1", "v30_h264"]
CAM = "observation.images.corner"
TASK = "pick up the puck and place it at the goal"
LENGTHS = [59, 52]


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(LEROBOT_FIXTURES / name, dst, copy_function=shutil.copyfile)
    for dirpath, _, _ in os.walk(dst):
        os.chmod(dirpath, 0o755)
    return dst


def _ground_truth(root: Path) -> pa.Table:
    """All data rows, straight from pyarrow, in file order."""
    return pa.concat_tables(pq.read_table(p) for p in sorted((root / "data").rglob("*.parquet")))


@pytest.fixture(scope="module")
def png_frames() -> np.ndarray:
    table = pq.read_table(LEROBOT_FIXTURES / "v30_image" / "data" / "chunk-000" / "file-000.parquet")
    values = table.column(CAM).to_pylist()
    return np.stack([np.asarray(Image.open(io.BytesIO(v["bytes"])).convert("RGB")) for v in values])


@pytest.mark.parametrize("name", ALL)
def test_fixture_metadata(name):
    ds = LeRobotDataset(LEROBOT_FIXTURES / name)
    assert ds.version == ("v2.1" if name.startswith("v21") else "v3.0")
    assert ds.fps == 20.0 and ds.num_episodes == 2 and ds.num_frames == 111
    assert [ep.index for ep in ds.episodes] == [0, 1]
    assert [ep.length for ep in ds.episodes] == LENGTHS
    assert [(ep.dataset_from_index, ep.dataset_to_index) for ep in ds.episodes] == [(0, 59), (59, 111)]
    assert ds.tasks == {0: TASK}
    assert all(ep.tasks == [TASK] for ep in ds.episodes)
    assert ds.camera_keys == [CAM]
    assert ds.features[CAM]["dtype"] == ("image" if name == "v30_image" else "video")


def test_v3_episode_metadata_matches_parquet():
    ds = LeRobotDataset(LEROBOT_FIXTURES / "v30_av1")
    meta = pq.read_table(
        LEROBOT_FIXTURES / "v30_av1" / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    )
    rows = meta.to_pylist()
    for ep, row in zip(ds.episodes, rows):
        assert (ep.index, ep.length, ep.tasks) == (row["episode_index"], row["length"], row["tasks"])
        assert ep.file_row_start == row["dataset_from_index"]
        assert ep.videos[CAM].from_timestamp == row[f"videos/{CAM}/from_timestamp"]
        assert ep.videos[CAM].path.name == "file-000.mp4"


@pytest.mark.parametrize("name", ALL)
def test_read_rows_equals_pyarrow(name):
    root = LEROBOT_FIXTURES / name
    ds = LeRobotDataset(root)
    truth = _ground_truth(root)
    episode_of_row = np.asarray(truth.column("episode_index").to_pylist())
    columns = ["observation.state", "action", "timestamp", "frame_index", "index", "task_index"]
    rng = np.random.default_rng(1)
    for ep in ds.episodes:
        frames = np.concatenate([rng.integers(0, ep.length, 7), [0, ep.length - 1, 3, 3]])
        got = ds.read_rows(ep.index, columns, frames)
        rows = np.flatnonzero(episode_of_row == ep.index)[frames]
        for column in columns:
            expected = np.asarray(truth.column(column).take(pa.array(rows)).to_pylist())
            np.testing.assert_array_equal(got[column], expected, err_msg=column)
        assert (
            got["observation.state"].shape == (len(frames), 8)
            and got["observation.state"].dtype == np.float32
        )
        assert got["action"].shape == (len(frames), 7) and got["action"].dtype == np.float32
        assert got["timestamp"].shape == (len(frames),) and got["timestamp"].dtype == np.float32
        assert got["index"].dtype == np.int64
        whole = ds.episode_column(ep.index, "action")
        np.testing.assert_array_equal(
            whole, np.asarray(truth.column("action").to_pylist())[episode_of_row == ep.index]
        )
    np.testing.assert_array_equal(
        ds.column("observation.state"), np.asarray(truth.column("observation.state").to_pylist())
    )
    assert ds.column("frame_index").shape == (111,)


def test_versions_hold_the_same_recording():
    datasets = [LeRobotDataset(LEROBOT_FIXTURES / name) for name in ALL]
    for column in ("observation.state", "action", "timestamp", "frame_index", "index"):
        reference = datasets[0].column(column)
        for ds in datasets[1:]:
            np.testing.assert_array_equal(ds.column(column), reference, err_msg=f"{ds.root.name} {column}")


def test_rows_are_cached_not_reread(monkeypatch):
    ds = LeRobotDataset(LEROBOT_FIXTURES / "v30_av1")
    ds.read_rows(1, ["observation.state", "action"], np.arange(4))
    reads = []
    original = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: reads.append(a) or original(*a, **k))
    for frame in range(20):
        ds.read_rows(frame % 2, ["observation.state", "action"], np.array([frame]))
    assert reads == []


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _moving_frames(png: np.ndarray, start: int, length: int) -> list[int]:
    """Frames that differ from both neighbours clearly more than the codec noise blurs."""
    diff = np.abs(np.diff(png[start : start + length].astype(np.float64), axis=0)).mean(axis=(1, 2, 3))
    return [i for i in range(1, length - 1) if min(diff[i - 1], diff[i]) > 0.4]


@pytest.mark.parametrize("name", VIDEO)
def test_video_frames_match_png_ground_truth(name, png_frames):
    ds = LeRobotDataset(LEROBOT_FIXTURES / name)
    for ep in ds.episodes:
        moving = _moving_frames(png_frames, ep.dataset_from_index, ep.length)
        assert len(moving) >= 10
        frames = np.array(sorted({0, ep.length - 1, *moving[::4], *moving[1::9]}))
        assert (frames % 2 == 1).any() and (frames % 2 == 0).any()  # non-keyframes and keyframes (g=2)
        decoded = ds.read_images(ep.index, frames, CAM)
        assert decoded.shape == (len(frames), 224, 224, 3) and decoded.dtype == np.uint8
        truth = png_frames[ep.dataset_from_index + frames]
        for k, frame in enumerate(frames):
            assert _psnr(decoded[k], truth[k]) > 28.0, (name, ep.index, frame)
            if frame in moving:
                own = np.mean((decoded[k].astype(float) - truth[k]) ** 2)
                for neighbour in (frame - 1, frame + 1):
                    other = png_frames[ep.dataset_from_index + neighbour].astype(float)
                    assert own < np.mean((decoded[k].astype(float) - other) ** 2), (
                        name,
                        ep.index,
                        frame,
                        neighbour,
                    )


@pytest.mark.parametrize("name", VIDEO)
def test_video_frames_equal_a_full_sequential_decode(name):
    """Bit-exact against decoding every frame in order: the seek logic never picks a wrong frame."""
    ds = LeRobotDataset(LEROBOT_FIXTURES / name)
    rng = np.random.default_rng(2)
    for ep in ds.episodes:
        with av.open(str(ep.videos[CAM].path)) as container:
            sequential = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        offset = ep.dataset_from_index if ds.version == "v3.0" else 0
        for frame in rng.permutation(ep.length)[:25]:
            got = ds.read_images(ep.index, np.array([frame]), CAM)[0]
            np.testing.assert_array_equal(
                got, sequential[offset + frame], err_msg=f"episode {ep.index} frame {frame}"
            )


def test_image_dataset_returns_the_png_frames(png_frames):
    ds = LeRobotDataset(LEROBOT_FIXTURES / "v30_image")
    frames = np.array([5, 0, 51, 5])
    np.testing.assert_array_equal(ds.read_images(1, frames, CAM), png_frames[59 + frames])


def test_read_images_keeps_request_order():
    ds = LeRobotDataset(LEROBOT_FIXTURES / "v30_av1")
    batch = ds.read_images(1, np.array([40, 3, 40, 17]), CAM)
    singles = [ds.read_images(1, np.array([f]), CAM)[0] for f in (40, 3, 40, 17)]
    np.testing.assert_array_equal(batch, np.stack(singles))


@pytest.mark.parametrize("name", ["v21_av1", "v30_av1"])
def test_task_text(name):
    ds = LeRobotDataset(LEROBOT_FIXTURES / name)
    assert ds.task_text(0, 0) == TASK and ds.task_text(1, 51) == TASK


def test_variable_length_list_columns(tmp_path):
    root = _copy("v30_av1", tmp_path)
    path = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    actions = table.column("action").to_pylist()
    as_list = pa.array(actions, type=pa.list_(pa.float64()))
    pq.write_table(table.set_column(table.column_names.index("action"), "action", as_list), path)
    ds = LeRobotDataset(root)
    np.testing.assert_array_equal(ds.column("action"), np.asarray(actions, dtype=np.float32))
    assert ds.read_rows(1, ["action"], np.array([2]))["action"].shape == (1, 7)

    ragged = pa.array([a[: 6 + (i % 2)] for i, a in enumerate(actions)], type=pa.list_(pa.float32()))
    pq.write_table(table.set_column(table.column_names.index("action"), "action", ragged), path)
    with pytest.raises(
        DatasetFormatError, match="file-000.parquet: column 'action' has lists of different lengths"
    ):
        LeRobotDataset(root).read_rows(0, ["action"], np.array([0]))


# ------------------------------------------------------------------ bad input


def test_missing_info_json(tmp_path):
    root = _copy("v30_av1", tmp_path)
    (root / "meta" / "info.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta/info.json not found"):
        LeRobotDataset(root)


def test_malformed_info_json(tmp_path):
    root = _copy("v30_av1", tmp_path)
    (root / "meta" / "info.json").write_text('{"codebase_version": "v3.0", ')
    with pytest.raises(DatasetFormatError, match=r"info.json is not valid JSON"):
        LeRobotDataset(root)


@pytest.mark.parametrize("field", ["features", "fps", "data_path", "chunks_size", "video_path"])
def test_info_json_missing_field(tmp_path, field):
    root = _copy("v21_av1", tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    del info[field]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match=rf"info.json.*{field}"):
        LeRobotDataset(root)


def test_unsupported_codebase_version(tmp_path):
    root = _copy("v30_av1", tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["codebase_version"] = "v1.6"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match=r"'v1.6' is not supported.*v2.1.*v3.0"):
        LeRobotDataset(root)


def test_missing_column_names_file_and_lists_available():
    ds = LeRobotDataset(LEROBOT_FIXTURES / "v30_av1")
    with pytest.raises(
        DatasetFormatError,
        match=r"file-000.parquet: no column\(s\) \['observation.nope'\]; available: .*'action'",
    ):
        ds.read_rows(0, ["action", "observation.nope"], np.array([0]))


def test_parquet_without_a_declared_column(tmp_path):
    """info.json declares 'action' but the data file lacks it: the error names the file and the column."""
    root = _copy("v30_av1", tmp_path)
    path = root / "data" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["action"]), path)
    ds = LeRobotDataset(root)
    assert "action" in ds.features
    with pytest.raises(DatasetFormatError, match=r"file-000.parquet: no column\(s\) \['action'\]"):
        ds.read_rows(0, ["observation.state", "action"], np.array([0]))
    with pytest.raises(DatasetFormatError, match=r"file-000.parquet: no column\(s\) \['action'\]"):
        ds.column("action")


def test_torchcodec_backend_missing_is_named_at_construction(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # as if not installed, even where it is
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(ImportError, match=r"video_backend='torchcodec' needs .*pip install torchcodec.*'pyav'"):
        LeRobotDataset(LEROBOT_FIXTURES / "v30_av1", video_backend="torchcodec")


def test_missing_data_file(tmp_path):
    root = _copy("v21_av1", tmp_path)
    (root / "data" / "chunk-000" / "episode_000001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 data/video files .* missing: .*episode_000001.parquet"):
        LeRobotDataset(root)


def test_episode_length_disagreeing_with_parquet(tmp_path):
    root = _copy("v21_av1", tmp_path)
    episodes = root / "meta" / "episodes.jsonl"
    episodes.write_text(episodes.read_text().replace('"length": 59', '"length": 58'))
    ds = LeRobotDataset(root)
    with pytest.raises(DatasetFormatError, match=r"episode_000000.parquet has 59 rows but .* 58 frames"):
        ds.read_rows(0, ["action"], np.array([0]))


def test_v21_video_shorter_than_timestamps(tmp_path):
    root = _copy("v21_av1", tmp_path)
    videos = root / "videos" / "chunk-000" / CAM
    shutil.copyfile(videos / "episode_000001.mp4", videos / "episode_000000.mp4")  # 52 frames for 59 rows
    ds = LeRobotDataset(root)
    assert ds.read_images(0, np.array([10]), CAM).shape == (1, 224, 224, 3)
    with pytest.raises(
        VideoDecodeError, match=r"timestamp 2\.85\d*s is beyond the end of video .*episode_000000.mp4"
    ):
        ds.read_images(0, np.array([57]), CAM)


def test_v30_video_shorter_than_timestamps(tmp_path):
    root = _copy("v30_av1", tmp_path)
    short = (
        LEROBOT_FIXTURES / "v21_av1" / "videos" / "chunk-000" / CAM / "episode_000000.mp4"
    )  # 2.95 s of 5.55
    shutil.copyfile(short, root / "videos" / CAM / "chunk-000" / "file-000.mp4")
    ds = LeRobotDataset(root)
    with pytest.raises(
        VideoDecodeError, match=r"timestamp 3\.45\d*s is beyond the end of video .*file-000.mp4"
    ):
        ds.read_images(1, np.array([10]), CAM)


def test_v30_timestamp_past_episode_segment(tmp_path):
    root = _copy("v30_av1", tmp_path)
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    column = f"videos/{CAM}/to_timestamp"
    table = table.set_column(table.column_names.index(column), column, pa.array([2.0, 5.55]))
    pq.write_table(table, path)
    ds = LeRobotDataset(root)
    with pytest.raises(DatasetFormatError, match=r"file-000.mp4: episode 0 .* segment ends at 2.0+s"):
        ds.read_images(0, np.array([50]), CAM)


def test_unknown_backend_lists_supported():
    with pytest.raises(
        ValueError, match=r"unsupported video_backend 'decord'; supported: \['pyav', 'torchcodec'\]"
    ):
        LeRobotDataset(LEROBOT_FIXTURES / "v30_av1", video_backend="decord")
    assert LeRobotDataset(LEROBOT_FIXTURES / "v30_av1", video_backend="torchvision_av").read_images(
        0, np.array([1]), CAM
    ).shape == (1, 224, 224, 3)


def test_bad_indices_keys_and_episodes():
    ds = LeRobotDataset(LEROBOT_FIXTURES / "v30_av1")
    with pytest.raises(IndexError, match=r"\[52\] out of range \[0, 52\) for episode 1"):
        ds.read_rows(1, ["action"], np.array([0, 52]))
    with pytest.raises(KeyError, match="observation.images.wrist"):
        ds.read_images(0, np.array([0]), "observation.images.wrist")
    with pytest.raises(KeyError, match="episode 7 not in"):
        ds.read_rows(7, ["action"], np.array([0]))
    with pytest.raises(ValueError, match="holds images; use read_images"):
        LeRobotDataset(LEROBOT_FIXTURES / "v30_image").read_rows(0, [CAM], np.array([0]))


def _read_in_child(ds, queue):
    images = ds.read_images(1, np.array([7, 30]), CAM)
    queue.put((images.sum(), ds.read_rows(1, ["action"], np.array([7]))["action"].sum()))


def test_dataset_survives_fork_and_pickle():
    ds = LeRobotDataset(LEROBOT_FIXTURES / "v30_av1")
    expected = (
        ds.read_images(1, np.array([7, 30]), CAM).sum(),
        ds.read_rows(1, ["action"], np.array([7]))["action"].sum(),
    )
    ds.read_images(0, np.array([20]), CAM)  # leave the decoder mid-file
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(ds, queue))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and queue.get(timeout=5) == expected
    clone = pickle.loads(pickle.dumps(ds))
    assert (
        clone.read_images(1, np.array([7, 30]), CAM).sum(),
        clone.read_rows(1, ["action"], np.array([7]))["action"].sum(),
    ) == expected
