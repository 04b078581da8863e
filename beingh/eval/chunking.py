"""Action chunking shared by every simulator client, torch-free (the LIBERO client runs without torch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class ChunkPolicy(Protocol):
    """What the runner needs: `BeingHPolicy` and `PolicyClient` both provide it."""

    def get_action(self, observations: dict[str, Any], executed_steps: int | None = None) -> dict[str, Any]: ...

    def reset(self) -> None: ...


class ChunkExecutor:
    """Action chunking shared by every simulator: execute `execute_steps` actions of each chunk, then replan.

    With `rtc`, each new request carries how many actions of the previous chunk were executed, so the
    policy can lock the part of the new chunk that overlaps them.
    """

    def __init__(self, policy: ChunkPolicy, execute_steps: int, rtc: bool = False):
        if execute_steps < 1:
            raise ValueError(f"execute_steps must be >= 1, got {execute_steps}")
        self.policy, self.execute_steps, self.rtc = policy, execute_steps, rtc
        self.chunk: np.ndarray | None = None
        self.cursor = 0
        self.calls = 0

    def reset(self) -> None:
        self.policy.reset()
        self.chunk, self.cursor, self.calls = None, 0, 0

    @property
    def needs_observation(self) -> bool:
        """Whether the next `next_action` call queries the policy (so its observation must be complete)."""
        return self.chunk is None or self.cursor >= min(self.execute_steps, len(self.chunk))

    def next_action(self, observation: Callable[[], dict[str, Any]],
                    to_chunk: Callable[[dict[str, Any]], np.ndarray]) -> np.ndarray:
        """`observation()` builds the policy input (only called when replanning); `to_chunk` maps the reply."""
        if self.needs_observation:
            executed = self.cursor if (self.rtc and self.chunk is not None) else None
            chunk = to_chunk(self.policy.get_action(observation(), executed_steps=executed))
            if len(chunk) == 0:
                raise ValueError("policy returned an empty action chunk")
            self.chunk, self.cursor, self.calls = chunk, 0, self.calls + 1
        action = self.chunk[self.cursor]
        self.cursor += 1
        return action
