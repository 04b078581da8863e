"""Checkpoint save/load on a toy FSDP2 model in a 1-rank gloo group: atomic save, keep-last-n, resume state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from beingh.train import checkpoint as ckpt_mod
from beingh.train.checkpoint import (
    TrainerState,
    list_checkpoints,
    load_train_state,
    remove_stale_tmp,
    save_checkpoint,
    step_dir_name,
)
from beingh.train.distributed import apply_fsdp, init_distributed, rng_state, shutdown_distributed
from beingh.train.optim import build_optimizer, build_scheduler


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


@pytest.fixture()
def setup():
    info = init_distributed()
    torch.manual_seed(0)
    model = Toy()
    apply_fsdp(model, list(model.blocks), info)
    opt = build_optimizer(model, 1e-2, 0.0, (0.9, 0.999), 1e-8)
    sched = build_scheduler(opt, "cosine", 10, 0.1, 1e-2, 0.0)
    yield info, model, opt, sched
    shutdown_distributed()


def _train_step(model, opt, sched):
    model(torch.randn(3, 4)).pow(2).mean().backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def _save(out: Path, step: int, setup, **kwargs) -> Path:
    info, model, opt, sched = setup
    return save_checkpoint(
        out, step, model, opt, sched, TrainerState(step=step, world_size=1),
        {"data": {"pos": step}, "rng": rng_state()},
        lambda folder: (folder / "config.json").write_text("{}"),
        info, save_model_only=kwargs.get("save_model_only", False), keep_last_n=kwargs.get("keep_last_n", 0),
    )  # fmt: skip


def test_checkpoint_layout_and_full_state_dict(tmp_path, setup):
    _, model, opt, sched = setup
    _train_step(model, opt, sched)
    path = _save(tmp_path, 1, setup)
    assert path == tmp_path / "0000001"
    weights = load_file(path / "model.safetensors")
    assert set(weights) == {
        "blocks.0.weight",
        "blocks.0.bias",
        "blocks.1.weight",
        "blocks.1.bias",
        "head.weight",
        "head.bias",
    }
    assert torch.equal(weights["head.weight"], model.head.weight.full_tensor().detach())
    assert (path / "config.json").is_file()
    assert (path / "train_state" / "trainer_state.json").is_file()
    assert (path / "train_state" / "rank_00000.pt").is_file()
    model_only = _save(tmp_path, 2, setup, save_model_only=True)
    assert not (model_only / "train_state").exists()


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, setup, monkeypatch):
    _, model, opt, sched = setup
    first = _save(tmp_path, 1, setup)
    before = load_file(first / "model.safetensors")
    _train_step(model, opt, sched)

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt_mod, "write_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, setup)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]
    assert (tmp_path / ".tmp-0000002").is_dir()
    after = load_file(first / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    remove_stale_tmp(tmp_path)
    assert not (tmp_path / ".tmp-0000002").exists()


def test_keep_last_n(tmp_path, setup):
    for step in (1, 2, 3):
        _save(tmp_path, step, setup, keep_last_n=2, save_model_only=True)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
    (tmp_path / "experiment_cfg").mkdir()
    assert [p.name for _, p in list_checkpoints(tmp_path)] == [step_dir_name(2), step_dir_name(3)]


def test_load_train_state_restores_optimizer_and_scheduler(tmp_path, setup):
    info, model, opt, sched = setup
    for _ in range(3):
        _train_step(model, opt, sched)
    path = _save(tmp_path, 3, setup)
    exp_avg = {k: v["exp_avg"].full_tensor().clone() for k, v in enumerate(opt.state.values())}
    lr = sched.get_last_lr()[0]
    for _ in range(2):
        _train_step(model, opt, sched)
    state, rank_state = load_train_state(path, model, opt, sched, info)
    assert state.step == 3 and rank_state["data"] == {"pos": 3}
    assert sched.get_last_lr()[0] == pytest.approx(lr)
    restored = {k: v["exp_avg"].full_tensor() for k, v in enumerate(opt.state.values())}
    assert all(torch.equal(exp_avg[k], restored[k]) for k in exp_avg)


def test_resume_with_other_world_size_is_refused(tmp_path, setup):
    info, model, opt, sched = setup
    path = _save(tmp_path, 1, setup)
    TrainerState(step=1, world_size=4).save(path / "train_state" / "trainer_state.json")
    with pytest.raises(ValueError, match="saved by 4 processes"):
        load_train_state(path, model, opt, sched, info)


def test_fsdp_wraps_every_unit_and_the_root(setup):
    from torch.distributed.fsdp import FSDPModule

    from beingh.train.distributed import mixed_precision_policy

    _, model, _, _ = setup
    assert isinstance(model, FSDPModule) and all(isinstance(b, FSDPModule) for b in model.blocks)
    assert not isinstance(model.head, FSDPModule)  # collected by the root
    cuda = mixed_precision_policy(torch.device("cuda"))
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)  # fp32 master + reduce
    assert mixed_precision_policy(torch.device("cpu")).param_dtype == torch.float32
