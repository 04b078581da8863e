"""Manifold-preserving gating (MPG): gate a residual on the action-token features by how far the
observation features are from the clean-action embeddings, measured by a sliced-Wasserstein distance.

Two semantics (`BeingHConfig.mpg_semantics`); both gate the same residual
`obs' = obs + lambda * W_e(g * W_o obs)` and differ in what `obs`, the clean embedding and `g` are.

`original` reproduces the original implementation exactly (reference/upstream_model.md §4, §9.1), bugs
included, so a checkpoint it trained runs the function it learned:
- the observation set is [zeros (the all-zero VLM buffer at the state positions, not passed through
  P_u); P_u(action-token features)];
- the clean embedding is the action encoder at bucket 0 (the NOISE end of the t convention);
- training: one gate per pack, from the pack's observation rows against the sample-averaged,
  time-mean-pooled clean embedding, with a sort-and-truncate sliced Wasserstein (`sliced_wasserstein_truncated`);
- inference: pass 0 is the plain ODE without any MPG (no P_u/P_d); each refinement pass restarts from
  fresh noise, gated (per sample) by the previous pass's result;
- projections are drawn from torch's RNG on every call unless `mpg_seed` is set.

`fixed` (beingh's own) removes those bugs, all deliberately:
- the observation set of a sample is its REAL state feature (the state encoder output, projected by
  `action_to_vlm_proj`) plus its projected action-token features;
- the clean-action embedding is the action encoder at t=1 (bucket `num_timestep_buckets`), the DATA end;
- one gate per sample (packing never changes a sample's result), comparing the observation set with the
  clean set as distributions (`sliced_wasserstein`, quantile-matched);
- training and inference run the same computation: action features always go through
  P_d((P_u e) + lambda * W_e(g * W_o P_u e)). The first inference pass has no clean estimate and uses
  g = 0 (no evidence); refinement passes start from the same noise and use the previous pass's output;
- projections are drawn once from a seeded generator (`mpg_seed`, 0 when unset).

Both are vectorised (one matmul and one sort, no Python loop, no host syncs). With stop-gradient, the gate
(and the clean embedding it needs) is computed without autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MPG_SEMANTICS = ("original", "fixed")
FIXED_DEFAULT_SEED = 0
"""Projection seed of the `fixed` semantics when `mpg_seed` is unset."""


def random_projections(dim: int, num: int, seed: int, device: torch.device) -> torch.Tensor:
    """(dim, num) unit-norm directions from a seeded CPU generator (same on every device and run)."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, num, generator=gen, dtype=torch.float32)
    return (theta / theta.norm(dim=0, keepdim=True)).to(device)


def fresh_projections(dim: int, num: int, device: torch.device) -> torch.Tensor:
    """(dim, num) unit-norm directions drawn from torch's RNG of `device` (new ones on every call)."""
    theta = torch.randn(dim, num, device=device, dtype=torch.float32)
    return theta / theta.norm(dim=0, keepdim=True)


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
    """Squared sliced-Wasserstein-2 distance between point sets, per batch element (`fixed` semantics).

    x (B, N, D), y (B, M, D), projections (D, P) unit columns -> (B,): the mean over projections of the
    squared 1-D W2 distance between the projected empirical distributions (exact when N == M; otherwise
    both quantile functions are compared at max(N, M) levels).
    """
    px = torch.sort(x.float() @ projections, dim=1).values
    py = torch.sort(y.float() @ projections, dim=1).values
    levels = max(px.shape[1], py.shape[1])
    return (_quantiles(px, levels) - _quantiles(py, levels)).pow(2).mean(dim=(1, 2))


def sliced_wasserstein_truncated(x: torch.Tensor, y: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """The original's distance (`original` semantics): project, sort, keep the first min(N, M) sorted
    values of each set, mean squared difference over values and projections. x (B, N, D), y (B, M, D) -> (B,)."""
    px = torch.sort(x.float() @ projections, dim=1).values
    py = torch.sort(y.float() @ projections, dim=1).values
    n = min(px.shape[1], py.shape[1])
    return (px[:, :n] - py[:, :n]).pow(2).mean(dim=(1, 2))


class MPGEnhancement(nn.Module):
    """obs' = obs + lambda * W_e(g * W_o obs), with g from `gate` (fixed) or `original_gate`."""

    def __init__(self, obs_dim: int, action_dim: int, emb_dim: int, num_projections: int):
        super().__init__()
        self.obs_proj = nn.Linear(obs_dim, emb_dim)
        self.action_proj = nn.Linear(action_dim, emb_dim)
        self.enhancement_proj = nn.Linear(emb_dim, obs_dim)
        self.num_projections = num_projections
        self._seeded: dict[tuple[torch.device, int], torch.Tensor] = {}

    def projections(self, device: torch.device, seed: int | None) -> torch.Tensor:
        """The directions of one call: seeded ones are built once and reused; seed None draws fresh ones."""
        dim = self.obs_proj.out_features
        if seed is None:
            return fresh_projections(dim, self.num_projections, device)
        key = (device, seed)
        if key not in self._seeded:
            self._seeded[key] = random_projections(dim, self.num_projections, seed, device)
        return self._seeded[key]

    def gate(
        self, obs_emb: torch.Tensor, clean_actions: torch.Tensor, temperature: float, projections: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`fixed`: per-sample (gate, distance), each (B,), between the LN'd observation set and clean set."""
        a = F.layer_norm(self.action_proj(clean_actions).float(), (obs_emb.shape[-1],))
        o = F.layer_norm(obs_emb.float(), (obs_emb.shape[-1],))
        distance = sliced_wasserstein(o, a, projections)
        return torch.exp(-distance / temperature), distance

    def original_gate(
        self, obs_emb: torch.Tensor, clean_actions: torch.Tensor, temperature: float, projections: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`original`: obs_emb (B_o, N, E), clean_actions (B_a, T, action_dim) -> (gate, distance), each (B_o,).

        When B_o != B_a the clean embeddings are averaged over their batch first (the original's training
        call has B_o = 1 for the whole pack); the LN'd clean set is then mean-pooled over time to one vector,
        repeated N times and compared with the LN'd observation rows by `sliced_wasserstein_truncated`.
        """
        a = self.action_proj(clean_actions)
        if a.shape[0] != obs_emb.shape[0]:
            a = a.mean(dim=0, keepdim=True)
        width = (obs_emb.shape[-1],)
        a_bar = F.layer_norm(a.float(), width).mean(dim=1, keepdim=True).expand(obs_emb.shape[0], obs_emb.shape[1], -1)
        o = F.layer_norm(obs_emb.float(), width)
        distance = sliced_wasserstein_truncated(o, a_bar, projections)
        return torch.exp(-distance / temperature), distance

    def forward(
        self,
        obs: torch.Tensor,
        clean_actions: torch.Tensor | None,
        lam: float,
        temperature: float,
        stop_gradient: bool,
        seed: int | None = FIXED_DEFAULT_SEED,
        semantics: str = "fixed",
        one_gate: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs (B, N, obs_dim), clean_actions (B, T, action_dim) or None (no evidence: g = 0).

        `one_gate` (the original's training call) computes a single gate from all B x N observation rows
        and the batch-averaged clean embedding. Returns (enhanced obs, gate (B,), distance (B,)).
        """
        if semantics not in MPG_SEMANTICS:
            raise ValueError(f"mpg semantics must be one of {MPG_SEMANTICS}, got {semantics!r}")
        obs_emb = self.obs_proj(obs)
        b = obs.shape[0]
        if clean_actions is None:
            gate = distance = torch.zeros(b, device=obs.device)
        else:
            fixed = semantics == "fixed"
            gate_fn = self.gate if fixed else self.original_gate
            gate_obs = obs_emb.reshape(1, -1, obs_emb.shape[-1]) if one_gate else obs_emb
            projections = self.projections(obs.device, FIXED_DEFAULT_SEED if fixed and seed is None else seed)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not stop_gradient):
                gate, distance = gate_fn(gate_obs, clean_actions, temperature, projections)
            gate, distance = gate.expand(b), distance.expand(b)
        scaled = obs_emb * gate.to(obs_emb.dtype)[:, None, None]
        return obs + lam * self.enhancement_proj(scaled), gate.detach(), distance.detach()
