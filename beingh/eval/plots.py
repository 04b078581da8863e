"""Figures for the demo: a predicted action chunk against the expert's on a held-out frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ACTION_NAMES = ("dx", "dy", "dz", "grip")


def plot_action_chunk(predicted: np.ndarray, expert: np.ndarray, path: str | Path, title: str) -> Path:
    """(T, 4) predicted vs (T', 4) expert actions, one panel per action dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, predicted.shape[1], figsize=(3.2 * predicted.shape[1], 3), sharex=True)
    for dim, ax in enumerate(np.atleast_1d(axes)):
        ax.plot(np.arange(len(expert)), expert[:, dim], "o-", label="expert", color="black", markersize=3)
        ax.plot(np.arange(len(predicted)), predicted[:, dim], "s--", label="policy", color="tab:red", markersize=3)
        ax.set_title(ACTION_NAMES[dim] if dim < len(ACTION_NAMES) else f"a{dim}")
        ax.set_xlabel("chunk step")
        ax.set_ylim(-1.1, 1.1)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
