"""Embodiment <-> unified-space transforms: one code path for training samples and policy I/O.

Forward (state and action): raw modality values -> [relative to state] -> rotation to axis-angle ->
normalize -> scatter into the 200-dim vector. Inverse (actions at inference): gather the slot ->
unnormalize -> rotation back to the stored type -> [add the current state back].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from beingh.data.embodiment import TARGET_ROTATION_TYPE, BaseDataConfig, ModalityDef
from beingh.data.metadata import DatasetMetadata
from beingh.data.normalize import Normalizer
from beingh.data.rotation import convert_rotation
from beingh.data.stats import ColumnStats
from beingh.layout import UNIFIED_DIM

_AXIS_ANGLE_BOUNDS = ColumnStats(mean=np.zeros(3), std=np.ones(3), min=np.full(3, -math.pi),
                                 max=np.full(3, math.pi), q01=np.full(3, -math.pi), q99=np.full(3, math.pi))
"""Fixed min_max bounds of converted rotations: dataset statistics describe the stored representation
(e.g. a quaternion), not the axis-angle the model sees."""


@dataclass
class KeyTransform:
    """The forward/inverse map of one state or action key."""

    key: str
    modality: ModalityDef
    slot: tuple[int, int]
    normalizer: Normalizer

    @classmethod
    def build(cls, data_config: BaseDataConfig, metadata: DatasetMetadata, key: str) -> KeyTransform:
        mod = data_config.modality(key)
        mode = data_config.normalization_mode(key)
        where = f"{data_config.name}[{key!r}] (embodiment {metadata.embodiment_tag!r})"
        if mode == "none":
            normalizer = Normalizer.identity(mod.unified_width)
        else:
            stats = _AXIS_ANGLE_BOUNDS if mod.converts_rotation else metadata.stats_for(key)
            if stats is None:
                raise ValueError(f"{where}: normalization {mode!r} needs statistics for {key!r}, but the "
                                 f"metadata has none (keys: {sorted(metadata.statistics.get('state', {}))} / "
                                 f"{sorted(metadata.statistics.get('action', {}))})")
            normalizer = Normalizer.from_stats(mode, stats, mod.unified_width, where=where)
        return cls(key, mod, tuple(data_config.UNIFIED_MAPPING[key]), normalizer)

    def to_unified(self, raw: np.ndarray) -> np.ndarray:
        """(..., width) raw values -> (..., unified_width) normalized values."""
        x = np.asarray(raw, dtype=np.float64)
        if x.shape[-1:] != (self.modality.width,):
            raise ValueError(f"{self.key}: expected last dim {self.modality.width}, got shape {x.shape}")
        if self.modality.converts_rotation:
            x = convert_rotation(x, self.modality.rotation_type, TARGET_ROTATION_TYPE)
        return self.normalizer.forward(x)

    def from_unified(self, values: np.ndarray) -> np.ndarray:
        """(..., unified_width) normalized values -> (..., width) raw values."""
        x = self.normalizer.inverse(values)
        if self.modality.converts_rotation:
            x = convert_rotation(x, TARGET_ROTATION_TYPE, self.modality.rotation_type)
        return x


def slice_modalities(data_config: BaseDataConfig, columns: Mapping[str, np.ndarray], keys: list[str]
                     ) -> dict[str, np.ndarray]:
    """Cut each key's `[start:end]` out of its raw column arrays ((n, D) -> (n, width))."""
    out = {}
    for key in keys:
        mod = data_config.modality(key)
        if mod.source_column not in columns:
            raise ValueError(f"{key}: column {mod.source_column!r} missing (have {sorted(columns)})")
        values = np.asarray(columns[mod.source_column])
        values = values.reshape(len(values), -1)
        if values.shape[1] < mod.end:
            raise ValueError(f"{key}: column {mod.source_column!r} has {values.shape[1]} dims, "
                             f"the config slices [{mod.start}:{mod.end}]")
        out[key] = values[:, mod.start:mod.end]
    return out


class EmbodimentTransform:
    """State/action <-> unified 200-dim vectors for one embodiment config and its metadata."""

    def __init__(self, data_config: BaseDataConfig, metadata: DatasetMetadata):
        self.data_config = data_config
        self.metadata = metadata
        self.state = {k: KeyTransform.build(data_config, metadata, k) for k in data_config.STATE_KEYS}
        self.action = {k: KeyTransform.build(data_config, metadata, k) for k in data_config.ACTION_KEYS}
        self.relative = dict(data_config.ACTION_RELATIVE_TO_STATE)

    @staticmethod
    def _unified_mask(transforms: Mapping[str, KeyTransform]) -> np.ndarray:
        mask = np.zeros(UNIFIED_DIM, dtype=bool)
        for t in transforms.values():
            mask[t.slot[0]:t.slot[1]] = True
        return mask

    @property
    def state_dims(self) -> np.ndarray:
        """(200,) bool: unified dims this embodiment's state fills."""
        return self._unified_mask(self.state)

    @property
    def action_dims(self) -> np.ndarray:
        """(200,) bool: unified dims this embodiment's actions fill."""
        return self._unified_mask(self.action)

    def _state_vector(self, state: Mapping[str, np.ndarray], key: str) -> np.ndarray:
        if key not in state:
            raise ValueError(f"{self.data_config.name}: observation lacks {key!r} (got {sorted(state)})")
        value = np.asarray(state[key], dtype=np.float64)
        width = self.data_config.modality(key).width
        if value.size != width:
            raise ValueError(f"{key}: expected {width} values (shape ({width},) or (1, {width})), got {value.shape}")
        return value.reshape(width)

    def state_to_unified(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
        """{'state.<key>': (d,) or (1, d) raw} -> (200,) float32 normalized unified state."""
        out = np.zeros(UNIFIED_DIM, dtype=np.float32)
        for key, t in self.state.items():
            out[t.slot[0]:t.slot[1]] = t.to_unified(self._state_vector(state, key))
        return out

    def actions_to_unified(self, actions: Mapping[str, np.ndarray], valid: np.ndarray,
                           state: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """{'action.<key>': (T, d) raw}, valid (T,) bool -> ((T, 200) float32 action, (T, 200) bool mask).

        The mask is True on this embodiment's dims at valid steps only (padded steps carry no loss).
        """
        valid = np.asarray(valid, dtype=bool)
        chunk = np.zeros((len(valid), UNIFIED_DIM), dtype=np.float32)
        for key, t in self.action.items():
            values = np.asarray(actions[key], dtype=np.float64)
            if key in self.relative:
                if state is None:
                    raise ValueError(f"{key} is relative to {self.relative[key]!r}: the state is required")
                values = values - self._state_vector(state, self.relative[key])
            chunk[:, t.slot[0]:t.slot[1]] = t.to_unified(values)
        return chunk, valid[:, None] & self.action_dims[None, :]

    def unified_to_actions(self, chunk: np.ndarray, state: Mapping[str, np.ndarray] | None = None
                           ) -> dict[str, np.ndarray]:
        """(T, 200) normalized unified chunk -> {'action.<key>': (T, d) float32 raw actions}.

        `state` (raw, as given to `state_to_unified`) is needed only for ACTION_RELATIVE_TO_STATE keys.
        """
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != UNIFIED_DIM:
            raise ValueError(f"unified action chunk must be (T, {UNIFIED_DIM}), got {chunk.shape}")
        out = {}
        for key, t in self.action.items():
            values = t.from_unified(chunk[:, t.slot[0]:t.slot[1]])
            if key in self.relative:
                if state is None:
                    raise ValueError(f"{key} is relative to {self.relative[key]!r}: pass the current state")
                values = values + self._state_vector(state, self.relative[key])
            out[key] = values.astype(np.float32)
        return out
