"""Loss normalisation of a step (`pack` vs `global`) on 2 gloo processes with FSDP2, against the gradient
of the same loss computed in one process by hand; and the non-finite guard's counting."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from beingh.model.flow import masked_squared_error
from beingh.train.loss import (
    NonFiniteGuard,
    NonFiniteStepError,
    micro_batch_objective,
    normalize_gradients,
    step_statistics,
)

WORLD, ACCUM = 2, 2
PACK_SIZES = (3, 1, 5, 2)
"""Rows of the four packs of one step; global pack i goes to rank i % WORLD, accumulation slot i // WORLD."""


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _packs() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(inputs, targets, valid mask) per pack; packs differ in size and in valid elements."""
    gen = torch.Generator().manual_seed(1)
    packs = []
    for rows in PACK_SIZES:
        mask = torch.rand(rows, 3, generator=gen) > 0.3
        mask[0, 0] = True
        packs.append((torch.randn(rows, 4, generator=gen), torch.randn(rows, 3, generator=gen), mask))
    return packs


def _output(model: nn.Module, pack) -> SimpleNamespace:
    """The fields of a `BeingHOutput` the step needs, for a masked-MSE toy model."""
    x, y, mask = pack
    total, count = masked_squared_error(model(x), y, mask)
    return SimpleNamespace(loss=total / (count + 1e-8), action_loss_sum=total, num_action_elements=count)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, normalization: str, out_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from beingh.train.distributed import apply_fsdp, init_distributed, shutdown_distributed

    info = init_distributed()
    model = _toy_model()
    apply_fsdp(model, [model[0], model[2]], info)
    packs = _packs()
    outputs = []
    for micro in range(ACCUM):
        model.set_requires_gradient_sync(micro == ACCUM - 1)
        output = _output(model, packs[micro * WORLD + rank])
        micro_batch_objective(output, normalization, ACCUM).backward()
        outputs.append(output)
    finite, total = step_statistics(outputs)
    params = list(model.parameters())
    if normalization == "global":
        normalize_gradients(params, total, info.world_size)
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    if rank == 0:
        torch.save({"grads": grads, "finite": finite, "total": total}, out_file)
    shutdown_distributed()


def _two_process_step(normalization: str, tmp_path) -> dict:
    out_file = tmp_path / f"{normalization}.pt"
    mp.spawn(_rank_main, args=(_free_port(), normalization, str(out_file)), nprocs=WORLD, join=True)
    return torch.load(out_file)


def _reference_grads(loss_of) -> dict[str, torch.Tensor]:
    model = _toy_model()
    loss_of(model, [_output(model, pack) for pack in _packs()]).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_global_normalisation_on_two_processes_equals_one_process_over_all_packs(tmp_path):
    result = _two_process_step("global", tmp_path)
    valid = sum(int(mask.sum()) for _, _, mask in _packs())
    assert result["finite"] and result["total"] == valid
    # One process, all four packs at once: every valid element weighs 1 / (all valid elements).
    expected = _reference_grads(lambda _, outs: sum(o.action_loss_sum for o in outs) / valid)
    for name, grad in expected.items():
        torch.testing.assert_close(result["grads"][name], grad, atol=1e-6, rtol=1e-5)
    # The original's per-pack mean is a different objective when packs hold different numbers of elements.
    pack_means = _reference_grads(lambda _, outs: sum(o.loss for o in outs) / len(outs))
    assert not torch.allclose(pack_means["0.weight"], expected["0.weight"], atol=1e-4)


def test_pack_normalisation_on_two_processes_averages_the_pack_means(tmp_path):
    result = _two_process_step("pack", tmp_path)
    expected = _reference_grads(lambda _, outs: sum(o.loss for o in outs) / len(outs))
    for name, grad in expected.items():
        torch.testing.assert_close(result["grads"][name], grad, atol=1e-6, rtol=1e-5)


def test_step_statistics_flag_a_non_finite_loss():
    good = SimpleNamespace(loss=torch.tensor(1.0), num_action_elements=torch.tensor(6.0))
    bad = SimpleNamespace(loss=torch.tensor(float("nan")), num_action_elements=torch.tensor(2.0))
    assert step_statistics([good, good]) == (True, 12.0)
    assert step_statistics([good, bad]) == (False, 8.0)
    with pytest.raises(ValueError, match="loss normalization"):
        micro_batch_objective(good, "tokens", 1)


def test_guard_counts_skips_and_stops_after_k_in_a_row():
    guard = NonFiniteGuard(max_consecutive=2)
    assert guard.step_ok(1, True, 0.5)
    assert not guard.step_ok(2, False, 0.5)
    assert guard.step_ok(3, True, 0.5) and guard.consecutive == 0
    assert not guard.step_ok(4, True, float("inf")) and guard.consecutive == 1
    with pytest.raises(NonFiniteStepError, match="2 consecutive steps .* step 5"):
        guard.step_ok(5, True, float("nan"))
