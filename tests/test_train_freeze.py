"""Freeze options: which parameters get gradients, and frozen modules stay in eval mode."""

from __future__ import annotations

import pytest
import torch

from beingh.model.beingh import BeingH
from beingh.model.tiny import synthetic_packed_batch, tiny_config
from beingh.train.args import FreezeArgs
from beingh.train.freeze import apply_freeze
from beingh.train.optim import param_groups


@pytest.fixture(scope="module")
def batch():
    return synthetic_packed_batch(tiny_config(use_mpg=True, mpg_lambda=0.1), num_views=[1, 2], seed=3)


def _grads_after_step(options: FreezeArgs, batch) -> tuple[BeingH, set[str]]:
    torch.manual_seed(0)
    model = BeingH(tiny_config(use_mpg=True, mpg_lambda=0.1))
    apply_freeze(model, options)
    model.train()
    model(batch).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    return model, with_grad


def _names(model: BeingH, prefix: str, expert: bool | None = None) -> set[str]:
    return {
        n
        for n, _ in model.named_parameters()
        if n.startswith(prefix) and (expert is None or ("_mot_gen" in n) == expert)
    }


def test_freeze_llm_keeps_expert_trainable(batch):
    model, with_grad = _grads_after_step(FreezeArgs(freeze_llm=True), batch)
    llm_und = _names(model, "language_model.", expert=False)
    expert = _names(model, "language_model.", expert=True)
    assert llm_und and not (llm_und & with_grad)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in llm_und)
    assert all(p.requires_grad for n, p in model.named_parameters() if n in expert)
    assert "language_model.model.layers.0.mlp_mot_gen.up_proj.weight" in with_grad
    assert _names(model, "vit_model.") & with_grad and _names(model, "connector.") & with_grad


def test_freeze_mllm_freezes_vit_connector_and_llm_only(batch):
    model, with_grad = _grads_after_step(FreezeArgs(freeze_mllm=True), batch)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    expected = (
        _names(model, "vit_model.") | _names(model, "connector.") | _names(model, "language_model.", False)
    )
    assert frozen == expected
    for head in (
        "action_encoder.",
        "action_decoder.",
        "proprio_encoder_robot.",
        "mpg.",
        "vlm_to_action_proj.",
    ):
        assert _names(model, head) <= {n for n, p in model.named_parameters() if p.requires_grad}
    assert "action_decoder.layer2.weight" in with_grad
    assert not (with_grad & frozen)


def test_freeze_vit_and_connector(batch):
    model, with_grad = _grads_after_step(FreezeArgs(freeze_vit=True), batch)
    assert not (_names(model, "vit_model.") & with_grad)
    assert _names(model, "connector.") <= with_grad
    model, with_grad = _grads_after_step(FreezeArgs(freeze_vit_mlp=True), batch)
    assert not (_names(model, "connector.") & with_grad)
    assert _names(model, "vit_model.") & with_grad


def test_frozen_modules_stay_in_eval_mode_and_out_of_the_optimizer():
    model = BeingH(tiny_config())
    report = apply_freeze(model, FreezeArgs(freeze_vit=True))
    assert "vit_model" in report.frozen_modules and report.frozen > 0
    model.train()
    assert not model.vit_model.training
    assert not any(m.training for m in model.vit_model.modules())
    assert model.action_decoder.training and model.language_model.training
    optimised = {id(p) for g in param_groups(model, 0.1) for p in g["params"]}
    assert not any(id(p) in optimised for p in model.vit_model.parameters())


def test_no_freeze_trains_everything_used(batch):
    model, with_grad = _grads_after_step(FreezeArgs(), batch)
    assert _names(model, "vit_model.") & with_grad and _names(model, "language_model.", True) <= {
        n for n, p in model.named_parameters() if p.requires_grad
    }
