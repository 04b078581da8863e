"""LIBERO / RoboCasa client mappings (no simulator needed) and the eval CLI's argument handling."""

from __future__ import annotations

import numpy as np
import pytest

from beingh.data.embodiment import get_data_config
from beingh.eval.libero_client import (
    libero_chunk,
    libero_columns,
    libero_env_actions,
    libero_policy_observation,
    robosuite_quat2axisangle,
)
from beingh.eval.libero_env import suite_name
from beingh.eval.robocasa_client import robocasa_chunk, robocasa_columns, robocasa_policy_observation


def _libero_raw(rng):
    return {
        "robot0_eef_pos": np.array([0.1, -0.2, 0.9]),
        "robot0_eef_quat": np.array([0.0, 0.0, np.sin(0.3), np.cos(0.3)]),  # 0.6 rad about z (xyzw)
        "robot0_gripper_qpos": np.array([0.03, -0.03]),
        "agentview_image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
        "robot0_eye_in_hand_image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
    }


def test_robosuite_quat2axisangle_matches_robosuite_convention():
    np.testing.assert_allclose(robosuite_quat2axisangle([0.0, 0.0, np.sin(0.3), np.cos(0.3)]), [0, 0, 0.6])
    np.testing.assert_allclose(robosuite_quat2axisangle([0, 0, 0, 1.0]), np.zeros(3))
    # w < 0: robosuite returns the long way round (angle > pi), unlike a canonical [0, pi] conversion
    angle = 2 * np.arccos(-0.5)
    np.testing.assert_allclose(robosuite_quat2axisangle([np.sqrt(0.75), 0, 0, -0.5]), [angle, 0, 0])


def test_libero_observation_mapping():
    rng = np.random.default_rng(0)
    raw = _libero_raw(rng)
    columns, images = libero_columns(raw)
    np.testing.assert_allclose(columns["observation.state"], [0.1, -0.2, 0.9, 0, 0, 0.6, 0.03, -0.03], atol=1e-12)
    np.testing.assert_array_equal(images["observation.images.image"], raw["agentview_image"][::-1, ::-1])
    np.testing.assert_array_equal(images["observation.images.wrist_image"], raw["robot0_eye_in_hand_image"][::-1, ::-1])
    config = get_data_config("libero_nonorm")(embodiment_tag="libero")
    obs = libero_policy_observation(raw, config, "put the bowl on the plate")
    assert obs["language.instruction"] == "put the bowl on the plate"
    np.testing.assert_allclose(obs["state.eef_position"], [0.1, -0.2, 0.9])
    np.testing.assert_allclose(obs["state.eef_rotation"], [0, 0, 0.6], atol=1e-6)
    np.testing.assert_allclose(obs["state.libero_gripper_position"], [0.03, -0.03])
    np.testing.assert_array_equal(obs["video.top_view"], raw["agentview_image"][::-1, ::-1])
    np.testing.assert_array_equal(obs["video.wrist_view"], raw["robot0_eye_in_hand_image"][::-1, ::-1])


def test_libero_action_mapping_binarizes_gripper():
    config = get_data_config("libero_nonorm")(embodiment_tag="libero")
    horizon = 16  # no hard-coded chunk length anywhere
    pos, rot = np.full((horizon, 3), 0.1), np.full((horizon, 3), -0.2)
    gripper = np.linspace(-0.2, 1.2, horizon)[:, None]
    actions = libero_chunk(config, {"action.eef_position": pos, "action.eef_rotation": rot,
                                    "action.gripper_position": gripper})
    assert actions.shape == (horizon, 7)
    np.testing.assert_allclose(actions[:, :3], pos)
    np.testing.assert_allclose(actions[:, 3:6], rot)
    expected = np.where(-2 * gripper[:, 0] + 1 > 0, 1.0, -1.0)  # g -> -2g + 1, then sign
    np.testing.assert_array_equal(actions[:, 6], expected)
    assert set(np.unique(actions[:, 6])) == {-1.0, 1.0}
    with pytest.raises(ValueError, match=r"\(T, 7\)"):
        libero_env_actions(np.zeros((16, 6)))
    with pytest.raises(KeyError, match="action.gripper_position"):
        libero_chunk(config, {"action.eef_position": pos, "action.eef_rotation": rot})


def test_suite_names_and_budgets():
    assert suite_name("spatial") == "libero_spatial" and suite_name("libero_10") == "libero_10"
    with pytest.raises(ValueError, match="--suite"):
        suite_name("kitchen")


def test_robocasa_mappings():
    rng = np.random.default_rng(1)
    quat = np.array([0.0, np.sin(0.25), 0.0, np.cos(0.25)])  # 0.5 rad about y (xyzw)
    raw = {
        "robot0_base_to_eef_pos": np.array([0.5, 0.0, 0.3]),
        "robot0_base_to_eef_quat": quat,
        "robot0_gripper_qpos": np.array([0.02, -0.02]),
        "robot0_base_pos": np.array([1.0, 2.0, 0.0]),
        "robot0_base_quat": np.array([0.0, 0.0, 0.0, 1.0]),
        **{k: rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
           for k in ("robot0_agentview_left_image", "robot0_agentview_right_image", "robot0_eye_in_hand_image")},
    }
    columns, images = robocasa_columns(raw)
    np.testing.assert_allclose(columns["world_abs_state"], [0.5, 0, 0.3, 0, 0.5, 0, 0.02, -0.02], atol=1e-9)
    np.testing.assert_allclose(columns["observation.state"], [1, 2, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(images["observation.images.left_view"], raw["robot0_agentview_left_image"][::-1])
    config = get_data_config("robocasa_human")(embodiment_tag="robocasa")
    obs = robocasa_policy_observation(raw, config, "open the drawer")
    assert {"video.left_view", "video.right_view", "video.wrist_view", "state.eef_position", "state.eef_rotation",
            "state.gripper_qpos", "state.base_position", "state.base_rotation"} <= set(obs)
    np.testing.assert_allclose(obs["state.eef_rotation"], [0, 0.5, 0], atol=1e-6)
    np.testing.assert_array_equal(obs["video.wrist_view"], raw["robot0_eye_in_hand_image"][::-1])

    horizon = 16
    reply = {
        "action.eef_position": np.full((horizon, 3), 0.1), "action.eef_rotation": np.full((horizon, 3), 0.2),
        "action.gripper_position": np.tile([[0.0], [1.0]], (horizon // 2, 1)),
        "action.base_motion": np.full((horizon, 4), 0.3), "action.control_mode": np.tile([[1.0], [0.0]], (horizon // 2, 1)),
    }
    actions = robocasa_chunk(config, reply)
    assert actions.shape == (horizon, 12)
    np.testing.assert_allclose(actions[:, :3], 0.1)
    np.testing.assert_allclose(actions[:, 3:6], 0.2)
    np.testing.assert_array_equal(actions[:, 6], np.tile([1.0, -1.0], horizon // 2))  # 1 - 2g
    np.testing.assert_allclose(actions[:, 7:11], 0.3)
    np.testing.assert_array_equal(actions[:, 11], np.tile([1.0, -1.0], horizon // 2))  # 2c - 1


def test_eval_cli_requires_env_and_names_missing_simulator(capsys, monkeypatch):
    import builtins

    from beingh.eval import cli

    with pytest.raises(SystemExit):
        cli.main(["--policy", "ws://localhost:1"])
    assert "--env is required" in capsys.readouterr().err
    real_import = builtins.__import__

    def no_libero(name, *args, **kwargs):
        if name.startswith("libero"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_libero)
    with pytest.raises(SystemExit, match="setup_libero.sh"):
        cli.main(["--env", "libero", "--policy", "ws://localhost:1"])


def test_training_group_from_checkpoint(tmp_path):
    from beingh.eval.policy_loader import training_group

    (tmp_path / "experiment_cfg").mkdir()
    with pytest.raises(ValueError, match="--dataset_name"):
        training_group(tmp_path)
    (tmp_path / "experiment_cfg" / "metaworld_demo_metadata.json").write_text("{}")
    assert training_group(tmp_path) == "metaworld_demo"
