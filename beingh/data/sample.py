"""One training/inference sample before tokenization and packing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RobotSample:
    """A sample in the unified space, ready for the prompt builder and the packer.

    Built by the sample builder from a LeRobot frame (training) or by the policy from an
    observation (inference, where `action` is zeros and `action_mask` all False).
    """

    images: list[np.ndarray]
    """One (H, W, 3) uint8 RGB frame per selected view, in view order."""
    state: np.ndarray
    """(200,) float32 normalized unified state (zeros in unused slots)."""
    action: np.ndarray
    """(T, 200) float32 normalized unified action chunk."""
    action_mask: np.ndarray
    """(T, 200) bool: valid unified dims at chunk steps inside the episode."""
    instruction: str
    """Task text (without the prompt template)."""
    embodiment_id: int
