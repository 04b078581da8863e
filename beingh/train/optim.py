"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine/constant LR schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group (>= 2-D weights) and an undecayed one.

    Norm weights, biases and other vectors are not decayed; frozen parameters are left out entirely
    (the reference put both in one decayed group).
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("no trainable parameters: the freeze options froze the whole model")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float
) -> torch.optim.AdamW:
    # foreach is the fast path for DTensor (FSDP2) parameters; fused needs CUDA-only tensors.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=True)


def num_warmup_steps(max_steps: int, warmup_ratio: float) -> int:
    return int(math.ceil(max_steps * warmup_ratio))


def lr_multiplier(
    kind: str, max_steps: int, warmup_steps: int, min_lr_ratio: float
) -> Callable[[int], float]:
    """Multiplier of the base LR at optimizer step `step` (0-based: the LR used by the step-th update).

    Linear warmup from lr/W to lr over `warmup_steps`, then `constant` or a half cosine that ends at
    `min_lr_ratio * lr` on the last step.
    """
    if kind not in ("cosine", "constant"):
        raise ValueError(f"lr_scheduler must be 'cosine' or 'constant', got {kind!r}")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        decay_steps = max(1, max_steps - warmup_steps - 1)
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, max_steps: int, warmup_ratio: float, lr: float, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    min_ratio = min_lr / lr if lr > 0 else 0.0
    fn = lr_multiplier(kind, max_steps, num_warmup_steps(max_steps, warmup_ratio), min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
