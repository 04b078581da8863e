"""Dataset YAML parsing/validation, the shipped configs, and the dataset registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from beingh.data.dataset_config import DatasetConfigError, load_dataset_config, parse_dataset_config
from beingh.data.lerobot import LeRobotDataset
from beingh.data.registry import (
    DATA_ROOT_ENV,
    REGISTRY_ENV,
    SHIPPED_REGISTRY,
    UnknownDatasetError,
    load_registry,
    resolve_dataset_path,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _group(**overrides):
    body = {"dataset_names": ["a", "b"], "data_config_names": "libero_nonorm", "embodiment_tags": "libero"}
    body.update(overrides)
    return {"grp": body}


def test_scalars_broadcast_and_defaults():
    (group,) = parse_dataset_config(_group(frame_step_size=[1, 3]), source="x.yaml")
    assert group.name == "grp" and group.weight == 1.0 and group.sampling_strategy == "step"
    assert [d.name for d in group.datasets] == ["a", "b"]
    assert [d.data_config_name for d in group.datasets] == ["libero_nonorm"] * 2
    assert [d.frame_step_size for d in group.datasets] == [1, 3]
    assert group.datasets[0].num_used_episodes_per_task == -1
    assert group.video_backend == "pyav" and group.stats_level == "auto" and not group.is_mandatory


def test_video_backend_kwargs_reach_the_decoder(lerobot_fixtures, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"grp": {
        "dataset_names": [str(lerobot_fixtures / "v30_av1")], "data_config_names": "metaworld",
        "embodiment_tags": "metaworld", "video_backend_kwargs": {"threads": 2, "tolerance_s": 0.01}}}))
    (group,) = load_dataset_config(config)
    dataset = LeRobotDataset(group.datasets[0].name, group.video_backend,
                             video_backend_kwargs=group.video_backend_kwargs)
    assert (dataset._decoder.threads, dataset._decoder.tolerance_s) == (2, 0.01)
    assert dataset.read_images(0, np.array([5]), "observation.images.corner").shape == (1, 224, 224, 3)


def test_multiple_groups_and_reference_aliases():
    raw = {**_group(video_backend="torchvision_av", weight=0.5), "other": _group(is_mandatory=True)["grp"]}
    groups = parse_dataset_config(raw)
    assert [g.name for g in groups] == ["grp", "other"]
    assert groups[0].video_backend == "pyav" and groups[0].weight == 0.5 and groups[1].is_mandatory


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"embodiment_tags": ["libero"]}, "key 'embodiment_tags': has 1 entries but 'dataset_names' has 2"),
        ({"frame_step_sizes": 1}, r"unknown key\(s\) \['frame_step_sizes'\]"),
        ({"data_config_names": "no_such_config"}, "key 'data_config_names'\\[0\\].*no_such_config"),
        ({"sampling_strategy": "episode"}, "key 'sampling_strategy'"),
        ({"frame_step_size": 0}, "key 'frame_step_size'\\[0\\]: must be >= 1"),
        ({"weight": -1}, "key 'weight'"),
        ({"video_backend": "decord"}, "key 'video_backend'"),
        ({"video_backend_kwargs": {"thread": 2}}, r"key 'video_backend_kwargs': unknown key\(s\) \['thread'\]"),
        ({"stats_level": "robot"}, "key 'stats_level'"),
        ({"vit_transform_args": {"normalize_type": "clip"}}, "normalize_type"),
        ({"vit_transform_args": {"norm_type": "imagenet"}}, "unknown key"),
        ({"dataset_names": ["a", "a"]}, "duplicate"),
        ({"num_used_episodes_per_task": [1, "x"]}, "num_used_episodes_per_task'\\[1\\]: expected int"),
    ],
)
def test_errors_name_file_group_and_key(overrides, message):
    with pytest.raises(DatasetConfigError, match=message) as err:
        parse_dataset_config(_group(**overrides), source="my.yaml")
    assert "my.yaml: group 'grp'" in str(err.value)


def test_ineffective_vit_transform_args_are_reported(caplog):
    args = {"normalize_type": "imagenet", "use_color_jitter": False, "pad2square": True}
    with caplog.at_level("WARNING", logger="beingh.data.dataset_config"):
        parse_dataset_config(_group(vit_transform_args=args), source="my.yaml")
    assert "my.yaml: group 'grp'" in caplog.text and "['pad2square', 'use_color_jitter'] have no effect" in caplog.text
    caplog.clear()
    parse_dataset_config(_group(vit_transform_args={"normalize_type": "imagenet", "transform_type": "default"}))
    assert not caplog.records


def test_missing_required_key_and_bad_top_level(tmp_path):
    with pytest.raises(DatasetConfigError, match=r"missing required key\(s\) \['embodiment_tags'\]"):
        parse_dataset_config({"g": {"dataset_names": ["a"], "data_config_names": "metaworld"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(DatasetConfigError, match="bad.yaml: expected a mapping"):
        load_dataset_config(bad)
    with pytest.raises(DatasetConfigError, match="not found"):
        load_dataset_config(tmp_path / "missing.yaml")


def test_shipped_posttrain_configs_load():
    (libero,) = load_dataset_config(CONFIGS / "posttrain/libero/libero_all.yaml")
    assert libero.name == "libero_posttrain" and len(libero.datasets) == 4
    (robocasa,) = load_dataset_config(CONFIGS / "posttrain/robocasa/robocasa_human.yaml")
    assert len(robocasa.datasets) == 24
    (uni,) = load_dataset_config(CONFIGS / "posttrain/cross-embodiment/libero_robocasa.yaml")
    assert uni.name == "uni_posttrain" and len(uni.datasets) == 28
    assert [d.embodiment_tag for d in uni.datasets] == ["libero"] * 4 + ["robocasa"] * 24
    assert {d.data_config_name for d in uni.datasets[4:]} == {"robocasa_human"}
    registry = load_registry([SHIPPED_REGISTRY])
    for group in (libero, robocasa, uni):
        missing = [d.name for d in group.datasets if d.name not in registry]
        assert not missing, f"{group.name}: names not in {SHIPPED_REGISTRY}: {missing}"
    assert all(not Path(e.path).is_absolute() for e in registry.values())
    (demo,) = load_dataset_config(CONFIGS / "demo/metaworld.yaml")
    assert demo.datasets[0].name == "metaworld_demo" and "metaworld_demo" in registry


def test_registry_resolution_order(tmp_path, monkeypatch):
    data_root = tmp_path / "root"
    (data_root / "libero/libero_goal_no_noops_1.0.0_lerobot/meta").mkdir(parents=True)
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=DATA_ROOT_ENV):
        resolve_dataset_path("libero_goal")
    monkeypatch.setenv(DATA_ROOT_ENV, str(data_root))
    assert resolve_dataset_path("libero_goal") == (data_root / "libero/libero_goal_no_noops_1.0.0_lerobot").resolve()

    user_dir = tmp_path / "mine"
    (user_dir / "goal_copy").mkdir(parents=True)
    user_registry = tmp_path / "registry.yaml"
    user_registry.write_text(yaml.safe_dump({"datasets": {"libero_goal": str(user_dir / "goal_copy")}}))
    monkeypatch.setenv(REGISTRY_ENV, str(user_registry))
    assert resolve_dataset_path("libero_goal") == (user_dir / "goal_copy").resolve()

    with pytest.raises(UnknownDatasetError, match="registry.yaml") as err:
        resolve_dataset_path("nope")
    assert str(SHIPPED_REGISTRY) in str(err.value)


def test_path_names_resolve_relative_to_the_yaml(lerobot_fixtures):
    config = CONFIGS / "tests/fixtures_v30.yaml"
    (group,) = load_dataset_config(config)
    path = resolve_dataset_path(group.datasets[0].name, relative_to=config.parent)
    assert path == (lerobot_fixtures / "v30_av1").resolve()
    with pytest.raises(FileNotFoundError, match="dataset path not found"):
        resolve_dataset_path("./does/not/exist")
