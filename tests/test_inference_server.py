"""Wire protocol, websocket server and client on loopback, with a fake policy (the real one is in
test_inference_policy.py and test_inference_robustness.py): concurrency, malformed and oversize messages,
field-naming errors, non-finite answers refused, bounded queue, API key, timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from beingh.inference.client import PolicyClient, PolicyServerError
from beingh.inference.protocol import ObservationError, ProtocolError, packb, unpackb
from beingh.inference.rtc import RTCState
from beingh.inference.server import PolicyServer, build_arg_parser

CHUNK = 16


class FakePolicy:
    """Checks `state.x` (3,) and returns a chunk whose values encode the request, after `delay_s` (or, when
    `gate` is given, once the gate is set)."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None):
        self.delay_s = delay_s
        self.gate = gate
        self.metadata = {"action_keys": ["action.x"], "chunk_length": CHUNK, "embodiment_tag": "fake"}
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.rtc_states: list[RTCState] = []

    def new_rtc_state(self) -> RTCState:
        state = RTCState(CHUNK, declared_delay=2)
        self.rtc_states.append(state)
        return state

    def get_action(self, observations, rtc_state=None):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay_s)
            if self.gate is not None:
                self.gate.wait(timeout=30)
            if observations.get("crash"):
                raise RuntimeError("boom")
            state = observations.get("state.x")
            if not isinstance(state, np.ndarray) or state.shape != (3,):
                raise ObservationError(f"state.x must be a (3,) array, got {state!r}")
            if "executed_steps" in observations:
                rtc_state.advance(int(observations["executed_steps"]))
            return {"action.x": np.tile(state.astype(np.float32), (CHUNK, 1))}
        finally:
            with self.lock:
                self.active -= 1


@contextmanager
def running_server(policy, max_size: int = 2**20, **server_args):
    loop = asyncio.new_event_loop()
    server = PolicyServer(policy, "127.0.0.1", 0, max_size=max_size, **server_args)
    port = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_protocol_roundtrip_numeric_arrays_and_scalars():
    message = {
        "video.cam": np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3),
        "state.x": np.array([1.5, -2.0, 3.25], dtype=np.float32),
        "mask": np.array([True, False]),
        "steps": np.int64(7),
        "language.instruction": "push the puck",
        "nested": {"list": [1, 2.5, "a"], "empty": np.zeros((0, 200), dtype=np.float64)},
    }
    out = unpackb(packb(message))
    assert out["language.instruction"] == "push the puck"
    for key in ("video.cam", "state.x", "mask"):
        assert out[key].dtype == message[key].dtype and np.array_equal(out[key], message[key])
        assert out[key].flags.writeable
    assert out["steps"] == 7 and out["steps"].dtype == np.int64
    assert out["nested"]["list"] == [1, 2.5, "a"] and out["nested"]["empty"].shape == (0, 200)


def test_protocol_reads_openpi_style_bin_keys():
    arr = np.arange(6, dtype="<f4").reshape(2, 3)
    wire = msgpack.packb({b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": "<f4", b"shape": (2, 3)})
    assert np.array_equal(unpackb(wire), arr)


@pytest.mark.parametrize("dtype", ["|O", "<U4", "|V8", "<c8", "|S3"])
def test_protocol_refuses_non_numeric_dtypes(dtype):
    wire = msgpack.packb({"__ndarray__": True, "data": b"\0" * 16, "dtype": dtype, "shape": [1]})
    with pytest.raises(ProtocolError, match="not allowed|unknown"):
        unpackb(wire)


def test_protocol_refuses_to_encode_objects():
    with pytest.raises(ProtocolError, match="not allowed"):
        packb({"a": np.array([object()], dtype=object)})
    with pytest.raises(TypeError, match="cannot encode"):
        packb({"a": {1, 2}})


@pytest.mark.parametrize(
    "wire",
    [
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # truncated array
        msgpack.packb({"__ndarray__": True, "data": b"\0" * 5, "dtype": "<f4", "shape": [2]}),
        msgpack.packb({"__ndarray__": True, "data": b"\0" * 8, "dtype": "<f4", "shape": [-2]}),
        msgpack.packb({"__ndarray__": True, "data": "text", "dtype": "<f4", "shape": [1]}),
        msgpack.packb({"__ndarray__": True, "data": b"\0" * 4, "dtype": 5, "shape": [1]}),
        msgpack.packb({"__npgeneric__": True, "data": "x", "dtype": "<f4"}),
    ],
)
def test_protocol_malformed_messages_raise_protocol_error(wire):
    with pytest.raises(ProtocolError):
        unpackb(wire)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"steps": {"__npgeneric__": True, "data": 2**64 - 1, "dtype": "<i8"}}, "steps: 18446744073709551615 does not fit"),
        ({"s": {"__npgeneric__": True, "data": -1, "dtype": "|u1"}}, "s: -1 does not fit numpy uint8"),
        ({"obs": {"cams": [{"__ndarray__": True, "data": b"", "dtype": "<f4", "shape": [3]}]}},
         r"obs/cams\[0\]: array data has 0 bytes"),
        ({"x": {"__ndarray__": True, "data": b"", "dtype": "<f4", "shape": [0, 2**40]}}, r"x: array shape must be"),
        ({"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, "nested deeper than 32"),
    ],
)
def test_protocol_errors_name_the_field(message, error):
    with pytest.raises(ProtocolError, match=error):
        unpackb(msgpack.packb(message))


def test_client_server_roundtrip_metadata_reset_ping():
    policy = FakePolicy()
    with running_server(policy) as port, PolicyClient(port=port, timeout=10) as client:
        assert client.metadata == policy.metadata
        assert client.ping()
        reply = client.get_action({"state.x": np.array([1.0, 2.0, 3.0])}, executed_steps=3)
        assert reply["action.x"].shape == (CHUNK, 3) and reply["action.x"].dtype == np.float32
        assert np.allclose(reply["action.x"][5], [1, 2, 3])
        assert reply["server_timing"]["infer_ms"] >= 0 and reply["server_timing"]["queue_ms"] >= 0
        assert policy.rtc_states[0].executed_steps == 3
        client.reset()
        assert policy.rtc_states[0].executed_steps is None


def openpi_pack_array(obj):
    """openpi_client.msgpack_numpy.pack_array, as published (the encoder an openpi client uses)."""
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"Unsupported dtype: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def openpi_unpack_array(obj):
    """openpi_client.msgpack_numpy.unpack_array, as published."""
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def test_openpi_client_message_shape():
    """What openpi's WebsocketClientPolicy does: metadata on connect, packed obs in, unpacked actions out."""
    policy = FakePolicy()
    with running_server(policy) as port:
        with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, proxy=None) as ws:
            metadata = msgpack.unpackb(ws.recv(timeout=10), object_hook=openpi_unpack_array)
            assert metadata == policy.metadata
            replies = []
            for value in (1.0, 2.0):
                obs = {"state.x": np.full(3, value, dtype=np.float32), "step": np.int64(4)}
                ws.send(msgpack.Packer(default=openpi_pack_array).pack(obs))
                reply = ws.recv(timeout=10)
                assert isinstance(reply, bytes)  # openpi raises on a str (its error frames)
                replies.append(msgpack.unpackb(reply, object_hook=openpi_unpack_array))
    assert replies[0]["action.x"].shape == (CHUNK, 3) and np.all(replies[1]["action.x"] == 2.0)
    assert set(replies[0]["server_timing"]) == {"infer_ms", "queue_ms"}
    assert set(replies[1]["server_timing"]) == {"infer_ms", "queue_ms", "prev_total_ms"}
    assert replies[1]["server_timing"]["prev_total_ms"] >= replies[0]["server_timing"]["infer_ms"]


def test_client_reports_openpi_style_text_error_frames():
    """An openpi server answers a failing request with its traceback as a text frame."""
    from websockets.sync.server import serve

    def handler(ws):
        ws.send(msgpack.packb({"server": "openpi"}))
        ws.recv()
        ws.send("Traceback (most recent call last): KeyError: 'observation/image'")

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with PolicyClient(port=server.socket.getsockname()[1], timeout=10) as client:
                assert client.metadata == {"server": "openpi"}
                with pytest.raises(PolicyServerError, match="error text: Traceback.*observation/image"):
                    client.get_action({"state.x": np.zeros(3)})
        finally:
            server.shutdown()
            thread.join(timeout=10)


def test_server_error_reply_raises_and_keeps_connection():
    with running_server(FakePolicy()) as port, PolicyClient(port=port, timeout=10) as client:
        with pytest.raises(PolicyServerError, match="bad observation: state.x"):
            client.get_action({"state.x": np.zeros(5)})
        with pytest.raises(PolicyServerError, match="inference failed: RuntimeError: boom"):
            client.get_action({"state.x": np.zeros(3), "crash": True})
        with pytest.raises(PolicyServerError, match="unknown endpoint"):
            client._request({"endpoint": "kill"})
        assert client.get_action({"state.x": np.ones(3)})["action.x"].shape == (CHUNK, 3)


def test_malformed_requests_do_not_kill_server():
    bad_messages = [
        b"\xc1",
        b"not msgpack at all",
        "a text frame",
        packb([1, 2, 3]),
        packb("just a string"),
        packb({"state.x": "not an array"}),
        packb({"state.x": np.zeros((2, 2))}),
        packb({"video.cam": np.zeros((4, 4, 3), dtype=np.uint8)}),
        msgpack.packb({"state.x": {"__ndarray__": True, "data": b"\0" * 3, "dtype": "<f4", "shape": [3]}}),
        msgpack.packb({"state.x": {"__ndarray__": True, "data": b"\0" * 8, "dtype": "|O", "shape": [1]}}),
    ]
    with running_server(FakePolicy()) as port:
        with connect(f"ws://127.0.0.1:{port}", proxy=None, compression=None) as ws:
            unpackb(ws.recv(timeout=10))  # metadata
            for i in range(200):
                ws.send(bad_messages[i % len(bad_messages)])
                reply = unpackb(ws.recv(timeout=10))
                assert set(reply) == {"error"} and reply["error"], (i, reply)
            ws.send(packb({"state.x": np.full(3, 4.0)}))
            assert np.all(unpackb(ws.recv(timeout=10))["action.x"] == 4.0)
        with PolicyClient(port=port, timeout=10) as client:
            assert client.get_action({"state.x": np.zeros(3)})["action.x"].shape == (CHUNK, 3)


def test_concurrent_clients_are_served_and_inference_is_serialized():
    policy = FakePolicy(delay_s=0.01)
    results: dict[int, list[float]] = {}
    errors: list[BaseException] = []

    def worker(idx: int) -> None:
        try:
            with PolicyClient(port=port, timeout=30) as client:
                results[idx] = [
                    float(client.get_action({"state.x": np.full(3, idx + 10.0 * k)})["action.x"][0, 0])
                    for k in range(5)
                ]
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    with running_server(policy) as port:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert results == {i: [i + 10.0 * k for k in range(5)] for i in range(4)}
    assert policy.max_active == 1
    assert len(policy.rtc_states) == 4  # one RTC history per connection


def test_event_loop_answers_pings_during_inference():
    policy = FakePolicy(delay_s=1.5)
    with running_server(policy) as port:
        slow = threading.Thread(
            target=lambda: PolicyClient(port=port, timeout=10).get_action({"state.x": np.zeros(3)}))
        slow.start()
        time.sleep(0.2)
        with PolicyClient(port=port, timeout=10) as client:
            start = time.perf_counter()
            assert client.ping()
            assert time.perf_counter() - start < 1.0
        slow.join(timeout=10)


def test_oversize_message_closes_that_connection_with_reason_and_server_survives():
    with running_server(FakePolicy(), max_size=4096) as port:
        client = PolicyClient(port=port, timeout=10)
        with pytest.raises(ConnectionError, match="1009"):
            client.get_action({"state.x": np.zeros(3), "video.cam": np.zeros((64, 64, 3), dtype=np.uint8)})
        with PolicyClient(port=port, timeout=10) as other:
            assert other.get_action({"state.x": np.ones(3)})["action.x"].shape == (CHUNK, 3)


def test_client_timeout_is_applied():
    with running_server(FakePolicy(delay_s=2.0)) as port:
        client = PolicyClient(port=port, timeout=0.3)
        start = time.perf_counter()
        with pytest.raises(TimeoutError, match="within 0.3 s"):
            client.get_action({"state.x": np.zeros(3)})
        assert time.perf_counter() - start < 1.5


def test_client_connect_error_names_the_address():
    with running_server(FakePolicy()) as port:
        pass
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        PolicyClient(port=port, timeout=2)


def test_serve_arguments_parse(monkeypatch):
    monkeypatch.delenv("BEINGH_API_KEY", raising=False)
    base = ["--model_path", "ckpt", "--data_config_name", "metaworld", "--dataset_name", "g", "--embodiment_tag",
            "metaworld"]
    args = build_arg_parser().parse_args([*base, "--port", "9001", "--no-enable_rtc", "--num_inference_timesteps", "8"])
    assert (args.port, args.enable_rtc, args.num_inference_timesteps, args.host) == (9001, False, 8, "0.0.0.0")
    assert args.instruction_template == "long" and args.use_mpg is None
    assert (args.api_key, args.max_queue, args.max_instruction_tokens) == (None, 16, 256)
    args = build_arg_parser().parse_args([*base, "--api_key", "s3cret", "--max_queue", "2",
                                          "--max_instruction_tokens", "64"])
    assert (args.api_key, args.max_queue, args.max_instruction_tokens) == ("s3cret", 2, 64)
    monkeypatch.setenv("BEINGH_API_KEY", "from-env")
    assert build_arg_parser().parse_args(base).api_key == "from-env"


def test_healthz_over_plain_http():
    import urllib.request

    with running_server(FakePolicy()) as port:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200 and response.read() == b"OK\n"


def test_request_keys_must_be_strings():
    with running_server(FakePolicy()) as port:
        with connect(f"ws://127.0.0.1:{port}", proxy=None, compression=None) as ws:
            unpackb(ws.recv(timeout=10))
            for message, error in (
                ({"state.x": np.zeros(3), 7: "a"}, "observation keys must be strings, got 7"),
                ({b"state.x": np.zeros(3)}, "got b'state.x' (bytes)"),
            ):
                ws.send(packb(message))
                reply = unpackb(ws.recv(timeout=10))
                assert set(reply) == {"error"} and error in reply["error"], reply


class NaNPolicy(FakePolicy):
    def get_action(self, observations, rtc_state=None):
        actions = super().get_action(observations, rtc_state)
        actions["action.x"][3, 1] = np.nan if observations.get("nan") else np.inf
        return actions


def test_non_finite_actions_are_an_error_reply_never_an_answer():
    with running_server(NaNPolicy()) as port, PolicyClient(port=port, timeout=10) as client:
        for flag in (True, False):
            with pytest.raises(PolicyServerError, match=r"inference failed: action.x is not finite \(chunk steps \[3\]\)"):
                client.get_action({"state.x": np.ones(3), "nan": flag})
        assert client.ping()


def test_full_inference_queue_answers_busy_at_once():
    gate = threading.Event()
    policy = FakePolicy(gate=gate)
    replies: list[dict] = []
    with running_server(policy, max_queue=1) as port:
        first = PolicyClient(port=port, timeout=30)
        waiting = threading.Thread(target=lambda: replies.append(first.get_action({"state.x": np.ones(3)})))
        waiting.start()
        deadline = time.monotonic() + 10
        while policy.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with PolicyClient(port=port, timeout=10) as second:
            start = time.perf_counter()
            with pytest.raises(PolicyServerError, match=r"server busy: 1 requests are queued .*max_queue 1"):
                second.get_action({"state.x": np.zeros(3)})
            assert time.perf_counter() - start < 1.0
            assert second.ping()  # control messages are not queued
            gate.set()
            waiting.join(timeout=10)
            assert np.all(replies[0]["action.x"] == 1.0)
            assert np.all(second.get_action({"state.x": np.full(3, 2.0)})["action.x"] == 2.0)
        first.close()


def test_api_key_is_required_when_set(monkeypatch):
    import urllib.request

    monkeypatch.delenv("BEINGH_API_KEY", raising=False)
    with running_server(FakePolicy(), api_key="s3cret") as port:
        for key in (None, "wrong", "s3cret-but-longer"):
            with pytest.raises(ConnectionError, match="HTTP 401.*needs an API key"):
                PolicyClient(port=port, timeout=10, api_key=key)
        with PolicyClient(port=port, timeout=10, api_key="s3cret") as client:
            assert client.get_action({"state.x": np.ones(3)})["action.x"].shape == (CHUNK, 3)
        monkeypatch.setenv("BEINGH_API_KEY", "s3cret")
        with PolicyClient(port=port, timeout=10) as client:
            assert client.ping()
        # openpi's WebsocketClientPolicy(api_key=...) sends exactly this header.
        headers = {"Authorization": "Api-Key s3cret"}
        with connect(f"ws://127.0.0.1:{port}", additional_headers=headers, proxy=None, compression=None) as ws:
            assert unpackb(ws.recv(timeout=10)) == FakePolicy().metadata
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200  # health checks need no key


def test_serving_beyond_loopback_without_a_key_warns(monkeypatch, caplog):
    from beingh.inference import server as server_module

    assert server_module._is_loopback("127.0.0.1") and server_module._is_loopback("::1")
    assert not server_module._is_loopback("0.0.0.0") and not server_module._is_loopback("192.168.1.5")
    monkeypatch.setattr(server_module, "_is_loopback", lambda host: False)
    with caplog.at_level("WARNING", logger="beingh.inference.server"), running_server(FakePolicy()):
        pass
    assert any("without --api_key" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="beingh.inference.server"), running_server(FakePolicy(), api_key="k"):
        pass
    assert not any("without --api_key" in r.getMessage() for r in caplog.records)
