"""Optimizer groups and LR schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from beingh.train.optim import build_optimizer, build_scheduler, lr_multiplier, num_warmup_steps, param_groups


def test_weight_decay_on_matrices_only_and_frozen_excluded():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    decayed, undecayed = groups
    assert decayed["weight_decay"] == 0.1 and undecayed["weight_decay"] == 0.0
    assert [p.shape for p in decayed["params"]] == [torch.Size([4, 4])]
    assert {id(p) for p in undecayed["params"]} == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
        id(model[2].bias),
    }


def test_all_frozen_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, 0.0)


def test_cosine_schedule_warmup_and_end():
    max_steps, warmup = 100, num_warmup_steps(100, 0.05)
    assert warmup == 5
    fn = lr_multiplier("cosine", max_steps, warmup, min_lr_ratio=0.01)
    assert fn(0) == pytest.approx(0.2)
    assert fn(4) == pytest.approx(1.0)
    assert fn(5) == pytest.approx(1.0)
    assert fn(max_steps - 1) == pytest.approx(0.01)
    mid = warmup + (max_steps - warmup - 1) / 2
    assert fn(int(mid)) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * int(mid - warmup) / 94)))
    values = [fn(s) for s in range(warmup, max_steps)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_schedule_and_no_warmup():
    fn = lr_multiplier("constant", 50, 0, 0.0)
    assert {fn(s) for s in range(50)} == {1.0}


def test_scheduler_drives_optimizer_lr():
    model = nn.Linear(3, 3)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    sched = build_scheduler(opt, "cosine", max_steps=10, warmup_ratio=0.2, lr=1e-3, min_lr=1e-5)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
