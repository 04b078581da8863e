"""Checks at the edges of inference: what a request may contain and what an answer may be.

A request is refused with an `ObservationError` naming the field; a model output that is not finite is
a `NonFiniteActionError`, never an answer. `BeingHPolicy` and the server call these; each is one
function so the policy's code stays a few call lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from beingh.data.embodiment import EMBODIMENT_TAGS
from beingh.inference.protocol import ObservationError

DEFAULT_MAX_INSTRUCTION_TOKENS = 256
"""Instruction length cap: attention over the prompt is quadratic, so one huge instruction would stall
every client of a server (a 32 K-character one took 108 s and 5 GB)."""
MAX_CHARS_PER_TOKEN = 16
"""Longer instructions are refused before tokenizing (natural-language tokens average ~4 characters)."""


class NonFiniteActionError(RuntimeError):
    """The model produced NaN or infinite actions (e.g. from extreme but finite inputs)."""


def check_observation_map(observations: Any) -> None:
    """An observation is a dict with string keys."""
    if not isinstance(observations, Mapping):
        raise ObservationError(
            f"an observation must be a dict of observation keys to values, got {type(observations).__name__}")
    for key in observations:
        if not isinstance(key, str):
            raise ObservationError(f"observation keys must be strings, got {key!r} ({type(key).__name__})")


def check_unified_state(state_slots: Mapping[str, Any], unified_state: np.ndarray) -> None:
    """After normalization every state slot must be finite (a huge raw value overflows float32 there).

    `state_slots` maps `state.<key>` to its transform (with `slot`: its (start, end) in the 200-dim vector).
    """
    for key, transform in state_slots.items():
        values = unified_state[transform.slot[0] : transform.slot[1]]
        if not np.all(np.isfinite(values)):
            raise ObservationError(f"{key} is not finite after normalization (got {values.tolist()}): the raw "
                                   "values are far outside the range of the checkpoint's statistics")


def check_finite_actions(actions: Mapping[str, Any]) -> None:
    """Every float array of an answer must be finite."""
    for key, value in actions.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            steps = sorted({int(i) for i in np.argwhere(~np.isfinite(value))[:, 0]}) if value.ndim else []
            raise NonFiniteActionError(f"{key} is not finite (chunk steps {steps[:16]}); no actions were sent")


def check_instruction_length(tokenizer: Any, instruction: str, max_tokens: int) -> None:
    """Refuse an instruction longer than `max_tokens` tokens (the length alone decides past 16 chars/token)."""
    if len(instruction) > max_tokens * MAX_CHARS_PER_TOKEN:
        raise ObservationError(f"language.instruction has {len(instruction)} characters; the limit is "
                               f"{max_tokens} tokens (max_instruction_tokens)")
    count = len(tokenizer.encode(instruction, add_special_tokens=False))
    if count > max_tokens:
        raise ObservationError(f"language.instruction has {count} tokens; the limit is {max_tokens} "
                               "(max_instruction_tokens)")


def check_embodiment_tag(tag: str, trained_tag: str | None) -> None:
    """A tag must be registered, or be the (custom) tag the checkpoint's statistics were computed for."""
    if tag not in EMBODIMENT_TAGS and tag != trained_tag:
        raise ValueError(f"embodiment_tag {tag!r} is unknown: known tags are {sorted(EMBODIMENT_TAGS)}"
                         + (f" and this checkpoint's {trained_tag!r}" if trained_tag else "")
                         + " (register a new robot with register_embodiment_tag)")


def check_positive(name: str, value: float | int | None) -> None:
    """A given (not None) count or rate must be > 0: 0 never silently means 'the default'."""
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0 (or None for the default), got {value!r}")
