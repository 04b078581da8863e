"""`beingh check` finds each kind of config/data problem; `beingh stats` prints and writes statistics."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import yaml

from beingh.data import cli, embodiment
from beingh.data.embodiment import MetaWorldDataConfig, ModalityDef


def _variant(name: str, **attrs) -> type:
    return type(name, (MetaWorldDataConfig,), attrs)


BASE_MODALITIES = dict(MetaWorldDataConfig.MODALITIES)
BAD_CONFIGS = {
    "missing_column": (
        _variant("MissingColumn", MODALITIES={**BASE_MODALITIES,
                                              "state.gripper": ModalityDef("observation.joints", 0, 1)}),
        "key 'state.gripper'", "column 'observation.joints' missing",
    ),
    "missing_camera": (
        _variant("MissingCamera", VIDEO_SOURCE_COLUMNS={"video.corner": "observation.images.top"}),
        "view 'video.corner'", "camera column 'observation.images.top' missing",
    ),
    "overlap": (
        _variant("Overlap", UNIFIED_MAPPING={**MetaWorldDataConfig.UNIFIED_MAPPING, "state.gripper": (2, 3)}),
        "key 'state.eef_position'", "overlapping UNIFIED_MAPPING slots",
    ),
    "no_rotation_type": (
        _variant("NoRotation", STATE_KEYS=["state.eef_position", "state.eef_rotation"],
                 MODALITIES={**BASE_MODALITIES, "state.eef_rotation": ModalityDef("observation.state", 3, 6)},
                 UNIFIED_MAPPING={**MetaWorldDataConfig.UNIFIED_MAPPING, "state.eef_rotation": (3, 6)},
                 state_normalization_modes={}),
        "key 'state.eef_rotation'", "looks like a rotation but has no rotation_type",
    ),
    "slice_out_of_range": (
        _variant("SliceOut", MODALITIES={**BASE_MODALITIES, "action.gripper": ModalityDef("action", 7, 8)}),
        "key 'action.gripper'", "slice [7:8] is out of range: column 'action' has 7 dims",
    ),
    "slot_out_of_range": (
        _variant("SlotOut", UNIFIED_MAPPING={**MetaWorldDataConfig.UNIFIED_MAPPING, "state.gripper": (199, 201)}),
        "key 'state.gripper'", "need 0 <= start < end <= 200",
    ),
    "slot_width": (
        _variant("SlotWidth", UNIFIED_MAPPING={**MetaWorldDataConfig.UNIFIED_MAPPING,
                                               "action.eef_position": (0, 4)}),
        "key 'action.eef_position'", "unified slot (0, 4) has 4 dims but the modality gives 3",
    ),
}


@pytest.fixture
def fixture_yaml(tmp_path, lerobot_fixtures):
    def write(data_config: str) -> str:
        path = tmp_path / f"{data_config}.yaml"
        path.write_text(yaml.safe_dump({"grp": {
            "dataset_names": [str(lerobot_fixtures / "v30_av1")],
            "data_config_names": data_config, "embodiment_tags": "metaworld"}}))
        return str(path)
    return write


def test_check_passes_on_good_config(fixture_yaml, tmp_path, capsys):
    assert cli.check_main(["--dataset_config_file", fixture_yaml("metaworld"), "--cache_dir", str(tmp_path)]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_check_reports_each_problem(name, fixture_yaml, tmp_path, capsys, monkeypatch):
    cls, key, message = BAD_CONFIGS[name]
    monkeypatch.setitem(embodiment.DATA_CONFIG_MAP, name, cls)
    config_file = fixture_yaml(name)
    rc = cli.check_main(["--dataset_config_file", config_file, "--cache_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if message in line]
    assert lines, err
    assert all(f"{config_file}: group 'grp'" in line and f"{key}: " in line for line in lines), err


def test_check_reports_a_declared_column_missing_from_the_parquet(lerobot_fixtures, tmp_path, capsys):
    root = tmp_path / "ds"
    shutil.copytree(lerobot_fixtures / "v30_av1", root, copy_function=shutil.copyfile)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    data_file = root / "data" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(data_file).drop_columns(["task_index"]), data_file)
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"grp": {"dataset_names": [str(root)], "data_config_names": "metaworld",
                                                   "embodiment_tags": "metaworld"}}))
    assert cli.check_main(["--dataset_config_file", str(config_file), "--cache_dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert f"file '{data_file}': column(s) ['task_index'] declared in {root / 'meta' / 'info.json'}" in err, err
    assert "1 problem(s)" in err


def test_check_reports_a_missing_torchcodec(lerobot_fixtures, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"grp": {
        "dataset_names": [str(lerobot_fixtures / "v30_av1")], "data_config_names": "metaworld",
        "embodiment_tags": "metaworld", "video_backend": "torchcodec"}}))
    args = ["--dataset_config_file", str(config_file), "--cache_dir", str(tmp_path / "c")]
    assert cli.check_main(args) == 1
    err = capsys.readouterr().err
    assert "group 'grp'" in err and "pip install torchcodec" in err, err
    assert cli.stats_main(args) == 1
    assert "pip install torchcodec" in capsys.readouterr().err


def test_check_reports_missing_statistics(fixture_yaml, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "compute_dataset_stats", lambda dataset, cache, data_config: {})
    config_file = fixture_yaml("metaworld")
    rc = cli.check_main(["--dataset_config_file", config_file, "--cache_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "[statistics]" in err and config_file in err
    assert "no statistics for column 'observation.state' (needed by 'state.eef_position')" in err


def _without_quantiles(real):
    def compute(dataset, cache, data_config):
        return {column: replace(stats, q01=None, q99=None)
                for column, stats in real(dataset, cache, data_config=data_config).items()}
    return compute


def test_check_reports_q99_without_quantiles(fixture_yaml, tmp_path, capsys, monkeypatch):
    q99 = _variant("Q99", state_normalization_modes={"state.eef_position": "q99", "state.gripper": "min_max"})
    monkeypatch.setitem(embodiment.DATA_CONFIG_MAP, "q99_config", q99)
    monkeypatch.setattr(cli, "compute_dataset_stats", _without_quantiles(cli.compute_dataset_stats))
    rc = cli.check_main(["--dataset_config_file", fixture_yaml("q99_config"), "--cache_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "1 problem(s)" in err, err
    assert "key 'state.eef_position': normalization 'q99' needs q01/q99 statistics" in err


def test_check_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"g": {"dataset_names": ["x"], "data_config_names": "metaworld",
                                         "embodiment_tags": "metaworld", "wieght": 2}}))
    assert cli.check_main(["--dataset_config_file", str(bad)]) == 1
    assert "unknown key(s) ['wieght']" in capsys.readouterr().err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"g": {"dataset_names": ["not_registered_anywhere"],
                                             "data_config_names": "metaworld", "embodiment_tags": "metaworld"}}))
    assert cli.check_main(["--dataset_config_file", str(unknown)]) == 1
    assert "unknown dataset 'not_registered_anywhere'" in capsys.readouterr().err


def test_check_and_stats_accept_statistics_without_quantiles(fixture_yaml, tmp_path, capsys, monkeypatch):
    """LeRobot's own stats.json has no q01/q99: fine for min_max configs, printed without them."""
    monkeypatch.setattr(cli, "compute_dataset_stats", _without_quantiles(cli.compute_dataset_stats))
    args = ["--dataset_config_file", fixture_yaml("metaworld"), "--cache_dir", str(tmp_path)]
    assert cli.check_main(args) == 0
    assert cli.stats_main(args) == 0
    out = capsys.readouterr().out
    assert "mean=" in out and "q99=" not in out


def test_stats_prints_and_writes_metadata(fixture_yaml, tmp_path, capsys):
    out_dir = tmp_path / "meta"
    rc = cli.stats_main(["--dataset_config_file", fixture_yaml("metaworld"), "--cache_dir", str(tmp_path / "c"),
                         "--output_dir", str(out_dir)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "111 frames" in captured.out and "state.eef_position" in captured.out and "q99=" in captured.out
    document = json.loads((out_dir / "grp_metadata.json").read_text())
    assert "eef_position" in document["grp"]["statistics"]["state"]
