"""LeRobotV3Writer: schema identical to the official LeRobot 0.4.4 fixtures, exact round trip via our reader."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from beingh.data.lerobot import LeRobotDataset
from beingh.data.lerobot_writer import LeRobotV3Writer, aggregate_stats

FIXTURE_FEATURES = {
    "observation.images.corner": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
    "observation.state": {"dtype": "float32", "shape": (8,), "names": [f"s{i}" for i in range(8)]},
    "action": {"dtype": "float32", "shape": (7,), "names": [f"a{i}" for i in range(7)]},
}
LENGTHS = (12, 9)
TASKS = ("pick up the puck", "push the puck")


def _smooth_image(rng: np.random.Generator, t: int) -> np.ndarray:
    """Low-frequency images survive lossy video coding with small error."""
    y, x = np.mgrid[0:32, 0:32]
    base = rng.integers(40, 200, size=3)
    img = base[None, None, :] + 40 * np.sin((x[..., None] + 3 * t) / 6.0) + 30 * np.cos(y[..., None] / 5.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(root, codec: str):
    rng = np.random.default_rng(0)
    writer = LeRobotV3Writer(root, fps=20, features=FIXTURE_FEATURES, robot_type="sawyer", video_codec=codec)
    frames = []
    for ep, length in enumerate(LENGTHS):
        for t in range(length):
            frame = {"observation.images.corner": _smooth_image(rng, t),
                     "observation.state": rng.normal(size=8).astype(np.float32),
                     "action": rng.normal(size=7).astype(np.float32)}
            writer.add_frame(frame, task=TASKS[ep])
            frames.append(frame)
        writer.save_episode()
    writer.finalize()
    return frames


@pytest.mark.parametrize(("codec", "fixture"), [("h264", "v30_h264"), ("libsvtav1", "v30_av1"), ("image", "v30_image")])
def test_schema_matches_official_fixture(tmp_path, lerobot_fixtures, codec, fixture):
    root = tmp_path / "ds"
    _write(root, codec)
    ref = lerobot_fixtures / fixture
    ours_info, ref_info = (json.loads((d / "meta/info.json").read_text()) for d in (root, ref))
    assert ours_info.keys() == ref_info.keys()
    assert ours_info["features"].keys() == ref_info["features"].keys()
    for key, feature in ref_info["features"].items():
        assert ours_info["features"][key]["dtype"] == feature["dtype"]
        if "info" in feature:
            assert ours_info["features"][key]["info"].keys() == feature["info"].keys()
            assert ours_info["features"][key]["info"]["video.codec"] == feature["info"]["video.codec"]
    assert ours_info["video_path"] == ref_info["video_path"]
    assert ours_info["total_episodes"] == 2 and ours_info["total_frames"] == sum(LENGTHS)
    assert ours_info["total_tasks"] == 2 and ours_info["splits"] == {"train": "0:2"}
    for rel in ("data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/tasks.parquet"):
        ours, theirs = pq.read_schema(root / rel), pq.read_schema(ref / rel)
        assert ours.remove_metadata().equals(theirs.remove_metadata()), rel
    hf_meta = json.loads(pq.read_schema(root / "data/chunk-000/file-000.parquet").metadata[b"huggingface"])
    ref_meta = json.loads(pq.read_schema(ref / "data/chunk-000/file-000.parquet").metadata[b"huggingface"])
    assert hf_meta["info"]["features"] == ref_meta["info"]["features"]
    assert json.loads((root / "meta/stats.json").read_text()).keys() == json.loads(
        (ref / "meta/stats.json").read_text()).keys()
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pylist()
    assert tasks == [{"task_index": 0, "__index_level_0__": TASKS[0]}, {"task_index": 1, "__index_level_0__": TASKS[1]}]
    assert b"pandas" in pq.read_schema(root / "meta/tasks.parquet").metadata


@pytest.mark.parametrize("codec", ["h264", "image"])
def test_round_trip_through_reader(tmp_path, codec):
    root = tmp_path / "ds"
    frames = _write(root, codec)
    ds = LeRobotDataset(root)
    assert ds.version == "v3.0" and ds.fps == 20 and ds.num_episodes == 2 and ds.num_frames == sum(LENGTHS)
    assert ds.camera_keys == ["observation.images.corner"]
    assert sorted(ds.tasks.values()) == sorted(TASKS)
    offset = 0
    for ep, length in enumerate(LENGTHS):
        assert ds.episodes[ep].length == length and ds.episodes[ep].tasks == [TASKS[ep]]
        assert ds.task_text(ep, 0) == TASKS[ep]
        expected = frames[offset:offset + length]
        idx = np.arange(length)
        rows = ds.read_rows(ep, ["observation.state", "action", "index", "frame_index"], idx)
        np.testing.assert_array_equal(rows["observation.state"], np.stack([f["observation.state"] for f in expected]))
        np.testing.assert_array_equal(rows["action"], np.stack([f["action"] for f in expected]))
        np.testing.assert_array_equal(rows["index"].reshape(-1), offset + idx)
        np.testing.assert_array_equal(rows["frame_index"].reshape(-1), idx)
        images = ds.read_images(ep, idx, "observation.images.corner")
        truth = np.stack([f["observation.images.corner"] for f in expected])
        if codec == "image":
            np.testing.assert_array_equal(images, truth)
        else:  # lossy, but each decoded frame must be the right one (closest to its own source frame)
            errors = np.abs(images[:, None].astype(int) - truth[None].astype(int)).mean(axis=(2, 3, 4))
            assert (errors.argmin(axis=1) == idx).all()
            assert errors[idx, idx].max() < 6.0
        offset += length


def test_episode_video_spans_and_stats(tmp_path):
    root = tmp_path / "ds"
    frames = _write(root, "h264")
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    key = "videos/observation.images.corner"
    assert episodes[0][f"{key}/from_timestamp"] == 0.0
    assert episodes[0][f"{key}/to_timestamp"] == pytest.approx(LENGTHS[0] / 20)
    assert episodes[1][f"{key}/from_timestamp"] == pytest.approx(LENGTHS[0] / 20)
    assert [e["dataset_from_index"] for e in episodes] == [0, LENGTHS[0]]
    states = np.stack([f["observation.state"] for f in frames])
    stats = json.loads((root / "meta/stats.json").read_text())
    np.testing.assert_allclose(stats["observation.state"]["mean"], states.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], states.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["min"], states.min(0))
    assert stats["observation.state"]["count"] == [sum(LENGTHS)]
    assert np.asarray(stats["observation.images.corner"]["mean"]).shape == (3, 1, 1)


def test_aggregate_stats_pools_exactly():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 3)), rng.normal(2, 3, size=(30, 3))

    def stats(x):
        return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}

    pooled = aggregate_stats([stats(a), stats(b)])
    both = np.concatenate([a, b])
    np.testing.assert_allclose(pooled["mean"], both.mean(0))
    np.testing.assert_allclose(pooled["std"], both.std(0))
    assert pooled["count"][0] == 40


def test_bad_input_is_rejected_and_nothing_is_left_behind(tmp_path):
    root = tmp_path / "ds"
    writer = LeRobotV3Writer(root, fps=20, features=FIXTURE_FEATURES, robot_type="sawyer")
    with pytest.raises(ValueError, match="observation.state"):
        writer.add_frame({"observation.images.corner": np.zeros((32, 32, 3), np.uint8),
                          "observation.state": np.zeros(5), "action": np.zeros(7)}, task="t")
    with pytest.raises(ValueError, match="keys"):
        writer.add_frame({"action": np.zeros(7)}, task="t")
    with pytest.raises(RuntimeError, match="no episodes"):
        writer.finalize()
    writer.abort()
    assert not root.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="added by the writer"):
        LeRobotV3Writer(root, 20, {"timestamp": {"dtype": "float32", "shape": (1,)}}, "x")
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        LeRobotV3Writer(tmp_path / "exists", 20, FIXTURE_FEATURES, "x")
