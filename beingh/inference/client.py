"""Synchronous websocket client for `beingh serve` (and for openpi-style msgpack-numpy servers)."""

from __future__ import annotations

import os
from typing import Any

import websockets
from websockets.sync.client import ClientConnection, connect

from beingh.inference.protocol import API_KEY_ENV, packb, unpackb


class PolicyServerError(RuntimeError):
    """The server answered a request with `{"error": ...}`."""


class PolicyClient:
    """Talks to one policy server; every call waits at most `timeout` seconds for the reply.

    After a timeout the connection is closed (a late reply would otherwise be taken for the answer to
    the next request); create a new client to continue. `api_key` (default: `$BEINGH_API_KEY`) is sent
    as `Authorization: Api-Key <key>`, as openpi's client does.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, timeout: float | None = 30.0,
                 max_size: int | None = 64 * 2**20, api_key: str | None = None):
        self.uri = f"ws://{host}:{port}"
        self.timeout = timeout
        api_key = api_key or os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        try:
            self._ws: ClientConnection = connect(self.uri, open_timeout=timeout, close_timeout=timeout,
                                                 max_size=max_size, compression=None, proxy=None,
                                                 ping_interval=None, additional_headers=headers)
        except websockets.InvalidStatus as err:
            status = err.response.status_code
            hint = (": the server needs an API key (api_key= or $BEINGH_API_KEY)" if status == 401 else "")
            raise ConnectionError(f"policy server at {self.uri} refused the connection (HTTP {status}){hint}") from err
        except (OSError, TimeoutError, websockets.InvalidHandshake) as err:
            raise ConnectionError(f"cannot connect to policy server at {self.uri}: {err}") from err
        self.metadata: dict[str, Any] = self._receive()

    def get_action(self, observations: dict[str, Any], executed_steps: int | None = None) -> dict[str, Any]:
        """Send one observation, return the action dict (`action.*`, maybe `action_unified`, `server_timing`).

        `executed_steps`: how many actions of the previous chunk were executed since it was returned
        (lets the server lock the committed prefix of the next chunk, see `beingh.inference.rtc`).
        """
        if executed_steps is not None:
            observations = {**observations, "executed_steps": executed_steps}
        return self._request(observations)

    def reset(self) -> None:
        """Clear this connection's RTC history on the server (call at each new episode)."""
        self._request({"endpoint": "reset"})

    def ping(self) -> bool:
        return bool(self._request({"endpoint": "ping"}).get("pong"))

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            self._ws.send(packb(message))
        except websockets.ConnectionClosed as err:
            raise ConnectionError(_closed_reason(self.uri, err)) from err
        reply = self._receive()
        if "error" in reply:
            raise PolicyServerError(f"policy server {self.uri}: {reply['error']}")
        return reply

    def _receive(self) -> dict[str, Any]:
        try:
            data = self._ws.recv(timeout=self.timeout)
        except TimeoutError as err:
            self._ws.close()
            raise TimeoutError(f"no reply from policy server {self.uri} within {self.timeout} s; "
                               "connection closed") from err
        except websockets.ConnectionClosed as err:
            raise ConnectionError(_closed_reason(self.uri, err)) from err
        if isinstance(data, str):  # an openpi server reports a failure as a text frame (its traceback)
            raise PolicyServerError(f"policy server {self.uri} sent an error text: {data}")
        reply = unpackb(data)
        if not isinstance(reply, dict):
            raise PolicyServerError(f"policy server {self.uri} sent a {type(reply).__name__}, expected a map")
        return reply


def _closed_reason(uri: str, err: websockets.ConnectionClosed) -> str:
    close = err.rcvd or err.sent
    detail = f"code {close.code}: {close.reason or 'no reason given'}" if close else "no close frame"
    return f"connection to policy server {uri} closed ({detail})"
