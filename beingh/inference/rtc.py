"""Real-time chunking across policy calls: which actions of the next chunk are already committed.

While a chunk is being computed the robot keeps executing the previous one, so the first `d` steps of
the new chunk (d = inference delay in control steps) are already decided: they are the previous
chunk shifted by the steps executed since it was produced. The policy passes them to the sampler as a
locked prefix (`prefix_actions`, `prefix_len`), which hard-overwrites them at every flow step.

Two ways to supply the prefix:
- stateful (`RTCState`, kept by the policy or by the server per connection): the caller reports how
  many steps it executed (`advance(k)` or `get_action(obs, executed_steps=k)`); the delay is
  declared or measured (last inference wall time x control rate, rounded up);
- stateless (openpi style): the observation carries `prev_chunk` (already shifted to the new chunk's
  timeline, normalized unified) and `inference_delay`.

A checkpoint trained with training-time RTC has seen clean prefixes; one trained without it still
gets the same hard overwrite ("guidance-free" inpainting). `rtc_mode` names which one applies so the
policy can say it once instead of silently switching RTC off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from beingh.batch import UNIFIED_DIM

TRAINED_RTC = "trained-RTC prefix locking"
GUIDANCE_FREE = "guidance-free hard prefix overwrite"


def rtc_mode(trained_with_rtc: bool) -> str:
    return TRAINED_RTC if trained_with_rtc else GUIDANCE_FREE


@dataclass(frozen=True)
class RTCPrefix:
    """Locked start of the next chunk, in the normalized unified space."""

    actions: np.ndarray
    """(length, 200) float32: the committed actions, first step first."""

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


def stateless_prefix(prev_chunk: np.ndarray, inference_delay: int, chunk_length: int) -> RTCPrefix | None:
    """Prefix from a client that keeps its own history (openpi-style `prev_chunk` + `inference_delay`).

    `prev_chunk` is (T', 200) (or (1, T', 200)) already shifted to the new chunk's timeline; when it is
    shorter than the delay, its last step is repeated (the robot holds the last action).
    """
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
            chunk = np.asarray(prev_chunk, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"prev_chunk must be a numeric (T, {UNIFIED_DIM}) array: {err}") from err
    if chunk.ndim == 3 and chunk.shape[0] == 1:
        chunk = chunk[0]
    if chunk.ndim != 2 or chunk.shape[1] != UNIFIED_DIM or chunk.shape[0] == 0:
        raise ValueError(f"prev_chunk must have shape (T, {UNIFIED_DIM}) with T >= 1, got {chunk.shape}")
    if not np.all(np.isfinite(chunk)):
        raise ValueError("prev_chunk must be finite (it contains NaN or inf, or values beyond float32)")
    length = min(check_steps(inference_delay, "inference_delay"), chunk_length)
    if length == 0:
        return None
    rows = np.minimum(np.arange(length), chunk.shape[0] - 1)
    return RTCPrefix(chunk[rows])


def check_steps(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (control steps), got {value!r}")
    return int(value)


class RTCState:
    """One client's chunk history: the last chunk, steps executed since, and the inference delay.

    The delay is `declared_delay` when given, else `ceil(last inference seconds * control_hz)`.
    Until the caller reports executed steps for the current chunk, no prefix is produced: locking
    actions whose execution status is unknown would silently replay stale ones.
    """

    def __init__(self, chunk_length: int, control_hz: float | None = None, declared_delay: int | None = None):
        if declared_delay is None and (control_hz is None or control_hz <= 0):
            raise ValueError("RTCState needs declared_delay or a positive control_hz to measure the delay")
        self.chunk_length = chunk_length
        self.control_hz = control_hz
        self.declared_delay = None if declared_delay is None else check_steps(declared_delay, "declared_delay")
        self.reset()

    def reset(self) -> None:
        """Forget the history (new episode)."""
        self.last_chunk: np.ndarray | None = None
        self.executed_steps: int | None = None
        self.last_inference_s: float | None = None

    def advance(self, steps: int) -> None:
        """Report that `steps` more actions of the last chunk were executed."""
        steps = check_steps(steps, "executed_steps")
        self.executed_steps = (self.executed_steps or 0) + steps

    def delay_steps(self, override: int | None = None) -> int:
        if override is not None:
            return check_steps(override, "inference_delay")
        if self.declared_delay is not None:
            return self.declared_delay
        if self.last_inference_s is None:
            return 0
        return math.ceil(self.last_inference_s * self.control_hz - 1e-9)

    def prefix(self, inference_delay: int | None = None) -> RTCPrefix | None:
        """The locked start of the next chunk, or None when nothing is committed."""
        if self.last_chunk is None or self.executed_steps is None:
            return None
        shift = self.executed_steps
        length = min(self.delay_steps(inference_delay), self.chunk_length - shift)
        if length <= 0:
            return None
        return RTCPrefix(self.last_chunk[shift : shift + length].copy())

    def record(self, chunk: np.ndarray, inference_s: float) -> None:
        """Store a freshly produced chunk (normalized unified (T, 200)) and its wall time."""
        self.last_chunk = np.asarray(chunk, dtype=np.float32)
        self.executed_steps = None
        self.last_inference_s = inference_s
