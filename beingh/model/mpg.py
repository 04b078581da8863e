"""Manifold-preserving gating (MPG): gate a residual on the action-token features by how far the
observation features are from the clean-action embeddings, measured by a sliced-Wasserstein distance.

Differences from the original (reference/upstream_model.md §4, §9.1), all deliberate:
- The observation set of a sample is its REAL state feature (the state encoder output, i.e. the expert-stream
  state token input, projected to the VLM width by `action_to_vlm_proj`) plus its projected action-token
  features. The original read an all-zero VLM buffer for the state.
- The clean-action embedding is the action encoder at t=1 (bucket `num_timestep_buckets`), the DATA end of
  our time convention (the original used bucket 0, the noise end).
- One gate per sample (the original averaged the action embeddings over the pack), so packing never
  changes a sample's result.
- Training and inference run the same computation: action features always go through
  P_d((P_u e) + lambda * W_e(g * W_o P_u e)). At inference the first pass has no clean estimate yet and uses
  g = 0 (no evidence); refinement passes use the previous pass's output.
- Projections are drawn once from a seeded generator (deterministic, identical at train and inference);
  the distance is vectorised (one matmul and one sort, no Python loop, no host syncs).
- With stop-gradient, the gate (and the clean embedding it needs) is computed without autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def random_projections(dim: int, num: int, seed: int, device: torch.device) -> torch.Tensor:
    """(dim, num) unit-norm directions from a seeded CPU generator (same on every device and run)."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, num, generator=gen, dtype=torch.float32)
    return (theta / theta.norm(dim=0, keepdim=True)).to(device)


def _quantiles(sorted_values: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Linear interpolation of sorted values (B, N, P) at quantile levels (k + 0.5) / num_levels."""
    n = sorted_values.shape[1]
    if n == num_levels:
        return sorted_values
    levels = (torch.arange(num_levels, device=sorted_values.device, dtype=torch.float32) + 0.5) / num_levels
    pos = (levels * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.float())[None, :, None]
    return sorted_values[:, lo] * (1 - w) + sorted_values[:, hi] * w


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """Squared sliced-Wasserstein-2 distance between point sets, per batch element.

    x (B, N, D), y (B, M, D), projections (D, P) unit columns -> (B,): the mean over projections of the
    squared 1-D W2 distance between the projected empirical distributions (exact when N == M; otherwise
    both quantile functions are compared at max(N, M) levels).
    """
    px = torch.sort(x.float() @ projections, dim=1).values
    py = torch.sort(y.float() @ projections, dim=1).values
    levels = max(px.shape[1], py.shape[1])
    return (_quantiles(px, levels) - _quantiles(py, levels)).pow(2).mean(dim=(1, 2))


class MPGEnhancement(nn.Module):
    """obs' = obs + lambda * W_e(g * W_o obs), g = exp(-SW(LN(W_o obs), LN(W_a clean)) / temperature)."""

    def __init__(self, obs_dim: int, action_dim: int, emb_dim: int, num_projections: int, seed: int):
        super().__init__()
        self.obs_proj = nn.Linear(obs_dim, emb_dim)
        self.action_proj = nn.Linear(action_dim, emb_dim)
        self.enhancement_proj = nn.Linear(emb_dim, obs_dim)
        self.num_projections = num_projections
        self.seed = seed
        self._projections: dict[torch.device, torch.Tensor] = {}

    def projections(self, device: torch.device) -> torch.Tensor:
        if device not in self._projections:
            dim = self.obs_proj.out_features
            self._projections[device] = random_projections(dim, self.num_projections, self.seed, device)
        return self._projections[device]

    def gate(
        self, obs_emb: torch.Tensor, clean_actions: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (gate, distance), each (B,)."""
        a = F.layer_norm(self.action_proj(clean_actions).float(), (obs_emb.shape[-1],))
        o = F.layer_norm(obs_emb.float(), (obs_emb.shape[-1],))
        distance = sliced_wasserstein(o, a, self.projections(obs_emb.device))
        return torch.exp(-distance / temperature), distance

    def forward(
        self,
        obs: torch.Tensor,
        clean_actions: torch.Tensor | None,
        lam: float,
        temperature: float,
        stop_gradient: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs (B, N, obs_dim), clean_actions (B, T, action_dim) or None (no evidence: g = 0).

        Returns (enhanced obs, gate (B,), distance (B,)).
        """
        obs_emb = self.obs_proj(obs)
        if clean_actions is None:
            gate = distance = torch.zeros(obs.shape[0], device=obs.device)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not stop_gradient):
                gate, distance = self.gate(obs_emb, clean_actions, temperature)
        scaled = obs_emb * gate.to(obs_emb.dtype)[:, None, None]
        return obs + lam * self.enhancement_proj(scaled), gate.detach(), distance.detach()
