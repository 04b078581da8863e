"""The real LIBERO simulator, driven from its own venv (scripts/eval/setup_libero.sh; .ci/run creates it):

- on-demand camera rendering gives the images of an always-rendering env;
- a collected demo is a LeRobot v3.0 dataset that `libero_nonorm` reads, and its actions, passed through the
  client's action mapping, are exactly the actions the expert sent to `env.step`;
- `beingh serve` on a tiny checkpoint + the LIBERO client for a 20-step episode at 128 px: the server
  receives the env's observation as the original sends it (images rotated 180 degrees, state = eef position
  + axis-angle of the eef quaternion + gripper qpos) and its actions reach `env.step` in the original's
  gripper convention, 8 of every 16.

They skip only when the LIBERO venv does not exist, and never under CI (CI=true), where it must.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from beingh.inference.protocol import unpackb

REPO = Path(__file__).resolve().parents[1]
LIBERO_VENV = Path(os.environ.get("LIBERO_VENV", REPO / ".venv-libero"))
LIBERO_PYTHON = LIBERO_VENV / "bin" / "python"
SIDE = REPO / "tests" / "libero_side.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def libero_python() -> Path:
    if not LIBERO_PYTHON.exists():
        message = f"LIBERO venv {LIBERO_VENV} does not exist: run `bash scripts/eval/setup_libero.sh`"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must run it: .ci/run)")
        pytest.skip(message)
    return LIBERO_PYTHON


def run_libero_side(python: Path, *args: str, timeout: float = 900) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}
    result = subprocess.run([str(python), str(SIDE), *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"libero_side.py {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout


def test_setup_script_is_idempotent_and_the_venv_has_no_torch(libero_python):
    result = subprocess.run(["bash", str(REPO / "scripts/eval/setup_libero.sh"), str(LIBERO_VENV)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("setup_libero:")]
    assert not [line for line in lines if "installing" in line or "creating" in line or "writing" in line], lines
    assert any("LIBERO already installed" in line for line in lines)
    assert any(line.startswith("setup_libero: OK") for line in lines)  # its check asserts torch is absent
    assert (LIBERO_VENV / "libero-config" / "config.yaml").is_file()


def test_on_demand_rendering_equals_always_on(libero_python, tmp_path):
    out = run_libero_side(libero_python, "render-check", str(tmp_path / "render.npz"))
    assert "render-check OK" in out
    assert np.load(tmp_path / "render.npz")["checked_steps"].tolist() == [3, 7, 11]


def test_collected_demo_replays_through_the_client_mapping(libero_python, tmp_path):
    from beingh.data.embodiment import get_data_config
    from beingh.data.lerobot import LeRobotDataset
    from beingh.eval.libero_client import libero_env_actions, robosuite_quat2axisangle

    dataset_dir = tmp_path / "demos"
    run_libero_side(libero_python, "collect", str(dataset_dir), str(tmp_path / "steps.npz"))
    steps = np.load(tmp_path / "steps.npz")
    dataset = LeRobotDataset(dataset_dir)
    assert dataset.num_episodes == 1 and dataset.fps == 20
    assert list(dataset.tasks.values()) == [
        "pick up the black bowl between the plate and the ramekin and place it on the plate"]
    config = get_data_config("libero_nonorm")(embodiment_tag="libero")
    assert set(config.VIDEO_SOURCE_COLUMNS.values()) <= set(dataset.camera_keys)
    assert dataset.features["observation.images.image"]["shape"] == [128, 128, 3]
    length = dataset.num_frames
    stored_actions = dataset.read_rows(0, ["action"], np.arange(length))["action"]
    stored_states = dataset.read_rows(0, ["observation.state"], np.arange(length))["observation.state"]
    assert stored_actions.shape == (length, 7) and stored_states.shape == (length, 8)

    # The env received, for the kept attempt: the expert rollout (10 settle steps + N actions, cameras off),
    # then its replay (10 settle steps + N actions, cameras on); failed attempts, if any, came before.
    sent = steps["actions"]
    replayed = sent[-length:]
    np.testing.assert_array_equal(sent[-length - 10:-length, 6], -1.0)  # the replay's settle steps
    np.testing.assert_array_equal(libero_env_actions(stored_actions), replayed)
    rollout = sent[-2 * length - 10:-length - 10]
    np.testing.assert_array_equal(rollout, replayed)  # the replay repeats the physics rollout
    assert {-1.0, 1.0} <= set(replayed[:, 6])  # the episode opens and closes the gripper
    np.testing.assert_array_equal(stored_actions[:, 6], -replayed[:, 6])  # data: 1 = open, env: -1 = open

    # Frame t's state is the observation before action t: the last settle step's, then each replay step's.
    obs_index = np.arange(len(sent) - length - 1, len(sent) - 1)
    expected = np.concatenate([steps["robot0_eef_pos"][obs_index],
                               np.stack([robosuite_quat2axisangle(q) for q in steps["robot0_eef_quat"][obs_index]]),
                               steps["robot0_gripper_qpos"][obs_index]], axis=1)
    np.testing.assert_allclose(stored_states, expected.astype(np.float32), atol=1e-6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_libero_checkpoint(root: Path) -> Path:
    """A tiny random-weight checkpoint whose metadata comes from a small dataset in the LIBERO layout."""
    import torch

    from beingh.data.embodiment import get_data_config
    from beingh.data.lerobot import LeRobotDataset
    from beingh.data.lerobot_writer import LeRobotV3Writer
    from beingh.data.metadata import MetadataSource, build_dataset_metadata, write_group_metadata
    from beingh.data.stats import compute_dataset_stats
    from beingh.data.tokenizer import build_tiny_tokenizer
    from beingh.eval.libero_collect import libero_features
    from beingh.model.beingh import BeingH
    from beingh.model.tiny import tiny_config

    rng = np.random.default_rng(0)
    data_dir = root / "data"
    writer = LeRobotV3Writer(data_dir, 20, libero_features(32), "franka")
    for _ in range(2):
        for _ in range(20):
            frame = {"observation.images.image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                     "observation.images.wrist_image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                     "observation.state": rng.normal(size=8), "observation.environment_state": rng.normal(size=6),
                     "action": np.append(rng.uniform(-1, 1, 6), rng.choice([-1.0, 1.0]))}
            writer.add_frame(frame, task="put the bowl on the plate")
        writer.save_episode()
    writer.finalize()
    checkpoint = root / "checkpoint"
    torch.manual_seed(0)
    BeingH(tiny_config()).save_pretrained(checkpoint)
    build_tiny_tokenizer(checkpoint)
    dataset = LeRobotDataset(data_dir)
    config = get_data_config("libero_nonorm")(embodiment_tag="libero")
    stats = compute_dataset_stats(dataset, cache_dir=root / "stats", columns=config.source_columns())
    source = MetadataSource("libero_tiny", build_dataset_metadata(dataset, config, stats), dataset.num_frames)
    write_group_metadata(checkpoint / "experiment_cfg", "libero_tiny", [source])
    return checkpoint


class RecordingProxy:
    """Websocket relay between the LIBERO client and `beingh serve`: keeps every decoded request and reply."""

    def __init__(self, server_port: int):
        from websockets.sync.client import connect
        from websockets.sync.server import serve

        self.requests, self.replies = [], []

        def relay(client):
            with connect(f"ws://127.0.0.1:{server_port}", max_size=None, compression=None) as upstream:
                client.send(upstream.recv())  # the server's metadata
                for message in client:
                    upstream.send(message)
                    reply = upstream.recv()
                    self.requests.append(unpackb(message))
                    self.replies.append(unpackb(reply))
                    client.send(reply)

        self.server = serve(relay, "127.0.0.1", 0, max_size=None, compression=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


def _wait_for_server(proc: subprocess.Popen, port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"beingh serve exited: {proc.stderr.read()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("beingh serve did not start listening")


def test_served_policy_drives_the_real_simulator(libero_python, tmp_path):
    checkpoint = _write_libero_checkpoint(tmp_path)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "beingh.cli", "serve", "--model_path", str(checkpoint), "--data_config_name",
         "libero_nonorm", "--dataset_name", "libero_tiny", "--embodiment_tag", "libero", "--device", "cpu",
         "--no-enable_rtc", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proxy = None
    try:
        _wait_for_server(server, port)
        proxy = RecordingProxy(port)
        results = tmp_path / "results.json"
        out = run_libero_side(libero_python, "eval", str(tmp_path / "steps.npz"), "--", "--policy",
                              f"ws://127.0.0.1:{proxy.port}", "--suite", "libero_spatial", "--tasks", "0",
                              "--episodes", "1", "--max_steps", "20", "--resolution", "128", "--output",
                              str(results), "--video_dir", str(tmp_path / "videos"))
    finally:
        if proxy is not None:
            proxy.close()
        server.terminate()
        server.wait(timeout=30)
    assert "eval OK 0" in out
    steps = np.load(tmp_path / "steps.npz")
    actions = steps["actions"]
    assert len(actions) == 10 + 20  # settle steps, then the 20-step budget
    np.testing.assert_array_equal(actions[:10], np.tile([0, 0, 0, 0, 0, 0, -1.0], (10, 1)))
    assert proxy.requests[0] == {"endpoint": "reset"}  # each episode starts with a fresh server-side history
    queries = [(request, reply) for request, reply in zip(proxy.requests, proxy.replies, strict=True)
               if "endpoint" not in request]
    assert len(queries) == 3  # replan every 8 steps: before steps 0, 8 and 16
    assert list((tmp_path / "videos").glob("*.mp4"))
    report = json.loads(results.read_text())
    assert report["overall_success_rate"] in (0.0, 1.0) and report["data_config"] == "libero_nonorm"
    (task_report,) = report["tasks"].values()
    assert task_report["episodes"] == 1 and task_report["task_id"] == 0
    assert report["episodes"][0]["steps"] == 20 and report["episodes"][0]["policy_calls"] == 3

    rendered = steps["agentview_image_steps"].tolist()
    for k, (request, reply) in enumerate(queries):
        obs_step = 9 + 8 * k  # the observation returned by the env step just before the query
        assert obs_step in rendered
        image = steps["agentview_image"][rendered.index(obs_step)]
        wrist = steps["robot0_eye_in_hand_image"][steps["robot0_eye_in_hand_image_steps"].tolist().index(obs_step)]
        np.testing.assert_array_equal(request["video.top_view"], image[::-1, ::-1])
        np.testing.assert_array_equal(request["video.wrist_view"], wrist[::-1, ::-1])
        assert request["video.top_view"].shape == (128, 128, 3)
        np.testing.assert_allclose(request["state.eef_position"], steps["robot0_eef_pos"][obs_step], atol=1e-6)
        x, y, z, w = steps["robot0_eef_quat"][obs_step]
        angle = 2 * math.acos(w)
        axis_angle = np.array([x, y, z]) / math.sin(angle / 2) * angle
        np.testing.assert_allclose(request["state.eef_rotation"], axis_angle, atol=1e-5)
        np.testing.assert_allclose(request["state.libero_gripper_position"], steps["robot0_gripper_qpos"][obs_step],
                                   atol=1e-6)
        assert request["language.instruction"].startswith("pick up the black bowl between the plate")

        chunk = np.concatenate([reply["action.eef_position"], reply["action.eef_rotation"],
                                reply["action.gripper_position"]], axis=1)
        executed = actions[10 + 8 * k: 10 + 8 * k + 8]
        np.testing.assert_allclose(executed[:, :6], chunk[: len(executed), :6], atol=1e-6)
        np.testing.assert_array_equal(executed[:, 6], np.sign(-2 * chunk[: len(executed), 6] + 1))
