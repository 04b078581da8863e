"""BeingHPolicy and `beingh serve` against hostile or broken input, on the tiny checkpoint, loopback only:
checkpoint integrity, finite inputs that overflow, non-finite outputs, request hygiene, instruction cap,
a bounded fuzz of a few hundred malformed messages and concurrent clients."""

from __future__ import annotations

import logging
import shutil
import threading

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from beingh.checkpoint_manifest import CheckpointIntegrityError, hash_files, list_files, write_manifest
from beingh.inference.checks import NonFiniteActionError
from beingh.inference.client import PolicyClient, PolicyServerError
from beingh.inference.protocol import ObservationError, packb, unpackb
from tests.conftest import TINY_CHECKPOINT
from tests.pickle_canary import pickle_payload
from tests.test_inference_policy import DATASET, T, make_policy, noise, observation, write_checkpoint
from tests.test_inference_server import running_server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("robust_ckpt"))


@pytest.fixture(scope="module")
def policy(checkpoint):
    return make_policy(checkpoint, rtc_inference_delay=2, max_instruction_tokens=32)


def _with_manifest(source, target):
    shutil.copytree(source, target)
    (target / "train_state").mkdir()
    (target / "train_state" / "rank_00000.json").write_text("{}")
    write_manifest(target, hash_files(target, list_files(target)))
    return target


# ---- integrity (the policy verifies the manifest before loading) -----------------------------------------
def test_policy_verifies_the_manifest_and_names_the_bad_file(checkpoint, tmp_path):
    folder = _with_manifest(checkpoint, tmp_path / "ckpt")
    (folder / "train_state" / "rank_00000.json").write_text("{changed}")
    make_policy(folder)  # inference does not read train_state/
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:1000] + bytes([original[1000] ^ 0x80]) + original[1001:])
    with pytest.raises(CheckpointIntegrityError, match=r"model\.safetensors: sha256 differs"):
        make_policy(folder)
    weights.write_bytes(original[: len(original) // 3])
    with pytest.raises(CheckpointIntegrityError, match=r"model\.safetensors has \d+ bytes.*truncated"):
        make_policy(folder)
    tokenizer = folder / "tokenizer.json"
    weights.write_bytes(original)
    tokenizer.write_text(tokenizer.read_text().replace("push", "pull", 1))
    with pytest.raises(CheckpointIntegrityError, match=r"tokenizer\.json: sha256 differs"):
        make_policy(folder)


def test_released_checkpoint_without_manifest_loads_with_a_log_line(checkpoint, tmp_path, caplog):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(TINY_CHECKPOINT / name, tmp_path / name)
    for item in checkpoint.iterdir():
        if item.name.startswith("tokenizer") or item.name == "special_tokens_map.json":
            shutil.copy(item, tmp_path / item.name)
    shutil.copy(checkpoint / "experiment_cfg" / f"{DATASET}_metadata.json", tmp_path)
    with caplog.at_level(logging.INFO, logger="beingh.checkpoint_manifest"):
        released = make_policy(tmp_path, rtc_inference_delay=2)
    assert any("has no manifest.json" in r.getMessage() for r in caplog.records)
    assert released.get_action(observation(0))["action.eef_position"].shape == (T, 3)


# ---- finite inputs that overflow, non-finite outputs ----------------------------------------------------
@pytest.mark.parametrize("value", [1e39, -1e300])
def test_state_that_overflows_in_normalization_is_refused(policy, value):
    obs = {**observation(1), "state.eef_position": np.array([value, 0.0, 0.0])}
    with pytest.raises(ObservationError, match="state.eef_position is not finite after normalization"):
        policy.get_action(obs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])
def test_non_finite_prev_chunk_is_refused(policy, bad):
    prev = noise(1)[:4].astype(np.float64)
    prev[2, 5] = bad
    with pytest.raises(ObservationError, match="prev_chunk must be finite"):
        policy.get_action({**observation(2), "prev_chunk": prev, "inference_delay": 3})


def test_non_finite_model_output_is_an_error_and_not_recorded_for_rtc(policy, monkeypatch):
    policy.reset()
    first = policy.get_action(observation(3), noise=noise(3))["action_unified"]

    def broken(*_args, **_kwargs):
        chunk = noise(4)
        chunk[7, 0] = np.nan
        return chunk

    monkeypatch.setattr(policy, "_sample_chunk", broken)
    with pytest.raises(NonFiniteActionError, match=r"not finite \(chunk steps \[7\]\)"):
        policy.get_action(observation(4), executed_steps=3)
    monkeypatch.undo()
    np.testing.assert_array_equal(policy.rtc.last_chunk, first)  # the broken chunk never became the history


def test_server_answers_non_finite_output_with_an_error(policy, monkeypatch):
    monkeypatch.setattr(policy, "_sample_chunk", lambda *a, **k: np.full((T, 200), np.inf, dtype=np.float32))
    with running_server(policy, max_size=2**22) as port, PolicyClient(port=port, timeout=30) as client:
        with pytest.raises(PolicyServerError, match="inference failed: .* is not finite"):
            client.get_action(observation(5))


# ---- request hygiene: each error names the field -------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inference_delay": -1}, "inference_delay must be a non-negative int"),  # no prev_chunk, no history
        ({"inference_delay": "3"}, "inference_delay must be a non-negative int"),
        ({"inference_delay": np.array([1.5])}, "inference_delay must be a non-negative int"),
        ({"executed_steps": -2}, "executed_steps must be a non-negative int"),
        ({"prev_chunk": {"a": 1}, "inference_delay": 1}, "prev_chunk must be a numeric"),
        ({"state.gripper": ["a"]}, "state.gripper must be a numeric array"),
        ({"language.instruction": "push " * 40}, r"language.instruction has \d+ tokens; the limit is 32"),
        ({"language.instruction": "x" * 600}, "language.instruction has 600 characters; the limit is 32 tokens"),
    ],
)
def test_bad_requests_name_the_field(policy, change, message):
    policy.reset()
    with pytest.raises(ObservationError, match=message):
        policy.get_action({**observation(6), **change})


def test_rtc_inputs_are_checked_even_with_rtc_off(checkpoint):
    off = make_policy(checkpoint, enable_rtc=False)
    with pytest.raises(ObservationError, match="inference_delay must be"):
        off.get_action({**observation(7), "inference_delay": -3})


@pytest.mark.parametrize("observations", [None, [1, 2], "state", {1: "a", "b": 2}])
def test_observation_must_be_a_dict_with_string_keys(policy, observations):
    with pytest.raises(ObservationError, match="must be a dict|keys must be strings"):
        policy.get_action(observations)


def test_constructor_refuses_zero_and_unknown_values(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="num_inference_timesteps must be > 0, got 0"):
        make_policy(checkpoint, num_inference_timesteps=0)
    with pytest.raises(ValueError, match="control_hz must be > 0"):
        make_policy(checkpoint, control_hz=0)
    with pytest.raises(ValueError, match="max_instruction_tokens must be > 0"):
        make_policy(checkpoint, max_instruction_tokens=0)
    with pytest.raises(ValueError, match=r"embodiment_tag 'robot_x' is unknown: known tags are \[.*'metaworld'"):
        make_policy(checkpoint, embodiment_tag="robot_x")
    assert make_policy(checkpoint, num_inference_timesteps=2).num_inference_timesteps == 2
    # A custom tag the checkpoint was trained with (it maps to the new_embodiment id, as in training) loads.
    custom = tmp_path / "custom_tag"
    shutil.copytree(checkpoint, custom)
    meta = custom / "experiment_cfg" / f"{DATASET}_metadata.json"
    meta.write_text(meta.read_text().replace('"embodiment_tag": "metaworld"', '"embodiment_tag": "my_arm"'))
    assert make_policy(custom, embodiment_tag="my_arm").embodiment_id == 31
    with pytest.raises(ValueError, match="and this checkpoint's 'my_arm'"):
        make_policy(custom, embodiment_tag="my_other_arm")


# ---- bounded fuzz and concurrency through the server ---------------------------------------------------
def _raw_observation(seed: int) -> dict:
    obs = observation(seed)
    return {k: (np.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in obs.items()}


WEIRD_VALUES = [
    None, True, -1, 2**63, 1e39, -1e39, float("nan"), float("inf"), "", "x" * 5000, [], [1, "a"], {}, {1: 2},
    b"\x00" * 10, [[[[1]]]], np.zeros((0, 0, 3), np.uint8), np.zeros((4, 4, 3), np.float32),
    np.zeros((1, 1, 4, 4, 3), np.uint8), np.full(3, 1e39), np.full(3, np.nan), np.zeros(7), np.int64(-5),
    np.array([2**62], dtype=np.int64), np.zeros((2, 16, 200)), np.full((4, 200), np.inf),
]
EXTRA_KEYS = ["prev_chunk", "inference_delay", "executed_steps", "language.instruction", "state.gripper",
              "video.corner", "state.eef_position", "endpoint"]


def _fuzz_messages(canary) -> list[bytes | str]:
    """~300 malformed messages: random bytes, truncated and bit-flipped valid ones, wrong values in every
    field, non-string keys, broken arrays/scalars and a pickle payload."""
    rng = np.random.default_rng(1234)
    valid = packb(_raw_observation(0))
    messages: list[bytes | str] = []
    for _ in range(40):
        messages.append(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
    for _ in range(40):
        messages.append(valid[: int(rng.integers(0, len(valid)))])
    for _ in range(40):
        flipped = bytearray(valid)
        for position in rng.integers(0, len(valid), int(rng.integers(1, 6))):
            flipped[position] ^= 1 << int(rng.integers(0, 8))
        messages.append(bytes(flipped))
    for key in EXTRA_KEYS:
        for value in WEIRD_VALUES:
            messages.append(packb({**_raw_observation(1), key: value}))
    for value in WEIRD_VALUES[:10]:
        messages.append(packb({**_raw_observation(2), 5: value}))
        messages.append(msgpack.packb({"state.x": value, b"bin": 1}, default=lambda o: None))
    arrays = [
        {"__ndarray__": True, "data": pickle_payload(canary), "dtype": "|O", "shape": [1]},
        {"__ndarray__": True, "data": b"\0" * 8, "dtype": "<c8", "shape": [1]},
        {"__ndarray__": True, "data": b"\0" * 7, "dtype": "<f4", "shape": [2]},
        {"__ndarray__": True, "data": b"", "dtype": "<f4", "shape": [0, 2**40]},
        {"__ndarray__": True, "data": b"", "dtype": 3, "shape": [0]},
        {"__npgeneric__": True, "data": 2**64 - 1, "dtype": "<i8"},
        {"__npgeneric__": True, "data": 300, "dtype": "|u1"},
        {"__npgeneric__": True, "data": "1", "dtype": "<f4"},
    ]
    for array in arrays:
        for key in ("state.eef_position", "video.corner", "prev_chunk", "inference_delay"):
            messages.append(msgpack.packb({**{k: v for k, v in _raw_observation(3).items() if not
                                              isinstance(v, np.ndarray)}, key: array}))
    messages += [pickle_payload(canary), packb([1, 2]), packb(None), packb("obs"), packb(3), "a text frame",
                 msgpack.packb([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])]
    return messages


def _assert_answer_or_error(reply: dict, what: str) -> bool:
    """True for an error reply, False for a valid answer; anything else fails."""
    if "error" in reply:
        assert set(reply) == {"error"} and isinstance(reply["error"], str), what
        # refused as a bad message/observation/endpoint (naming the field), never a crash inside inference
        assert reply["error"].startswith(("bad message: ", "bad observation: ")), (what, reply)
        return True
    actions = {k: v for k, v in reply.items() if k.startswith("action")}
    assert set(actions) == {"action.eef_position", "action.gripper", "action_unified"}, (what, reply)
    for value in actions.values():
        assert value.dtype == np.float32 and value.shape[0] == T and np.all(np.isfinite(value)), what
    return False


def test_fuzz_hundreds_of_malformed_messages(policy, tmp_path):
    canary = tmp_path / "canary"
    messages = _fuzz_messages(canary)
    assert len(messages) >= 300
    errors = 0
    with running_server(policy, max_size=2**22) as port:
        with connect(f"ws://127.0.0.1:{port}", proxy=None, compression=None, max_size=2**22) as ws:
            unpackb(ws.recv(timeout=30))
            for i, message in enumerate(messages):
                ws.send(message)
                reply = unpackb(ws.recv(timeout=30))
                errors += _assert_answer_or_error(reply, f"message {i}: {message[:80]!r}")
            ws.send(packb(_raw_observation(9)))
            assert not _assert_answer_or_error(unpackb(ws.recv(timeout=30)), "valid after fuzz")
        with PolicyClient(port=port, timeout=30) as client:  # the server still accepts connections
            assert client.get_action(observation(10))["action.gripper"].shape == (T, 1)
    assert errors >= len(messages) * 0.8
    assert not canary.exists()


def test_concurrent_clients_keep_their_own_rtc_history(policy):
    """8 clients at once, valid and invalid requests interleaved: all answered, RTC prefixes per connection."""
    failures: list[BaseException] = []
    checked: list[int] = []

    def client_loop(index: int) -> None:
        try:
            with PolicyClient(port=port, timeout=60) as client:
                for round_ in range(3):
                    first = client.get_action(observation(index * 10 + round_))["action_unified"]
                    with pytest.raises(PolicyServerError, match="bad observation"):
                        client.get_action({**observation(index), "state.gripper": np.full(1, np.nan)})
                    second = client.get_action(observation(index * 10 + round_ + 5), executed_steps=3)
                    np.testing.assert_array_equal(second["action_unified"][:2], first[3:5])
                    client.reset()
                checked.append(index)
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    with running_server(policy, max_size=2**22) as port:
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not failures, failures
    assert sorted(checked) == list(range(8))

