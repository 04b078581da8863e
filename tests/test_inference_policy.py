"""BeingHPolicy on a tiny "trained" checkpoint (real model, tokenizer, metadata written by the data code):
I/O shapes and ranges, prefix cache == full recompute, RTC prefix kept across calls, server round trip."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import numpy as np
import pytest
import torch

from beingh.data.embodiment import get_data_config
from beingh.data.lerobot import LeRobotDataset
from beingh.data.metadata import (
    DatasetMetadata,
    MetadataSource,
    VideoMeta,
    build_dataset_metadata,
    write_group_metadata,
)
from beingh.data.stats import compute_dataset_stats
from beingh.data.tokenizer import build_tiny_tokenizer
from beingh.inference.cli import load_observation
from beingh.inference.cli import main as infer_main
from beingh.inference.client import PolicyClient, PolicyServerError
from beingh.inference.policy import BeingHPolicy
from beingh.inference.protocol import ObservationError
from beingh.inference.rtc import GUIDANCE_FREE, TRAINED_RTC
from beingh.inference.server import PolicyServer
from beingh.model.beingh import BeingH
from beingh.model.tiny import tiny_config
from tests.conftest import LEROBOT_FIXTURES

DATASET = "fixture_group"
CONFIG = "metaworld"  # 1 view; state = observation.state[0:4], action = action[0:4] of the fixture
T = 16


def write_checkpoint(root, **config_overrides):
    torch.manual_seed(0)
    BeingH(tiny_config(**config_overrides)).save_pretrained(root)
    build_tiny_tokenizer(root)
    dataset = LeRobotDataset(LEROBOT_FIXTURES / "v30_h264")
    data_config = get_data_config(CONFIG)(embodiment_tag="metaworld")
    stats = compute_dataset_stats(dataset, cache_dir=root / "stats_cache", columns=data_config.source_columns())
    source = MetadataSource("fixture", build_dataset_metadata(dataset, data_config, stats), dataset.num_frames)
    write_group_metadata(root / "experiment_cfg", DATASET, [source])
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def policy(checkpoint):
    return make_policy(checkpoint, rtc_inference_delay=3)


def make_policy(path, **kwargs):
    args = dict(model_path=path, data_config_name=CONFIG, dataset_name=DATASET, embodiment_tag="metaworld",
                instruction_template="long", device="cpu")
    return BeingHPolicy(**{**args, **kwargs})


def observation(seed: int = 0, batched: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    obs = {
        "video.corner": image[None] if batched else image,
        "state.eef_position": rng.uniform(-0.2, 0.2, (1, 3) if batched else 3),
        "state.gripper": rng.uniform(0, 1, (1, 1) if batched else 1),
        "language.instruction": ["push the puck to the goal"] if batched else "push the puck to the goal",
    }
    return obs


def noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((T, 200)).astype(np.float32)


def test_get_action_keys_shapes_and_unnormalized_ranges(policy):
    out = policy.get_action(observation(), noise=noise(0))
    assert set(out) == {"action.eef_position", "action.gripper", "action_unified"}
    assert out["action.eef_position"].shape == (T, 3) and out["action.gripper"].shape == (T, 1)
    assert out["action_unified"].shape == (T, 200)
    for value in out.values():
        assert value.dtype == np.float32 and np.all(np.isfinite(value))
    # metaworld actions use normalization "none": the raw action equals the unified slot.
    np.testing.assert_allclose(out["action.eef_position"], out["action_unified"][:, 0:3], rtol=1e-6)
    np.testing.assert_allclose(out["action.gripper"], out["action_unified"][:, 18:19], rtol=1e-6)


def test_batched_input_equals_unbatched(policy):
    policy.reset()
    a = policy.get_action(observation(1), noise=noise(1))
    b = policy.get_action(observation(1, batched=True), noise=noise(1))
    np.testing.assert_allclose(a["action_unified"], b["action_unified"], atol=1e-6)


def test_prefix_cache_matches_full_recompute(checkpoint):
    cached = make_policy(checkpoint, enable_rtc=False)
    uncached = make_policy(checkpoint, enable_rtc=False, use_prefix_cache=False)
    a = cached.get_action(observation(2), noise=noise(2))
    b = uncached.get_action(observation(2), noise=noise(2))
    assert "action_unified" not in a
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_same_noise_same_result_and_noise_matters(policy):
    policy.reset()
    a = policy.get_action(observation(3), noise=noise(3))
    b = policy.get_action(observation(3), noise=noise(3))
    c = policy.get_action(observation(3), noise=noise(4))
    np.testing.assert_array_equal(a["action_unified"], b["action_unified"])
    assert not np.allclose(a["action_unified"], c["action_unified"])


def test_rtc_prefix_is_preserved_across_calls(policy):
    policy.reset()
    first = policy.get_action(observation(4), noise=noise(5))["action_unified"]
    second = policy.get_action(observation(5), executed_steps=5, noise=noise(6))["action_unified"]
    np.testing.assert_array_equal(second[:3], first[5:8])  # declared delay 3, shifted by 5 executed
    assert not np.allclose(second[3:8], first[8:13])
    policy.advance(2)
    third = policy.get_action(observation(6), inference_delay=4, noise=noise(7))["action_unified"]
    np.testing.assert_array_equal(third[:4], second[2:6])
    # without an executed-steps report nothing is locked: same result as a fresh policy state
    fourth = policy.get_action(observation(6), noise=noise(7))["action_unified"]
    policy.reset()
    fresh = policy.get_action(observation(6), noise=noise(7))["action_unified"]
    np.testing.assert_array_equal(fourth, fresh)


def test_stateless_prev_chunk_from_the_observation(policy):
    prev = noise(8)[:6]
    obs = {**observation(7), "prev_chunk": prev, "inference_delay": 2}
    out = policy.get_action(obs, noise=noise(9))["action_unified"]
    np.testing.assert_array_equal(out[:2], prev[:2])


def test_enable_rtc_false_locks_nothing(checkpoint):
    policy = make_policy(checkpoint, enable_rtc=False)
    free = policy.get_action(observation(8), noise=noise(10))
    again = policy.get_action({**observation(8), "prev_chunk": noise(11), "inference_delay": 3},
                              executed_steps=2, noise=noise(10))
    np.testing.assert_array_equal(free["action.eef_position"], again["action.eef_position"])


def test_checkpoint_without_prefix_overwrite_locks_nothing_unless_asked(tmp_path):
    """`use_inference_prefix_overwrite` saved as False turns prefix locking off (it used to be ignored)."""
    root = write_checkpoint(tmp_path / "no_lock", use_inference_prefix_overwrite=False)
    policy = make_policy(root)
    assert not policy.prefix_locking and policy.rtc_mode == "off"
    prev = noise(12)[:6]
    out = policy.get_action({**observation(9), "prev_chunk": prev, "inference_delay": 2}, noise=noise(13))
    free = policy.get_action(observation(9), noise=noise(13))
    np.testing.assert_array_equal(out["action_unified"], free["action_unified"])
    assert not np.allclose(out["action_unified"][:2], prev[:2])
    asked = make_policy(root, use_inference_prefix_overwrite=True)
    locked = asked.get_action({**observation(9), "prev_chunk": prev, "inference_delay": 2}, noise=noise(13))
    np.testing.assert_array_equal(locked["action_unified"][:2], prev[:2])


def test_rtc_mode_is_logged_once(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="beingh.inference.policy"):
        make_policy(write_checkpoint(tmp_path / "rtc", use_training_time_rtc=True, simulated_delay=4))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("RTC:")]
    assert len(lines) == 1 and TRAINED_RTC in lines[0]


def test_guidance_free_mode_for_checkpoints_without_training_rtc(policy):
    assert policy.rtc_mode == GUIDANCE_FREE and policy.metadata["rtc_mode"] == GUIDANCE_FREE


def test_measured_delay_defaults_to_dataset_fps(checkpoint):
    policy = make_policy(checkpoint)
    assert policy.control_hz == 20.0  # fixture dataset fps
    policy.get_action(observation(9), noise=noise(12))
    assert policy.rtc.delay_steps() >= 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"video.corner": None}, "missing image 'video.corner'"),
        ({"video.corner": np.zeros((8, 8), dtype=np.uint8)}, r"video.corner must be \(H, W, 3\) uint8"),
        ({"video.corner": np.zeros((8, 8, 3), dtype=np.float32)}, "uint8"),
        ({"state.gripper": None}, "missing state 'state.gripper'"),
        ({"state.eef_position": np.zeros(5)}, "expected 3 values"),
        ({"state.eef_position": np.array([np.nan, 0, 0])}, "finite"),
        ({"language.instruction": ""}, "language.instruction"),
        ({"language.instruction": None}, "language.instruction"),
        ({"inference_delay": -1, "prev_chunk": np.zeros((4, 200))}, "inference_delay"),
        ({"prev_chunk": np.zeros((4, 7)), "inference_delay": 2}, "prev_chunk must have shape"),
        ({"executed_steps": 1.5}, "executed_steps must be a non-negative int"),
    ],
)
def test_bad_observations_raise_observation_error(policy, change, message):
    obs = observation()
    for key, value in change.items():
        if value is None:
            obs.pop(key)
        else:
            obs[key] = value
    with pytest.raises(ObservationError, match=message):
        policy.get_action(obs)


def _two_view_checkpoint(root):
    """A LIBERO-shaped checkpoint (2 views, no statistics needed) for prompt-layout comparisons."""
    torch.manual_seed(0)
    BeingH(tiny_config()).save_pretrained(root)
    build_tiny_tokenizer(root)
    videos = {name: VideoMeta((64, 64), 3, 20.0) for name in ("top_view", "wrist_view")}
    metadata = DatasetMetadata({"state": {}, "action": {}}, {"video": videos}, "libero")
    write_group_metadata(root / "experiment_cfg", "bench", [MetadataSource("bench", metadata, 1)])
    return root


def _libero_observation(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "video.top_view": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "video.wrist_view": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "state.eef_position": rng.uniform(-0.5, 0.5, 3),
        "state.eef_rotation": rng.uniform(-1.0, 1.0, 3),
        "state.libero_gripper_position": rng.uniform(0.0, 0.04, 2),
        "language.instruction": "put the bowl on the plate",
    }


def test_single_image_block_layout_reproduces_the_original_server_prompt(tmp_path):
    root = _two_view_checkpoint(tmp_path / "two_views")
    args = dict(model_path=root, data_config_name="libero_nonorm", dataset_name="bench", embodiment_tag="libero",
                instruction_template="long", device="cpu", enable_rtc=False)
    per_view, single = BeingHPolicy(**args), BeingHPolicy(**args, image_block_layout="single")
    obs = _libero_observation(0)
    img_start = per_view.prompt_builder.ids.img_start
    per_view_batch, _ = per_view.build_batch(obs)
    single_batch, _ = single.build_batch(obs)
    assert int((per_view_batch.input_ids == img_start).sum()) == 2
    assert int((single_batch.input_ids == img_start).sum()) == 1
    assert single_batch.num_tokens == per_view_batch.num_tokens - 2
    torch.testing.assert_close(single_batch.pixel_values, per_view_batch.pixel_values)
    a = per_view.get_action(obs, noise=noise(1))["action.eef_position"]
    b = single.get_action(obs, noise=noise(1))["action.eef_position"]
    assert not np.allclose(a, b)
    assert single.metadata["image_block_layout"] == "single"


def test_policy_overrides_mpg_semantics_and_dtype(tmp_path):
    root = write_checkpoint(tmp_path / "mpg", use_mpg=True, mpg_lambda=0.5, mpg_semantics="fixed")
    fixed = make_policy(root, enable_rtc=False)
    original = make_policy(root, enable_rtc=False, mpg_semantics="original", mpg_seed=4)
    assert fixed.model.config.mpg_semantics == "fixed" and original.model.config.mpg_semantics == "original"
    assert original.metadata["mpg_semantics"] == "original"
    passes = np.stack([noise(2), noise(3)])  # one starting noise per sampling pass
    first = original.get_action(observation(1), noise=passes)["action.eef_position"]
    np.testing.assert_array_equal(first, original.get_action(observation(1), noise=passes)["action.eef_position"])
    assert not np.allclose(first, fixed.get_action(observation(1), noise=passes)["action.eef_position"])
    half = make_policy(root, enable_rtc=False, dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert np.all(np.isfinite(half.get_action(observation(1))["action.eef_position"]))
    with pytest.raises(ValueError, match="dtype must be"):
        make_policy(root, dtype="int8")


def test_constructor_errors_name_the_problem(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="no variant 'nope'; available"):
        make_policy(checkpoint, metadata_variant="nope")
    with pytest.raises(FileNotFoundError, match="no metadata for 'other'"):
        make_policy(checkpoint, dataset_name="other")
    with pytest.raises(ValueError, match="unknown data config"):
        make_policy(checkpoint, data_config_name="nope")
    with pytest.raises(ValueError, match="no mpg"):
        make_policy(checkpoint, use_mpg=True, mpg_lambda=0.5)
    with pytest.raises(FileNotFoundError, match="model_path"):
        make_policy(tmp_path / "missing")
    with pytest.raises(ValueError, match="computed with data config 'metaworld'.*Pass 'metaworld'"):
        make_policy(checkpoint, data_config_name="metaworld_goal")


def test_metadata_in_checkpoint_root_is_found(checkpoint, tmp_path):
    root = tmp_path / "release_layout"
    root.mkdir()
    for item in checkpoint.iterdir():
        if item.is_file():
            (root / item.name).write_bytes(item.read_bytes())
    meta = checkpoint / "experiment_cfg" / f"{DATASET}_metadata.json"
    (root / meta.name).write_bytes(meta.read_bytes())
    assert make_policy(root).get_action(observation(), noise=noise(0))["action.gripper"].shape == (T, 1)


def test_served_policy_roundtrip_with_per_connection_rtc(policy):
    policy.reset()
    loop = asyncio.new_event_loop()
    server = PolicyServer(policy, "127.0.0.1", 0)
    port = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with PolicyClient(port=port, timeout=60) as client:
            assert client.metadata["action_keys"] == ["action.eef_position", "action.gripper"]
            assert client.metadata["chunk_length"] == T
            first = client.get_action(observation(10))
            assert first["action.eef_position"].shape == (T, 3) and first["server_timing"]["infer_ms"] > 0
            second = client.get_action(observation(11), executed_steps=4)
            np.testing.assert_array_equal(second["action_unified"][:3], first["action_unified"][4:7])
            with pytest.raises(PolicyServerError, match="bad observation: missing image"):
                client.get_action({"state.eef_position": np.zeros(3)})
            assert client.get_action(observation(12))["action.gripper"].shape == (T, 1)
        assert policy.rtc.last_chunk is None  # the server used its own per-connection history
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_infer_cli_npz_and_json(checkpoint, tmp_path, capsys):
    obs = observation(13)
    npz = tmp_path / "obs.npz"
    np.savez(npz, **{k: np.asarray(v) for k, v in obs.items()})
    loaded = load_observation(npz)
    assert loaded["language.instruction"] == obs["language.instruction"]
    args = ["--model_path", str(checkpoint), "--data_config_name", CONFIG, "--dataset_name", DATASET,
            "--embodiment_tag", "metaworld", "--device", "cpu", "--no-enable_rtc"]
    out_file = tmp_path / "out.json"
    assert infer_main([*args, "--observation", str(npz), "--output", str(out_file)]) == 0
    result = json.loads(out_file.read_text())
    assert np.asarray(result["action.eef_position"]).shape == (T, 3)
    assert json.loads(capsys.readouterr().out) == result

    from PIL import Image

    Image.fromarray(obs["video.corner"]).save(tmp_path / "corner.png")
    spec = {"video.corner": "corner.png", "state.eef_position": obs["state.eef_position"].tolist(),
            "state.gripper": obs["state.gripper"].tolist(), "language.instruction": "push the puck"}
    (tmp_path / "obs.json").write_text(json.dumps(spec))
    assert infer_main([*args, "--observation", str(tmp_path / "obs.json")]) == 0
    assert np.asarray(json.loads(capsys.readouterr().out)["action.gripper"]).shape == (T, 1)


def test_beingh_serve_subprocess(checkpoint):
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "beingh.cli", "serve", "--model_path", str(checkpoint), "--data_config_name",
           CONFIG, "--dataset_name", DATASET, "--embodiment_tag", "metaworld", "--device", "cpu",
           "--host", "127.0.0.1", "--port", str(port), "--rtc_inference_delay", "2"]
    proc = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        for line in proc.stderr:
            if "Server is ready" in line or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "server exited early"
        with PolicyClient(port=port, timeout=60) as client:
            assert client.metadata["rtc_mode"] == GUIDANCE_FREE
            first = client.get_action(observation(14))
            second = client.get_action(observation(15), executed_steps=1)
            np.testing.assert_array_equal(second["action_unified"][:2], first["action_unified"][1:3])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_latency_benchmark_tiny_prints_json(capsys):
    from benchmarks.policy_latency import main as bench_main

    assert bench_main(["--tiny", "--views", "1", "2", "--warmup", "1", "--iters", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu" and report["config"]["name"] == "tiny"
    cases = {(r["views"], r["prefix_cache"]) for r in report["results"]}
    assert cases == {(1, True), (1, False), (2, True), (2, False)}
    for result in report["results"]:
        for figure in ("get_action_ms", "model_ms", "build_batch_ms"):
            assert 0 < result[figure]["p50"] <= result[figure]["p95"]
