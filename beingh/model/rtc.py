"""Real-time chunking: simulated inference delays at training time and prefix locking at inference.

A delay d means the first d steps of the chunk are already committed (executed while the model thinks):
at training those steps get t=1 (clean data) and no loss; at inference they are held fixed at the
previous chunk's values and encoded at t=1.
"""

from __future__ import annotations

import torch


def delay_distribution(max_delay: int, exp_weight: bool) -> torch.Tensor:
    """P(d) for d in [0, max_delay): proportional to exp(-d) (softmax, no overflow) or uniform."""
    logits = -torch.arange(max_delay, dtype=torch.float32) if exp_weight else torch.zeros(max_delay)
    return torch.softmax(logits, dim=0)


def sample_delays(
    batch_size: int, max_delay: int, exp_weight: bool, chunk_length: int, device: torch.device
) -> torch.Tensor:
    """(B,) int64 delays, clamped to the chunk length; all zero when `max_delay` is 0 (RTC off)."""
    if max_delay <= 0:
        return torch.zeros(batch_size, dtype=torch.long, device=device)
    probs = delay_distribution(max_delay, exp_weight).to(device)
    return torch.multinomial(probs, batch_size, replacement=True).clamp(max=chunk_length)


def prefix_mask(delays: torch.Tensor, chunk_length: int) -> torch.Tensor:
    """(B, T) bool, True on the committed prefix steps j < d_b."""
    return torch.arange(chunk_length, device=delays.device)[None, :] < delays[:, None]


def fit_prefix(prefix_actions: torch.Tensor, chunk_length: int) -> torch.Tensor:
    """Truncate a (B, T', A) previous chunk to T steps, or pad it by repeating its last step."""
    if prefix_actions.ndim != 3 or prefix_actions.shape[1] == 0:
        raise ValueError(f"prefix_actions must be (B, T', A) with T' >= 1, got {tuple(prefix_actions.shape)}")
    steps = prefix_actions.shape[1]
    if steps >= chunk_length:
        return prefix_actions[:, :chunk_length]
    tail = prefix_actions[:, -1:].expand(-1, chunk_length - steps, -1)
    return torch.cat([prefix_actions, tail], dim=1)
