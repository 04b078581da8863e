"""Per-modality normalization with exact inverses.

| mode       | forward                                   | inverse                         |
|------------|-------------------------------------------|---------------------------------|
| `q99`      | clip(2 (x - q01) / (q99 - q01) - 1, -1, 1) | (y + 1) / 2 (q99 - q01) + q01   |
| `mean_std` | (x - mean) / std                          | y std + mean                    |
| `min_max`  | 2 (x - min) / (max - min) - 1 (no clip)   | (y + 1) / 2 (max - min) + min   |
| `scale`    | x / max(|min|, |max|)                     | y max(|min|, |max|)             |
| `binary`   | 1[x > (min + max) / 2]                    | max if y > 0.5 else min         |
| `none`     | x                                         | x                               |

`q99` clips, so its inverse is exact only for x inside [q01, q99]. `binary` maps a two-valued signal
(e.g. a -1/+1 gripper) to 0/1 and back to the two raw values, so it is exact on two-valued data; the
inverse is how a continuous model output is binarized. Degenerate dimensions (q01 == q99, std == 0,
min == max, scale 0) use unit scale about the centre: y = x - centre, x = y + centre. That is finite,
exactly invertible, and gives 0 for the constant value the statistics saw. (The reference passed such
dims through raw, or output a constant 0 that has no inverse.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beingh.data.stats import ColumnStats

NORMALIZATION_MODES = ("q99", "mean_std", "min_max", "scale", "binary", "none")
_DEGENERATE = 1e-8


def check_mode(mode: str, where: str) -> str:
    if mode not in NORMALIZATION_MODES:
        raise ValueError(f"{where}: unknown normalization mode {mode!r}; known: {list(NORMALIZATION_MODES)}")
    return mode


@dataclass
class Normalizer:
    """One modality's per-dim map, precomputed from statistics.

    Every continuous mode is written y = (x - offset) / scale, clipped to [-1, 1] on the dims in `clip`,
    so forward and inverse share one pair of arrays and the degenerate-dim rule lives in one place.
    `low`/`high` are the two raw values of a `binary` modality.
    """

    mode: str
    offset: np.ndarray
    scale: np.ndarray
    clip: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def identity(cls, dim: int) -> Normalizer:
        zeros, ones = np.zeros(dim), np.ones(dim)
        return cls("none", zeros, ones, np.zeros(dim, dtype=bool), zeros, ones)

    @classmethod
    def from_stats(cls, mode: str, stats: ColumnStats | None, dim: int, where: str = "normalizer") -> Normalizer:
        """Build the map for `mode`; `stats` may be None only for `none`. `where` names the key in errors."""
        check_mode(mode, where)
        if mode == "none":
            return cls.identity(dim)
        if stats is None:
            raise ValueError(f"{where}: mode {mode!r} needs statistics, but none were given")
        if stats.dim != dim:
            raise ValueError(f"{where}: statistics have {stats.dim} dims, the modality has {dim}")
        low, high = stats.min, stats.max
        if mode == "binary":
            return cls(mode, (low + high) / 2, np.ones(dim), np.zeros(dim, dtype=bool), low, high)
        if mode == "q99":
            if not stats.has_quantiles:
                raise ValueError(f"{where}: mode 'q99' needs q01/q99 statistics, which the metadata lacks")
            offset, span = (stats.q01 + stats.q99) / 2, (stats.q99 - stats.q01) / 2
        elif mode == "min_max":
            offset, span = (low + high) / 2, (high - low) / 2
        elif mode == "mean_std":
            offset, span = stats.mean, stats.std
        else:
            offset, span = np.zeros(dim), np.maximum(np.abs(low), np.abs(high))
        degenerate = np.abs(span) < _DEGENERATE
        clip = ~degenerate if mode == "q99" else np.zeros(dim, dtype=bool)
        return cls(mode, offset, np.where(degenerate, 1.0, span), clip, low, high)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.mode == "binary":
            return (x > self.offset).astype(np.float64)
        y = (x - self.offset) / self.scale
        return np.where(self.clip, np.clip(y, -1.0, 1.0), y)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if self.mode == "binary":
            return np.where(y > 0.5, self.high, self.low)
        return y * self.scale + self.offset
