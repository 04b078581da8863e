"""The 200-dim unified state/action space: the one table of semantic slots and mapping validation.

Every embodiment scatters its state and action modalities into fixed slots of a 200-dim vector so one
model can serve many robots (reference/guide_unified_action_space.md). Slots are half-open `(start, end)`.
"""

from __future__ import annotations

from collections.abc import Mapping

from beingh.layout import UNIFIED_DIM

UNIFIED_SLOTS: dict[str, tuple[int, int]] = {
    "eef_position": (0, 3),
    "eef_rotation": (3, 6),
    "left_eef_position": (9, 12),
    "left_eef_rotation": (12, 15),
    "gripper_position": (18, 19),
    "left_gripper_position": (19, 20),
    "dexhand_position": (20, 26),
    "left_dexhand_position": (32, 38),
    "libero_gripper_position": (44, 46),
    "arm_joint_position": (50, 57),
    "left_arm_joint_position": (57, 64),
    "head_position": (64, 66),
    "waist_position": (66, 69),
    "base_position": (70, 73),
    "base_motion": (73, 74),
    "control_mode": (74, 75),
    "right_beta": (90, 100),
    "left_beta": (100, 110),
    "right_theta": (110, 155),
    "left_theta": (155, 200),
}
"""Semantic slot name -> (start, end), as documented in the unified action space guide.

Configs may use other ranges (the released RoboCasa config maps `state.base_rotation` to 73:76 and
`action.base_motion` to 70:74); the table names the intended layout, `validate_unified_mapping` checks
any mapping."""

MODALITY_GROUPS = ("state", "action")


def slot(name: str) -> tuple[int, int]:
    """The `(start, end)` of a semantic slot; unknown names raise with the list of known ones."""
    if name not in UNIFIED_SLOTS:
        raise ValueError(f"unknown unified slot {name!r}; known slots: {sorted(UNIFIED_SLOTS)}")
    return UNIFIED_SLOTS[name]


def modality_group(key: str) -> str:
    """'state' or 'action' for a logical key such as 'state.eef_position'."""
    group = key.split(".", 1)[0]
    if group not in MODALITY_GROUPS or "." not in key:
        raise ValueError(f"modality key {key!r} must start with 'state.' or 'action.'")
    return group


def validate_unified_mapping(mapping: Mapping[str, tuple[int, int]], owner: str = "UNIFIED_MAPPING") -> None:
    """Check ranges lie in [0, 200) and that no two state (or two action) keys share a dim.

    State and action are separate vectors, so a state key and an action key may use the same slot.
    """
    taken: dict[str, dict[int, str]] = {group: {} for group in MODALITY_GROUPS}
    for key, span in mapping.items():
        group = modality_group(key)
        if len(span) != 2:
            raise ValueError(f"{owner}[{key!r}] = {span!r}: expected a (start, end) pair")
        start, end = int(span[0]), int(span[1])
        if not 0 <= start < end <= UNIFIED_DIM:
            raise ValueError(f"{owner}[{key!r}] = {span!r}: need 0 <= start < end <= {UNIFIED_DIM}")
        for dim in range(start, end):
            other = taken[group].get(dim)
            if other is not None:
                raise ValueError(f"{owner}: {key!r} {span!r} overlaps {other!r} at unified dim {dim}")
            taken[group][dim] = key
