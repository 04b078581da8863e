"""Bad data never passes silently: each broken dataset is a fixture copy damaged inside the test.

NaN/inf (normalized columns and columns with normalization `none`), fps disagreeing with timestamps and
video, timestamps between frames, data parquets edited after statistics were cached, damaged middle
episodes, row-count mismatches, bad samples during training (`max_bad_samples`), and the loader
benchmark on any dataset YAML.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import LEROBOT_FIXTURES, REPO_ROOT

from beingh.data import cli
from beingh.data.dataset_config import DatasetConfigError
from beingh.data.embodiment import MetaWorldDataConfig
from beingh.data.lerobot import LeRobotDataset, NonFiniteValueError, RowCountError, TimestampError
from beingh.data.metadata import build_dataset_metadata
from beingh.data.pipeline import BadSampleError, DataArgs, SequenceArgs, build_train_loader
from beingh.data.sample import SampleBuilder
from beingh.data.stats import compute_dataset_stats
from beingh.data.tokenizer import load_tokenizer
from beingh.data.video import VideoDecodeError

FPS = 20
V3_DATA = Path("data/chunk-000/file-000.parquet")
CAMERA = "observation.images.corner"
# Fixture samples are 74 tokens at 28 px with a 4-step chunk; ~4 per pack.
SEQ = SequenceArgs(max_num_tokens=300, expected_num_tokens=297, prefer_buffer_before=120, max_buffer_size=2,
                   max_num_tokens_per_sample=300)


# ---------------------------------------------------------------------------------------------- helpers


def _writable_copy(name: str, root: Path) -> Path:
    shutil.copytree(LEROBOT_FIXTURES / name, root, copy_function=shutil.copyfile)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def _edit_column(path: Path, column: str, edit) -> None:
    """Rewrite one column of a parquet in place: `edit(values)` changes a float64 numpy copy."""
    table = pq.read_table(path)
    field = table.schema.field(column)
    values = np.array(table.column(column).to_pylist(), dtype=np.float64)
    edit(values)
    array = pa.array(values.tolist(), type=field.type)
    pq.write_table(table.set_column(table.schema.get_field_index(column), field, array), path)


def _set_value(path: Path, column: str, row: int, value: float, dim: int | None = 0) -> None:
    def edit(values):
        if dim is None:
            values[row] = value
        else:
            values[row, dim] = value
    _edit_column(path, column, edit)


def _info(root: Path, **changes) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info, indent=2))


def _yaml(tmp_path: Path, root: Path, **group) -> Path:
    path = tmp_path / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump({"grp": {"dataset_names": [str(root)], "data_config_names": "metaworld",
                                            "embodiment_tags": "metaworld", **group}}))
    return path


def _check(config: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    rc = cli.check_main(["--dataset_config_file", str(config), "--cache_dir", str(tmp_path / "cache"), *extra])
    return rc, capsys.readouterr().err


def _stats(config: Path, tmp_path: Path, capsys) -> tuple[int, str, str]:
    rc = cli.stats_main(["--dataset_config_file", str(config), "--cache_dir", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _many_episodes(root: Path, count: int = 7) -> Path:
    """A LeRobot v2.1 dataset of `count` episodes (one parquet and one mp4 each), cycling the fixture's two."""
    source = LEROBOT_FIXTURES / "v21_av1"
    (root / "meta").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    videos = root / "videos" / "chunk-000" / CAMERA
    videos.mkdir(parents=True)
    shutil.copyfile(source / "meta" / "tasks.jsonl", root / "meta" / "tasks.jsonl")
    lines, total = [], 0
    for index in range(count):
        table = pq.read_table(source / "data" / "chunk-000" / f"episode_{index % 2:06d}.parquet")
        n = table.num_rows
        for column, values in (("episode_index", [index] * n), ("index", list(range(total, total + n)))):
            field = table.schema.field(column)
            table = table.set_column(table.schema.get_field_index(column), field, pa.array(values, field.type))
        pq.write_table(table, root / "data" / "chunk-000" / f"episode_{index:06d}.parquet")
        shutil.copyfile(source / "videos" / "chunk-000" / CAMERA / f"episode_{index % 2:06d}.mp4",
                        videos / f"episode_{index:06d}.mp4")
        lines.append(json.dumps({"episode_index": index, "tasks": ["pick up the puck and place it at the goal"],
                                 "length": n}))
        total += n
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    info = json.loads((source / "meta" / "info.json").read_text())
    info.update(total_episodes=count, total_frames=total, total_videos=count, splits={"train": f"0:{count}"})
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return root


def _damage_video(root: Path, episode: int) -> Path:
    path = root / "videos" / "chunk-000" / CAMERA / f"episode_{episode:06d}.mp4"
    path.write_bytes(b"\x00" * 4096)
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def _loader(config: Path, tokenizer, tmp_path: Path, num_workers: int = 0, **data_kw):
    data_args = DataArgs(force_image_size=28, num_workers=num_workers, prefetch_factor=2, **data_kw)
    return build_train_loader(config, tokenizer, data_args, SEQ, action_chunk_length=4, seed=3,
                              stats_cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------- 2. non-finite values


def test_nan_in_a_column_with_normalization_none_fails_check_stats_and_samples(tmp_path, capsys):
    """`action` uses normalization `none` in the metaworld config: its NaN is still found everywhere."""
    root = _writable_copy("v30_av1", tmp_path / "ds")
    clean = LeRobotDataset(root)
    metadata = build_dataset_metadata(clean, MetaWorldDataConfig("metaworld"),
                                      compute_dataset_stats(clean, tmp_path / "c0", data_config=MetaWorldDataConfig()))
    _set_value(root / V3_DATA, "action", 59 + 5, float("nan"), dim=3)  # episode 1 frame 5, action.gripper
    config = _yaml(tmp_path, root)

    rc, err = _check(config, tmp_path, capsys)
    assert rc == 1, err
    assert "[non-finite value]" in err and "column 'action' is NaN/inf at episode 1 frame 5" in err, err
    assert "[non-finite value] 1 problem(s) in episode(s) [1]" in err, err

    rc, _, err = _stats(config, tmp_path, capsys)
    assert rc == 1 and f"{root}: column 'action' is NaN/inf at episode 1 frame 5" in err, err

    # The loader: a sample whose state row or action chunk touches the NaN is refused with its place.
    builder = SampleBuilder(LeRobotDataset(root), MetaWorldDataConfig("metaworld"), metadata, action_chunk_length=4)
    with pytest.raises(NonFiniteValueError, match="column 'action' is NaN/inf at episode 1 frame 5"):
        builder(1, 3, np.random.default_rng(0))  # chunk = frames 3..6
    assert np.isfinite(builder(1, 6, np.random.default_rng(0)).action).all()  # chunk 6..9 is clean


def test_nan_in_a_normalized_column_is_refused_by_statistics(tmp_path, capsys):
    root = _writable_copy("v30_h264", tmp_path / "ds")
    _set_value(root / V3_DATA, "observation.state", 20, float("nan"), dim=1)  # episode 0 frame 20
    config = _yaml(tmp_path, root)

    rc, out, err = _stats(config, tmp_path, capsys)
    assert rc == 1 and "nan" not in out, out
    assert f"[non-finite value] {config}: group 'grp'" in err, err
    assert f"{root}: column 'observation.state' is NaN/inf at episode 0 frame 20" in err, err
    with pytest.raises(NonFiniteValueError, match="observation.state' is NaN/inf at episode 0 frame 20"):
        compute_dataset_stats(LeRobotDataset(root), tmp_path / "c1", data_config=MetaWorldDataConfig())

    rc, err = _check(config, tmp_path, capsys)
    assert rc == 1 and "column 'observation.state' is NaN/inf at episode 0 frame 20" in err, err


def test_inf_in_unused_dims_and_nan_timestamps_are_found_by_check(tmp_path, capsys):
    """Finiteness is tested per column, whatever part of it the config reads; timestamps too."""
    root = _writable_copy("v30_av1", tmp_path / "ds")
    _set_value(root / V3_DATA, "observation.state", 3, float("inf"), dim=7)  # dim 7: no key reads it
    _set_value(root / V3_DATA, "timestamp", 70, float("nan"), dim=None)
    rc, err = _check(_yaml(tmp_path, root), tmp_path, capsys)
    assert rc == 1
    assert "column 'observation.state' is NaN/inf at episode 0 frame 3" in err, err
    assert "column 'timestamp' is NaN/inf at episode 1 frame 11" in err, err
    with pytest.raises(NonFiniteValueError, match="'timestamp' is NaN/inf at episode 1 frame 11"):
        LeRobotDataset(root).read_images(1, np.array([11]), CAMERA)


# ------------------------------------------------------------------------------- 3. fps and timestamps


def test_doubled_fps_fails_check_stats_and_training(tmp_path, capsys, tokenizer):
    root = _writable_copy("v30_av1", tmp_path / "ds")
    _info(root, fps=2 * FPS)
    config = _yaml(tmp_path, root)

    rc, err = _check(config, tmp_path, capsys)
    assert rc == 1
    assert "[timestamps]" in err and "episode 0: timestamp steps from 0.000000s (frame 0) to 0.050000s" in err, err
    assert "fps 40 in" in err and "0.025000s per frame" in err, err
    assert "[fps]" in err and "the video stream runs at 20 fps but" in err and "says fps 40" in err, err

    rc, out, err = _stats(config, tmp_path, capsys)
    assert rc == 1 and "[timestamps]" in err and "fps 40" in err, err

    with pytest.raises(DatasetConfigError, match="group 'grp'.*fps 40"):
        _loader(config, tokenizer, tmp_path)


def test_video_frame_rate_is_checked_when_the_timestamps_agree_with_a_wrong_fps(tmp_path, capsys):
    """info.json and the parquet timestamps both say 40 fps; only the video stream knows it is 20."""
    root = _writable_copy("v30_h264", tmp_path / "ds")
    _info(root, fps=2 * FPS)
    _edit_column(root / V3_DATA, "timestamp", lambda t: np.divide(t, 2, out=t))
    dataset = LeRobotDataset(root)
    assert dataset.timestamp_problems() == []
    (problem,) = dataset.video_rate_problems(dataset.episodes)
    assert problem.cause == "fps" and "runs at 20 fps" in str(problem)
    rc, err = _check(_yaml(tmp_path, root), tmp_path, capsys)
    assert rc == 1 and "[fps]" in err and "[timestamps]" not in err, err


def test_a_timestamp_exactly_between_two_frames_is_an_error(tmp_path, capsys):
    root = _writable_copy("v30_av1", tmp_path / "ds")
    _set_value(root / V3_DATA, "timestamp", 10, 10.5 / FPS, dim=None)  # episode 0 frame 10
    dataset = LeRobotDataset(root)
    with pytest.raises(VideoDecodeError, match=r"timestamp 0\.525000s is between two frames .* 0\.500000s and "
                                               r"0\.550000s \(tolerance_s 0\.0001\)"):
        dataset.read_images(0, np.array([10]), CAMERA)
    (problem,) = dataset.timestamp_problems()
    assert isinstance(problem, TimestampError) and problem.episode == 0 and "(frame 9)" in str(problem)
    rc, err = _check(_yaml(tmp_path, root), tmp_path, capsys)
    assert rc == 1 and "[timestamps]" in err, err


def test_tolerance_s_from_the_dataset_yaml_bounds_timestamp_checks(tmp_path, capsys):
    """Timestamps 0.3 ms off their frames: outside LeRobot's 1e-4 s default, inside an explicit 1e-3 s."""
    root = _writable_copy("v30_av1", tmp_path / "ds")
    _edit_column(root / V3_DATA, "timestamp", lambda t: np.add(t, np.arange(len(t)) % 2 * 3e-4, out=t))
    rc, err = _check(_yaml(tmp_path, root), tmp_path, capsys)
    assert rc == 1 and "[timestamps]" in err and "tolerance_s 0.0001" in err, err
    relaxed = _yaml(tmp_path, root, video_backend_kwargs={"tolerance_s": 1e-3})
    assert _check(relaxed, tmp_path, capsys)[0] == 0
    dataset = LeRobotDataset(root, video_backend_kwargs={"tolerance_s": 1e-3})
    assert dataset.tolerance_s == dataset._decoder.tolerance_s == 1e-3
    assert dataset.read_images(0, np.array([1]), CAMERA).shape == (1, 224, 224, 3)


# ------------------------------------------------------------------------ 4. statistics keyed on content


def test_stats_cache_follows_a_data_parquet_edited_in_place(tmp_path):
    root = _writable_copy("v30_h264", tmp_path / "ds")
    cache = tmp_path / "cache"
    config = MetaWorldDataConfig()
    before = compute_dataset_stats(LeRobotDataset(root), cache, data_config=config)["action"]
    _edit_column(root / V3_DATA, "action", lambda a: np.multiply(a, 2.0, out=a))  # info.json untouched
    after = compute_dataset_stats(LeRobotDataset(root), cache, data_config=config)["action"]
    np.testing.assert_allclose(after.max, 2 * before.max, rtol=1e-6)
    np.testing.assert_allclose(after.mean, 2 * before.mean, rtol=1e-5, atol=1e-9)
    assert len(list(cache.glob("*.json"))) == 2  # the stale entries were replaced, not added to


def test_stats_cache_key_holds_what_the_data_config_reads(tmp_path, monkeypatch):
    dataset = LeRobotDataset(LEROBOT_FIXTURES / "v30_av1")
    cache = tmp_path / "cache"
    compute_dataset_stats(dataset, cache, data_config=MetaWorldDataConfig())
    entries = {json.loads(p.read_text())["column"]: json.loads(p.read_text()) for p in cache.glob("*.json")}
    assert entries["action"]["usage"][0][:6] == ["action.eef_position", 0, 3, False, None, "none"]

    monkeypatch.setattr(dataset, "column", lambda c: pytest.fail(f"re-read {c}"))
    compute_dataset_stats(dataset, cache, data_config=MetaWorldDataConfig())  # same config: cached
    renormalized = type("Renormalized", (MetaWorldDataConfig,),
                        {"action_normalization_modes": {"action.gripper": "min_max"}})
    with pytest.raises(pytest.fail.Exception, match="re-read action"):
        compute_dataset_stats(dataset, cache, data_config=renormalized())


# ------------------------------------------------------------------------------- 5. beingh check --full


def test_quick_check_samples_middle_episodes(tmp_path, capsys):
    root = _many_episodes(tmp_path / "ds")
    dataset = LeRobotDataset(root)
    assert [ep.index for ep in dataset.sample_episodes()] == [0, 2, 3, 4, 6]
    config = _yaml(tmp_path, root)
    assert _check(config, tmp_path, capsys)[0] == 0
    _damage_video(root, 3)
    rc, err = _check(config, tmp_path, capsys)
    assert rc == 1 and "[video decode]" in err and "episode_000003.mp4" in err, err
    assert "[video decode] 1 problem(s) in episode(s) [3]" in err, err


def test_full_check_decodes_every_frame_and_reports_failures_by_place(tmp_path, capsys):
    root = _many_episodes(tmp_path / "ds")
    config = _yaml(tmp_path, root)
    rc, err = _check(config, tmp_path, capsys, "--full")
    frames = 2 * LeRobotDataset(root).num_frames  # every row, and every frame of the one camera
    assert rc == 0 and "check --full ds" in err and f"{frames}/{frames}" in err, err

    _damage_video(root, 5)  # episodes 1 and 5 are not among the quick check's samples
    video = root / "videos" / "chunk-000" / CAMERA / "episode_000001.mp4"
    data = bytearray(video.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 20000] = np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes()
    video.write_bytes(bytes(data))  # garbage inside the stream: the file still opens
    assert _check(config, tmp_path, capsys)[0] == 0
    rc, err = _check(config, tmp_path, capsys, "--full")
    assert rc == 1
    assert f"{config}: group 'grp'" in err and "episode 5 camera 'observation.images.corner': cannot open video" in err
    assert "episode 1 camera 'observation.images.corner':" in err and "decoding failed near" in err, err
    summary = err[err.index("problem(s) in"):]
    assert "[video decode] 2 problem(s) in episode(s) [1, 5]" in summary, summary


def test_full_check_reads_every_row_and_decodes_every_image(tmp_path, capsys):
    """A corrupt PNG in a frame no quick sample touches, and a NaN in a column no key reads."""
    root = _writable_copy("v30_image", tmp_path / "ds")
    table = pq.read_table(root / V3_DATA)
    images = table.column(CAMERA).to_pylist()
    images[20]["bytes"] = images[20]["bytes"][:100]  # episode 0 frame 20
    table = table.set_column(table.schema.get_field_index(CAMERA), table.schema.field(CAMERA),
                             pa.array(images, table.schema.field(CAMERA).type))
    pq.write_table(table, root / V3_DATA)
    _info(root, features={**json.loads((root / "meta" / "info.json").read_text())["features"],
                          "observation.extra": {"dtype": "float32", "shape": [1], "names": None}})
    extra = np.zeros(111, dtype=np.float32)
    extra[100] = np.nan  # episode 1 frame 41
    table = pq.read_table(root / V3_DATA)
    pq.write_table(table.append_column("observation.extra", pa.array(extra)), root / V3_DATA)
    config = _yaml(tmp_path, root)

    assert _check(config, tmp_path, capsys)[0] == 0
    rc, err = _check(config, tmp_path, capsys, "--full")
    assert rc == 1
    assert "[image decode]" in err and "episode 0 camera 'observation.images.corner'" in err, err
    assert "episode 0 frame 20: cannot decode the image" in err, err
    assert "column 'observation.extra' is NaN/inf at episode 1 frame 41" in err, err


def test_row_count_mismatch_is_reported_as_such(tmp_path, capsys):
    root = _writable_copy("v30_av1", tmp_path / "ds")
    table = pq.read_table(root / V3_DATA)
    pq.write_table(table.slice(0, table.num_rows - 1), root / V3_DATA)
    rc, err = _check(_yaml(tmp_path, root), tmp_path, capsys)
    assert rc == 1 and "[row count]" in err and "has 110 rows but the episode metadata" in err, err
    assert "statistics" not in err
    with pytest.raises(RowCountError):
        LeRobotDataset(root).read_rows(0, ["action"], np.array([0]))


# ------------------------------------------------------------------------ 6. bad samples during training


def test_bad_sample_fails_fast_with_dataset_episode_frame_and_cause(tmp_path, tokenizer):
    root = _many_episodes(tmp_path / "ds")
    _damage_video(root, 5)
    loader = _loader(_yaml(tmp_path, root), tokenizer, tmp_path)
    packs = iter(loader)
    with pytest.raises(BadSampleError, match=r"group 'grp': dataset .* episode 5 frame \d+: \[video decode\] "
                                             r"cannot open video .*episode_000005.mp4"):
        for _ in range(40):
            next(packs)


def test_max_bad_samples_skips_logs_then_aborts(tmp_path, tokenizer, caplog):
    root = _many_episodes(tmp_path / "ds")
    _damage_video(root, 5)
    config = _yaml(tmp_path, root)
    caplog.set_level(logging.WARNING, logger="beingh.data.pipeline")

    loader = _loader(config, tokenizer, tmp_path, max_bad_samples=1000)
    packs = iter(loader)
    samples = sum(next(packs).num_samples for _ in range(40))
    assert 10 <= loader.bad_samples < samples / 2  # 52 of the 392 frames are in episode 5
    skips = [r.getMessage() for r in caplog.records if "skipped bad sample" in r.getMessage()]
    assert len(skips) == loader.bad_samples
    assert "skipped bad sample 1 of at most 1000 (--max_bad_samples)" in skips[0] and "episode 5 frame" in skips[0]
    assert "[video decode]" in skips[0]
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["bad_samples"] == loader.bad_samples

    with pytest.raises(BadSampleError, match=r"more than --max_bad_samples 3 bad samples; the last: .*episode 5"):
        limited = iter(_loader(config, tokenizer, tmp_path, max_bad_samples=3))
        for _ in range(40):
            next(limited)


def test_skipped_samples_are_reported_from_worker_processes(tmp_path, tokenizer, caplog):
    root = _many_episodes(tmp_path / "ds")
    _damage_video(root, 5)
    caplog.set_level(logging.WARNING, logger="beingh.data.pipeline")
    loader = _loader(_yaml(tmp_path, root), tokenizer, tmp_path, num_workers=1, max_bad_samples=1000)
    packs = iter(loader)
    for _ in range(25):
        next(packs)
    assert loader.bad_samples > 0
    assert sum("skipped bad sample" in r.getMessage() for r in caplog.records) == loader.bad_samples


def test_max_bad_samples_is_a_training_argument_of_the_data_group():
    from beingh.train.args import build_parser

    parser = build_parser()
    required = ["--dataset_config_file", "d.yaml", "--output_dir", "out", "--max_steps", "1"]
    assert vars(parser.parse_args(required))["data.max_bad_samples"] == 0
    assert vars(parser.parse_args([*required, "--max_bad_samples", "5"]))["data.max_bad_samples"] == 5
    (group,) = [g for g in parser._action_groups if g.title == "Data"]
    assert "--max_bad_samples" in [option for action in group._group_actions for option in action.option_strings]


def test_max_bad_samples_must_not_be_negative(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="--max_bad_samples must be >= 0"):
        _loader(_yaml(tmp_path, LEROBOT_FIXTURES / "v30_av1"), tokenizer, tmp_path, max_bad_samples=-1)


# ----------------------------------------------------------------------------------- 7. loader benchmark


def test_loader_benchmark_measures_any_dataset_config(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("data_loader_benchmark", REPO_ROOT / "benchmarks" / "data_loader.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    config = REPO_ROOT / "configs" / "tests" / "fixtures_v30.yaml"
    assert benchmark.main(["--dataset_config_file", str(config), "--cache_dir", str(tmp_path), "--samples", "12",
                           "--image_size", "28", "--loader_workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["dataset"] == str(config.resolve())
    assert result["config"]["views_per_sample"] == 1.0 and result["figures"]["samples_per_cpu_second"] > 0
