"""Flow matching in the GR00T convention: t=0 is pure noise, t=1 is data (reference/upstream_model.md §2.2)."""

from __future__ import annotations

import torch

from beingh.model.config import BeingHConfig


def sample_time(config: BeingHConfig, batch_size: int, device: torch.device) -> torch.Tensor:
    """t = (s_max - s) / s_max with s ~ Beta(alpha, beta): favours the noisy end. (B,) fp32."""
    beta = torch.distributions.Beta(
        torch.tensor(config.noise_beta_alpha, device=device),
        torch.tensor(config.noise_beta_beta, device=device),
    )
    s = beta.sample((batch_size,))
    return (config.noise_s - s) / config.noise_s


def time_buckets(t: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """floor(num_buckets * t) in fp32, clamped to [0, num_buckets] (t may dip to -0.001 by design)."""
    return torch.clamp(torch.floor(t.float() * num_buckets), 0, num_buckets).long()


def interpolate(
    actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = (1 - t) eps + t a and the velocity target a - eps. `t` broadcasts over the action dims."""
    t = t[..., None]
    return (1.0 - t) * noise + t * actions, actions - noise


def masked_squared_error(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of squared errors over the True entries of `mask`, number of True entries), in fp32."""
    m = mask.float()
    return ((pred.float() - target.float()).pow(2) * m).sum(), m.sum()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the True entries of `mask`, in fp32 (0 when nothing is valid)."""
    total, count = masked_squared_error(pred, target, mask)
    return total / (count + 1e-8)
