"""State encoder, flow-matching action encoder (with a sinusoidal time embedding) and velocity decoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SimpleMLP(nn.Module):
    """Linear -> ReLU -> Linear (the state encoder and the velocity decoder)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.layer1 = nn.Linear(in_dim, hidden)
        self.layer2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(F.relu(self.layer1(x)))


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(tau w_i), cos(tau w_i)], w_i = exp(-i ln(10000) / (dim/2)); computed in fp32. (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    angles = timesteps.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ActionEncoder(nn.Module):
    """e = W3 swish(W2 [W1 a ; PE(bucket)]), one time bucket per action token (per-token for RTC)."""

    def __init__(self, action_dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.W1 = nn.Linear(action_dim, hidden)
        self.W2 = nn.Linear(2 * hidden, hidden)
        self.W3 = nn.Linear(hidden, hidden)

    def forward(self, actions: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        """actions (B, T, A), buckets (B, T) integer time buckets -> (B, T, hidden)."""
        if buckets.shape != actions.shape[:-1]:
            raise ValueError(f"buckets {tuple(buckets.shape)} must match actions {tuple(actions.shape[:-1])}")
        a = self.W1(actions.to(self.W1.weight.dtype))
        pe = sinusoidal_embedding(buckets, self.hidden).to(a.dtype)
        return self.W3(F.silu(self.W2(torch.cat([a, pe], dim=-1))))
