"""Embodiment configs: built-in tables, validation, view selection, user configs via env var, tags."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from beingh.data import embodiment as emb
from beingh.data.embodiment import (
    BaseDataConfig,
    ModalityDef,
    data_config_from_dict,
    embodiment_id,
    get_data_config,
    load_data_config_file,
    register_data_config,
)
from beingh.data.unified import UNIFIED_SLOTS, slot, validate_unified_mapping


def _active_dims(config: BaseDataConfig, group: str) -> int:
    return sum(e - s for k, (s, e) in config.UNIFIED_MAPPING.items() if k.startswith(group + "."))


def test_libero_nonorm_table():
    config = get_data_config("libero_nonorm")()
    assert config.VIDEO_SOURCE_COLUMNS == {"video.top_view": "observation.images.image",
                                           "video.wrist_view": "observation.images.wrist_image"}
    m = config.modalities
    assert m["state.libero_gripper_position"] == ModalityDef("observation.state", 6, 8)
    assert m["action.eef_rotation"] == ModalityDef("action", 3, 6, absolute=False, rotation_type="axis_angle")
    assert config.UNIFIED_MAPPING["state.libero_gripper_position"] == (44, 46)
    assert config.UNIFIED_MAPPING["action.gripper_position"] == (18, 19)
    assert (_active_dims(config, "state"), _active_dims(config, "action")) == (8, 7)
    assert all(config.normalization_mode(k) == "none" for k in config.STATE_KEYS + config.ACTION_KEYS)


def test_robocasa_human_table():
    config = get_data_config("robocasa_human")(embodiment_tag="robocasa")
    rot = config.modality("state.base_rotation")
    assert (rot.source_column, rot.start, rot.end, rot.rotation_type) == ("observation.state", 3, 7, "quaternion")
    assert rot.width == 4 and rot.unified_width == 3
    assert config.UNIFIED_MAPPING["state.base_rotation"] == (73, 76)
    assert config.UNIFIED_MAPPING["action.base_motion"] == (70, 74)
    assert config.modality("action.base_motion") == ModalityDef("action", 7, 11, absolute=False)
    assert config.normalization_mode("action.gripper_position") == "binary"
    assert config.normalization_mode("action.control_mode") == "binary"
    # The table of upstream_data.md §2.3 adds up to 14 / 12 (its prose says 13 / 10); the table is the truth.
    assert (_active_dims(config, "state"), _active_dims(config, "action")) == (14, 12)
    assert config.source_columns() == ["world_abs_state", "observation.state", "world_delta_action", "action"]


def test_metaworld_table():
    config = get_data_config("metaworld")(embodiment_tag="metaworld")
    assert config.VIDEO_SOURCE_COLUMNS == {"video.corner": "observation.images.corner"}
    assert config.modality("state.gripper") == ModalityDef("observation.state", 3, 4)
    assert config.modality("action.eef_position") == ModalityDef("action", 0, 3, absolute=False)
    assert config.UNIFIED_MAPPING == {"state.eef_position": (0, 3), "state.gripper": (18, 19),
                                      "action.eef_position": (0, 3), "action.gripper": (18, 19)}


def test_unknown_config_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown data config 'nope'.*libero_nonorm.*metaworld"):
        get_data_config("nope")


def test_view_selection():
    config_cls = get_data_config("robocasa_human")
    assert config_cls(use_fixed_view=True).select_views() == ["video.left_view"]
    assert config_cls().select_views() == config_cls.VIDEO_KEYS
    two = config_cls(max_view_num=2)
    rng = np.random.default_rng(0)
    draws = {tuple(two.select_views(rng)) for _ in range(40)}
    assert all(len(d) == 2 and list(d) == [v for v in config_cls.VIDEO_KEYS if v in d] for d in draws)
    assert len(draws) == 3  # re-drawn per call, every pair reachable
    with pytest.raises(ValueError, match="pass an rng"):
        two.select_views()
    with pytest.raises(ValueError, match="max_view_num"):
        config_cls(max_view_num=0)


def _spec(**overrides):
    spec = {
        "video_source_columns": {"video.front": "observation.images.front"},
        "state": {"state.eef_position": {"source_column": "observation.state", "start": 0, "end": 3}},
        "action": {"action.eef_position": {"source_column": "action", "start": 0, "end": 3, "absolute": False}},
        "unified_mapping": {"state.eef_position": [0, 3], "action.eef_position": [0, 3]},
    }
    spec.update(overrides)
    return spec


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"unified_mapping": {"state.eef_position": [0, 4], "action.eef_position": [0, 3]}}, "has 4 dims"),
        ({"unified_mapping": {"action.eef_position": [0, 3]}}, "no UNIFIED_MAPPING slot"),
        ({"unified_mapping": {"state.eef_position": [198, 201], "action.eef_position": [0, 3]}}, "<= 200"),
        ({"state_normalization_modes": {"state.eef_position": "q01_q99"}}, "unknown normalization mode"),
        ({"state_normalization_modes": {"state.nope": "q99"}}, "not in STATE_KEYS"),
        ({"action": {"action.g": {"source_column": "action", "start": 0, "end": 1, "continuous": False}},
          "unified_mapping": {"state.eef_position": [0, 3], "action.g": [18, 19]},
          "action_normalization_modes": {"action.g": "q99"}}, "continuous=False"),
        ({"state": {"state.q": {"source_column": "s", "start": 0, "end": 4, "rotation_type": "quaternion"}},
          "unified_mapping": {"state.q": [3, 6], "action.eef_position": [0, 3]},
          "state_normalization_modes": {"state.q": "q99"}}, "converted rotation"),
        ({"state": {"state.q": {"source_column": "s", "start": 0, "end": 3, "rotation_type": "quaternion"}},
          "unified_mapping": {"state.q": [3, 6], "action.eef_position": [0, 3]}}, "needs 4 values"),
        ({"video_keys": ["video.side"]}, "no VIDEO_SOURCE_COLUMNS entry"),
        ({"state": {"state.eef_position": {"source_column": "s", "end": 3, "typo": 1}}}, "expected a mapping"),
        ({"colour": 1}, "unknown fields"),
    ],
)
def test_invalid_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        register_data_config("bad", data_config_from_dict("bad", _spec(**overrides)))
    assert "bad" not in emb.DATA_CONFIG_MAP


def test_unified_mapping_overlaps():
    validate_unified_mapping({"state.a": (0, 3), "action.a": (0, 3)})  # separate vectors
    with pytest.raises(ValueError, match="overlaps 'state.a' at unified dim 2"):
        validate_unified_mapping({"state.a": (0, 3), "state.b": (2, 5)})
    with pytest.raises(ValueError, match="start with 'state.' or 'action.'"):
        validate_unified_mapping({"eef": (0, 3)})
    assert slot("libero_gripper_position") == (44, 46) and len(UNIFIED_SLOTS) == 20
    with pytest.raises(ValueError, match="known slots"):
        slot("tail")


def test_user_configs_from_env(tmp_path, monkeypatch):
    yaml_file = tmp_path / "robots.yaml"
    yaml_file.write_text(
        "data_configs:\n"
        "  yaml_robot:\n"
        "    video_source_columns: {video.front: observation.images.front}\n"
        "    state: {state.joints: {source_column: observation.state, start: 0, end: 7}}\n"
        "    action: {action.joints: {source_column: action, start: 0, end: 7}}\n"
        "    unified_mapping: {state.joints: [50, 57], action.joints: [50, 57]}\n"
        "    action_normalization_modes: {action.joints: q99}\n"
    )
    py_file = tmp_path / "my_robot.py"
    py_file.write_text(
        "from beingh.data.embodiment import BaseDataConfig, ModalityDef, register_data_config\n"
        "class MyRobot(BaseDataConfig):\n"
        "    STATE_KEYS = ['state.arm']\n"
        "    ACTION_KEYS = ['action.arm']\n"
        "    UNIFIED_MAPPING = {'state.arm': (50, 57), 'action.arm': (50, 57)}\n"
        "    def define_modalities(self):\n"
        "        return {'state.arm': ModalityDef('observation.state', 0, 7),\n"
        "                'action.arm': ModalityDef('action', 0, 7, absolute=False)}\n"
        "register_data_config('py_robot', MyRobot)\n"
    )
    monkeypatch.setenv(emb.CONFIGS_ENV, f"{yaml_file}{os.pathsep}{py_file}")
    monkeypatch.setattr(emb, "_env_loaded", False)
    monkeypatch.setattr(emb, "DATA_CONFIG_MAP", dict(emb.DATA_CONFIG_MAP))
    yaml_config = get_data_config("yaml_robot")()
    assert yaml_config.normalization_mode("action.joints") == "q99"
    assert yaml_config.VIDEO_KEYS == ["video.front"]
    assert yaml_config.modality("language.instruction").source_column == "task_index"
    py_config = get_data_config("py_robot")(embodiment_tag="libero")
    assert py_config.modality("action.arm").absolute is False
    clone = pickle.loads(pickle.dumps(py_config))  # via the registry
    assert type(clone) is type(py_config) and clone.embodiment_tag == "libero"

    monkeypatch.setenv(emb.CONFIGS_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="missing.yaml"):
        emb.load_env_data_configs(force=True)
    with pytest.raises(ValueError, match="top-level 'data_configs'"):
        (tmp_path / "empty.yaml").write_text("robots: {}\n")
        load_data_config_file(tmp_path / "empty.yaml")


def test_embodiment_ids_use_the_tag_string():
    assert embodiment_id("libero") == 0 and embodiment_id("libero_franka_gripper") == 0
    assert embodiment_id("robocasa") == 1 and embodiment_id("metaworld") == 2
    assert embodiment_id("new_embodiment") == 31
    assert embodiment_id("my_brand_new_arm") == 31
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        emb.register_embodiment_tag("x", 40)


def test_yaml_configs_pickle_for_spawned_workers():
    config = data_config_from_dict("spawned", _spec())(embodiment_tag="metaworld", max_view_num=1)
    clone = pickle.loads(pickle.dumps(config))
    assert type(clone).__name__ == "SpawnedDataConfig"
    assert clone.modalities == config.modalities and clone.embodiment_tag == "metaworld"
    assert clone.max_view_num == 1 and clone.UNIFIED_MAPPING == config.UNIFIED_MAPPING
    builtin = pickle.loads(pickle.dumps(get_data_config("libero_nonorm")(embodiment_tag="libero")))
    assert type(builtin) is get_data_config("libero_nonorm") and builtin.embodiment_tag == "libero"
