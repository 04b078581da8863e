"""Simulator <-> policy dictionaries, driven by a data config so eval sees exactly what training saw.

The simulator side is expressed in dataset columns (e.g. `observation.state` = [eef xyz, axis-angle,
gripper qpos] for LIBERO), and the data config cuts/places each `state.*` / `action.*` key at the
`[start:end]` of its source column, the same slicing training used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from beingh.data.embodiment import BaseDataConfig
from beingh.data.transforms import slice_modalities


def policy_observation(data_config: BaseDataConfig, state_columns: dict[str, np.ndarray],
                       images: dict[str, np.ndarray], instruction: str) -> dict[str, Any]:
    """Columns (1-D vectors) + camera images keyed by dataset column -> `video.*`/`state.*`/language dict."""
    obs: dict[str, Any] = {"language.instruction": instruction}
    for video_key in data_config.VIDEO_KEYS:
        column = data_config.VIDEO_SOURCE_COLUMNS[video_key]
        if column not in images:
            raise KeyError(f"{video_key}: camera column {column!r} missing (have {sorted(images)})")
        obs[video_key] = images[column]
    columns = {k: np.asarray(v, dtype=np.float64).reshape(1, -1) for k, v in state_columns.items()}
    for key, value in slice_modalities(data_config, columns, list(data_config.STATE_KEYS)).items():
        obs[key] = value[0].astype(np.float32)
    return obs


def action_columns(data_config: BaseDataConfig, reply: dict[str, Any]) -> dict[str, np.ndarray]:
    """Policy reply `action.*` (T, d) arrays -> {source column: (T, width)} with each key at its [start:end].

    Dims of a column that no action key maps (e.g. RoboCasa's `action[:, :7]`, whose arm part the config
    reads from `world_delta_action`) are zero; callers take only the dims they know.
    """
    missing = [k for k in data_config.ACTION_KEYS if k not in reply]
    if missing:
        raise KeyError(f"policy reply lacks {missing}; got {sorted(reply)}")
    parts: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    horizon = None
    for key in data_config.ACTION_KEYS:
        mod = data_config.modality(key)
        value = np.asarray(reply[key], dtype=np.float64)
        value = value.reshape(len(value), -1)
        if value.shape[1] != mod.end - mod.start:
            raise ValueError(f"{key}: expected width {mod.end - mod.start}, got shape {value.shape}")
        if horizon is not None and len(value) != horizon:
            raise ValueError(f"{key}: chunk length {len(value)} differs from the other keys ({horizon})")
        horizon = len(value)
        parts.setdefault(mod.source_column, []).append((mod.start, mod.end, value))
    out = {}
    for column, pieces in parts.items():
        width = max(end for _, end, _ in pieces)
        array = np.zeros((horizon, width), dtype=np.float64)
        for start, end, value in pieces:
            array[:, start:end] = value
        out[column] = array
    return out
