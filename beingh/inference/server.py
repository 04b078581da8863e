"""Websocket policy server (`beingh serve`): msgpack-numpy messages, openpi-compatible framing.

On connect the server sends its metadata (plain HTTP `GET /healthz` answers 200). Then every binary
message is either an observation dict (reply: the action dict plus `server_timing`) or a control
message `{"endpoint": "ping" | "reset" | "metadata"}`. Inference runs on one worker thread, so
requests from several clients are serialized while the event loop keeps accepting connections and
answering pings. Each connection has its own RTC history. A bad request gets `{"error": ...}` naming
the field and the connection stays open; a message above `max_size` makes websockets close that
connection with code 1009 and the reason, the server goes on.

Bounded work: at most `max_queue` observations wait for or run inference at once (more get a "server
busy" error at once), and the policy caps the instruction length. Non-finite actions are never sent:
they become an error reply. With `api_key` set, the websocket handshake needs the header
`Authorization: Api-Key <key>` (what openpi's client sends with `api_key=`), else HTTP 401.

openpi compatibility (`openpi_client.websocket_client_policy.WebsocketClientPolicy` works unchanged):
- same: one metadata map sent on connect; one binary msgpack observation map in, one action map out
  per request; arrays as openpi's `msgpack_numpy` writes them (`beingh.inference.protocol`);
  `server_timing` with `infer_ms` (time inside the policy) and `prev_total_ms` (receive-to-sent time
  of the previous request on the connection); `GET /healthz`.
- different: the keys are Being-H's (`video.*`, `state.*`, `language.instruction` in;
  `action.<key>` (T, d) and `action_unified` out), not an openpi policy's (`observation/...`,
  `prompt`, `actions`); `server_timing` adds `queue_ms` (wait for the inference worker); a failing
  request is answered with a binary `{"error": ...}` map and the connection stays open, where openpi
  sends the traceback as a text frame and closes with 1011 (an openpi client returns that map as its
  result instead of raising); messages above `max_size` (64 MB) are refused, openpi's client allows
  any size; non-numeric arrays (object, string, void, complex) are refused both ways; the control
  endpoints and the RTC keys (`executed_steps`, `prev_chunk`, `inference_delay`) are beingh additions
  (an openpi client can send the stateless RTC keys inside its observation).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import hmac
import http
import ipaddress
import logging
import os
import time
from typing import Any, Protocol

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from beingh.inference.checks import NonFiniteActionError, check_finite_actions, check_observation_map
from beingh.inference.protocol import API_KEY_ENV, ObservationError, ProtocolError, packb, unpackb
from beingh.inference.rtc import RTCState

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_MB = 64.0
DEFAULT_MAX_QUEUE = 16
ENDPOINTS = ("ping", "reset", "metadata")


class ServablePolicy(Protocol):
    metadata: dict[str, Any]

    def new_rtc_state(self) -> RTCState | None: ...

    def get_action(self, observations: dict[str, Any], *, rtc_state: RTCState | None = None) -> dict[str, Any]: ...


class PolicyServer:
    """Serves one policy to any number of websocket clients."""

    def __init__(self, policy: ServablePolicy, host: str = "0.0.0.0", port: int = 8000,
                 max_size: int = int(DEFAULT_MAX_MESSAGE_MB * 2**20), max_queue: int = DEFAULT_MAX_QUEUE,
                 api_key: str | None = None):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.policy = policy
        self.host = host
        self.port = port
        self.max_size = max_size
        self.max_queue = max_queue
        self.api_key = api_key or None
        self._queued = 0
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._server: Server | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port (useful with port=0)."""
        self._server = await serve(self._handle, self.host, self.port, max_size=self.max_size,
                                   compression=None, ping_interval=None, process_request=self._process_request)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.api_key is None and not _is_loopback(self.host):
            logger.warning("serving on %s without --api_key: anyone who can reach port %d can query the policy; "
                           "bind --host 127.0.0.1 (and tunnel) or set --api_key", self.host, self.port)
        logger.info("Server is ready on ws://%s:%d (API key %s)", self.host, self.port,
                    "required" if self.api_key else "not required")
        return self.port

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        await self._server.serve_forever()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._worker.shutdown(wait=True)

    async def _handle(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        logger.info("client connected: %s", peer)
        rtc_state = self.policy.new_rtc_state()
        stats = _ConnectionStats()
        try:
            await ws.send(packb(self.policy.metadata))
            async for message in ws:
                received = time.perf_counter()
                try:
                    reply = await self._reply(message, rtc_state, received)
                except Exception as err:  # noqa: BLE001 - a bug in handling one message must not drop the client
                    logger.exception("could not handle a message")
                    reply = {"error": f"internal error: {type(err).__name__}: {err}"}
                timing = reply.get("server_timing")
                if timing is not None and stats.prev_total_s is not None:
                    timing["prev_total_ms"] = 1000.0 * stats.prev_total_s
                await ws.send(packb(reply))
                stats.add(timing, time.perf_counter() - received)
        except websockets.ConnectionClosed as closed:
            logger.info("client %s disconnected: %s; %s", peer, closed, stats.summary())
        else:
            logger.info("client disconnected: %s; %s", peer, stats.summary())

    async def _reply(self, message: bytes | str, rtc_state: RTCState | None, received: float) -> dict[str, Any]:
        if isinstance(message, str):
            return {"error": "bad message: expected a binary msgpack message, got a text frame"}
        try:
            request = unpackb(message)
        except ProtocolError as err:
            return {"error": f"bad message: {err}"}
        if not isinstance(request, dict):
            return {"error": f"bad message: a message must be a msgpack map, got {type(request).__name__}"}
        try:
            check_observation_map(request)
        except ObservationError as err:
            return {"error": f"bad message: {err}"}
        if "endpoint" in request:
            return self._control(request["endpoint"], rtc_state)
        if self._queued >= self.max_queue:
            return {"error": f"server busy: {self._queued} requests are queued for inference (max_queue "
                             f"{self.max_queue}); retry later"}
        self._queued += 1
        try:
            actions, started, finished = await asyncio.get_running_loop().run_in_executor(
                self._worker, functools.partial(self._infer, request, rtc_state))
        except ObservationError as err:
            return {"error": f"bad observation: {err}"}
        except NonFiniteActionError as err:
            logger.warning("refused to send non-finite actions: %s", err)
            return {"error": f"inference failed: {err}"}
        except Exception as err:  # noqa: BLE001 - a failing request must not take the server down
            logger.exception("inference failed")
            return {"error": f"inference failed: {type(err).__name__}: {err}"}
        finally:
            self._queued -= 1
        timing = {"infer_ms": 1000.0 * (finished - started), "queue_ms": 1000.0 * (started - received)}
        return {**actions, "server_timing": timing}

    def _infer(self, request: dict[str, Any], rtc_state: RTCState | None) -> tuple[dict[str, Any], float, float]:
        """Runs on the worker thread; returns the actions and when inference started and ended."""
        started = time.perf_counter()
        actions = self.policy.get_action(request, rtc_state=rtc_state)
        check_finite_actions(actions)
        return actions, started, time.perf_counter()

    def _control(self, endpoint: Any, rtc_state: RTCState | None) -> dict[str, Any]:
        if not isinstance(endpoint, str):
            return {"error": f"bad message: endpoint must be a string, one of {list(ENDPOINTS)}; got {type(endpoint).__name__}"}
        if endpoint == "ping":
            return {"pong": True}
        if endpoint == "reset":
            if rtc_state is not None:
                rtc_state.reset()
            return {"reset": True}
        if endpoint == "metadata":
            return self.policy.metadata
        return {"error": f"bad message: unknown endpoint {endpoint!r}; known: {list(ENDPOINTS)} (or send an observation)"}

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Plain HTTP `GET /healthz` -> 200 (no key needed, for process supervisors, as openpi's server);
        with an API key, a websocket handshake without `Authorization: Api-Key <key>` -> 401."""
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Api-Key {self.api_key}"
            if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode()):
                logger.warning("refused %s: missing or wrong API key", connection.remote_address)
                return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n")
        return None


class _ConnectionStats:
    """Per-connection request counters for the disconnect log line and openpi's `prev_total_ms`."""

    def __init__(self) -> None:
        self.requests = 0
        self.infer_ms_total = 0.0
        self.prev_total_s: float | None = None

    def add(self, timing: dict[str, float] | None, total_s: float) -> None:
        """Count one answered observation (`timing` is None for errors and control messages)."""
        if timing is not None:
            self.requests += 1
            self.infer_ms_total += timing["infer_ms"]
            self.prev_total_s = total_s

    def summary(self) -> str:
        mean = self.infer_ms_total / self.requests if self.requests else 0.0
        return f"{self.requests} observations answered, mean infer {mean:.1f} ms"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_arg_parser() -> argparse.ArgumentParser:
    from beingh.inference.cli import add_policy_args

    parser = argparse.ArgumentParser(prog="beingh serve", description="Serve a checkpoint over websockets.")
    add_policy_args(parser)
    parser.add_argument("--host", default="0.0.0.0",
                        help="0.0.0.0: reachable from other machines (use with --api_key on a trusted network); "
                             "127.0.0.1: this machine only (or through an SSH tunnel)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_message_mb", type=float, default=DEFAULT_MAX_MESSAGE_MB,
                        help="largest accepted message; bigger ones close that connection (code 1009)")
    parser.add_argument("--max_queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help="most observations waiting for or in inference; more get a 'server busy' error")
    parser.add_argument("--api_key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Api-Key <key>' (openpi client: api_key=); default ${API_KEY_ENV}")
    return parser


def main(argv: list[str] | None = None) -> int:
    from beingh.inference.cli import policy_from_args

    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    policy = policy_from_args(args)
    server = PolicyServer(policy, args.host, args.port, max_size=int(args.max_message_mb * 2**20),
                          max_queue=args.max_queue, api_key=args.api_key)

    async def run() -> None:
        try:
            await server.serve_forever()
        finally:
            await server.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        logger.info("server stopped")
    return 0
