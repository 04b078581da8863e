"""BeingHPolicy input/output against the training pipeline: the pack it builds equals the training
pack (eval image transform, same prompt layout, same state transform), the selected metadata variant
normalizes the state and unnormalizes the actions, state-relative actions come back absolute and a
`binary` gripper comes back binarized."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from beingh.data.embodiment import BaseDataConfig, ModalityDef, get_data_config, register_data_config
from beingh.data.image import build_image_transform
from beingh.data.lerobot import LeRobotDataset
from beingh.data.metadata import MetadataSource, build_dataset_metadata, load_metadata, write_group_metadata
from beingh.data.packing import pack_samples
from beingh.data.prompt import PromptBuilder
from beingh.data.sample import RobotSample
from beingh.data.stats import compute_dataset_stats
from beingh.data.tokenizer import build_tiny_tokenizer, load_tokenizer
from beingh.data.transforms import EmbodimentTransform
from beingh.inference.policy import BeingHPolicy
from beingh.inference.rtc import GUIDANCE_FREE, TRAINED_RTC
from beingh.model.beingh import BeingH
from beingh.model.tiny import tiny_config
from tests.conftest import LEROBOT_FIXTURES, TINY_CHECKPOINT
from tests.test_inference_policy import DATASET, make_policy, noise, observation, write_checkpoint

T = 16
RELATIVE_CONFIG = "inference_test_relative_gripper"


class RelativeGripperConfig(BaseDataConfig):
    """Fixture robot whose eef action is an absolute target learned relative to the state, with a
    min_max-normalized gripper state and a 0/1 gripper action normalized `binary`."""

    VIDEO_KEYS = ["video.corner"]
    VIDEO_SOURCE_COLUMNS = {"video.corner": "observation.images.corner"}
    STATE_KEYS = ["state.eef_position", "state.gripper"]
    ACTION_KEYS = ["action.eef_position", "action.gripper"]
    UNIFIED_MAPPING = {"state.eef_position": (0, 3), "state.gripper": (18, 19),
                       "action.eef_position": (0, 3), "action.gripper": (18, 19)}
    MODALITIES = {
        "language.instruction": ModalityDef("task_index"),
        "state.eef_position": ModalityDef("observation.state", 0, 3),
        "state.gripper": ModalityDef("observation.state", 3, 4),
        "action.eef_position": ModalityDef("action", 0, 3),
        "action.gripper": ModalityDef("action", 3, 4, continuous=False),
    }
    ACTION_RELATIVE_TO_STATE = {"action.eef_position": "state.eef_position"}
    state_normalization_modes = {"state.gripper": "min_max"}
    action_normalization_modes = {"action.gripper": "binary"}


register_data_config(RELATIVE_CONFIG, RelativeGripperConfig)


@pytest.fixture(scope="module")
def relative_checkpoint(tmp_path_factory):
    """Checkpoint whose group has two task variants with different gripper-state statistics."""
    root = tmp_path_factory.mktemp("relative_ckpt")
    torch.manual_seed(0)
    BeingH(tiny_config()).save_pretrained(root)
    build_tiny_tokenizer(root)
    dataset = LeRobotDataset(LEROBOT_FIXTURES / "v30_h264")
    data_config = RelativeGripperConfig(embodiment_tag="metaworld")
    stats = compute_dataset_stats(dataset, cache_dir=root / "stats_cache", columns=data_config.source_columns())
    task_a = build_dataset_metadata(dataset, data_config, stats)
    task_b = dataclasses.replace(task_a, statistics={**task_a.statistics, "state": dict(task_a.statistics["state"])})
    gripper = task_a.statistics["state"]["gripper"]
    task_b.statistics["state"]["gripper"] = dataclasses.replace(gripper, min=gripper.min - 1.0, max=gripper.max + 3.0)
    sources = [MetadataSource("task_a", task_a, dataset.num_frames), MetadataSource("task_b", task_b, dataset.num_frames)]
    write_group_metadata(root / "experiment_cfg", DATASET, sources, stats_level="task")
    return root


def relative_policy(root, **kwargs) -> BeingHPolicy:
    return make_policy(root, data_config_name=RELATIVE_CONFIG, **kwargs)


@pytest.fixture(scope="module")
def metaworld_checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("metaworld_ckpt"))


def test_pack_equals_training_pipeline_with_eval_image_transform(metaworld_checkpoint):
    policy = make_policy(metaworld_checkpoint, enable_rtc=False)
    obs = observation(0)  # 64 x 80 image: exercises the resize + center crop
    batch, raw_state = policy.build_batch(obs)

    size = policy.model.config.force_image_size
    pixels = build_image_transform(size, train=False)(obs["video.corner"])[None]
    torch.testing.assert_close(batch.pixel_values, pixels, rtol=0, atol=0)

    data_config = get_data_config("metaworld")(embodiment_tag="metaworld")
    metadata = load_metadata(metaworld_checkpoint / "experiment_cfg", DATASET)
    state = EmbodimentTransform(data_config, metadata).state_to_unified(raw_state)
    sample = RobotSample(images=[obs["video.corner"]], state=state, action=np.zeros((T, 200), np.float32),
                         action_mask=np.zeros((T, 200), bool), instruction=obs["language.instruction"],
                         embodiment_id=policy.embodiment_id)
    builder = PromptBuilder(load_tokenizer(metaworld_checkpoint), policy.model.config.tokens_per_image, T)
    expected = pack_samples([builder.tokenize(sample, pixels)])
    for field in dataclasses.fields(expected):
        got, want = getattr(batch, field.name), getattr(expected, field.name)
        if isinstance(want, torch.Tensor):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=field.name)
        else:
            assert got == want, field.name


def test_static_layout_is_built_once_per_instruction(metaworld_checkpoint):
    policy = make_policy(metaworld_checkpoint, enable_rtc=False)
    first, _ = policy.build_batch(observation(1))
    second, _ = policy.build_batch(observation(2))
    assert second.input_ids is first.input_ids and second.action_indexes is first.action_indexes
    assert not torch.equal(second.pixel_values, first.pixel_values)
    other, _ = policy.build_batch({**observation(1), "language.instruction": "open the drawer"})
    assert other.num_tokens != first.num_tokens
    assert policy.get_action(observation(1), noise=noise(0))["action.gripper"].shape == (T, 1)


def test_relative_actions_become_absolute_and_gripper_is_binarized(relative_checkpoint):
    policy = relative_policy(relative_checkpoint, metadata_variant="task_a")
    obs = observation(3)
    out = policy.get_action(obs, noise=noise(3))
    unified = out["action_unified"]
    np.testing.assert_allclose(out["action.eef_position"], obs["state.eef_position"][None] + unified[:, 0:3],
                               rtol=1e-6, atol=1e-6)
    gripper = out["action.gripper"][:, 0]
    assert set(np.unique(gripper)) <= {0.0, 1.0}  # the fixture gripper action is 0/1
    np.testing.assert_array_equal(gripper, (unified[:, 18] > 0.5).astype(np.float32))


def test_metadata_variant_selects_the_statistics(relative_checkpoint):
    obs = observation(4)
    gripper = float(obs["state.gripper"][0])
    states = {}
    for variant in ("task_a", "task_b"):
        policy = relative_policy(relative_checkpoint, metadata_variant=variant, enable_rtc=False)
        stats = policy.dataset_metadata.stats_for("state.gripper")
        expected = 2 * (gripper - stats.min[0]) / (stats.max[0] - stats.min[0]) - 1
        states[variant] = float(policy.build_batch(obs)[0].state[0, 18])
        assert states[variant] == pytest.approx(expected, rel=1e-5)
    assert states["task_a"] != pytest.approx(states["task_b"])

    def gripper_bounds(**kwargs) -> tuple[float, float]:
        stats = relative_policy(relative_checkpoint, enable_rtc=False, **kwargs).dataset_metadata.stats_for(
            "state.gripper")
        return float(stats.min[0]), float(stats.max[0])

    task_a, task_b = gripper_bounds(metadata_variant="task_a"), gripper_bounds(metadata_variant="task_b")
    assert gripper_bounds() == task_a  # auto: the variant training normalized the first dataset with
    assert gripper_bounds(stats_selection_mode="task") == task_a
    assert gripper_bounds(stats_selection_mode="embodiment") == (min(task_a[0], task_b[0]), max(task_a[1], task_b[1]))
    with pytest.raises(ValueError, match=r"no variant 'task_c'; available: .*'task_a', 'task_b'"):
        relative_policy(relative_checkpoint, metadata_variant="task_c")


def test_guidance_free_rtc_mode_is_logged(metaworld_checkpoint, caplog):
    with caplog.at_level(logging.INFO, logger="beingh.inference.policy"):
        policy = make_policy(metaworld_checkpoint)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("RTC:")]
    assert lines == [f"RTC: {GUIDANCE_FREE} (checkpoint trained without training-time RTC)"]
    assert policy.rtc_mode == GUIDANCE_FREE


def test_release_format_checkpoint_with_mpg_and_trained_rtc(metaworld_checkpoint, tmp_path, caplog):
    """The original's tiny release folder (MPG on, training-time RTC on) served as released: weights and
    config.json as the original wrote them, tokenizer and `<group>_metadata.json` in the root."""
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((TINY_CHECKPOINT / name).read_bytes())
    build_tiny_tokenizer(tmp_path)
    meta = metaworld_checkpoint / "experiment_cfg" / f"{DATASET}_metadata.json"
    (tmp_path / meta.name).write_bytes(meta.read_bytes())
    with caplog.at_level(logging.INFO, logger="beingh.inference.policy"):
        policy = make_policy(tmp_path, rtc_inference_delay=2)
    assert policy.model.config.mpg_active
    # Written by the original: its MPG semantics, and prefix locking as its policy did (the file says False).
    assert policy.model.config.mpg_semantics == "original" and policy.prefix_locking
    assert make_policy(tmp_path, mpg_semantics="fixed").model.config.mpg_semantics == "fixed"
    assert any(TRAINED_RTC in r.getMessage() for r in caplog.records)
    first = policy.get_action(observation(5), noise=noise(5))
    second = policy.get_action(observation(6), executed_steps=3, noise=noise(6))
    assert first["action.eef_position"].shape == (T, 3) and np.all(np.isfinite(first["action_unified"]))
    np.testing.assert_array_equal(second["action_unified"][:2], first["action_unified"][3:5])
