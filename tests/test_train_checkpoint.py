"""Checkpoint save/load on a toy FSDP2 model in a 1-rank gloo group: layout, manifest, JSON/safetensors
training state resharded across world sizes, and every crash window of save, re-save and pruning
(the crash is simulated at that point, then start-up recovery runs as a restarted trainer does)."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from beingh.checkpoint_manifest import MANIFEST_FILE, CheckpointIntegrityError, is_complete, verify_checkpoint
from beingh.train import checkpoint as ckpt_mod
from beingh.train.checkpoint import (
    TrainerState,
    list_checkpoints,
    load_train_state,
    recover_interrupted_saves,
    save_checkpoint,
    step_dir_name,
    verify_resume_checkpoint,
)
from beingh.train.distributed import (
    apply_fsdp,
    init_distributed,
    rng_state,
    set_rng_state,
    shutdown_distributed,
)
from beingh.train.optim import build_optimizer, build_scheduler
from beingh.train.optimizer_state import load_optimizer_state, save_optimizer_state
from tests.pickle_canary import assert_payload_is_live, plant


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 5), nn.Linear(5, 4)])  # 5 rows: uneven shards
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


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_layout_manifest_and_no_pickle_files(tmp_path, setup):
    _, model, opt, sched = setup
    _train_step(model, opt, sched)
    path = _save(tmp_path, 1, setup)
    assert path == tmp_path / "0000001"
    weights = _weights(path)
    assert set(weights) == {f"blocks.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")} | {"head.weight", "head.bias"}
    assert torch.equal(weights["head.weight"], model.head.weight.full_tensor().detach())
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert files == {
        "model.safetensors", "config.json", MANIFEST_FILE,
        "train_state/trainer_state.json", "train_state/scheduler.json", "train_state/rank_00000.json",
        "train_state/optimizer/index.json", "train_state/optimizer/shard_00000.json",
        "train_state/optimizer/shard_00000.safetensors",
    }  # fmt: skip
    manifest = json.loads((path / MANIFEST_FILE).read_text())["files"]
    assert set(manifest) == files - {MANIFEST_FILE}
    assert manifest["model.safetensors"]["size"] == (path / "model.safetensors").stat().st_size
    assert verify_checkpoint(path) and is_complete(path)
    model_only = _save(tmp_path, 2, setup, save_model_only=True)
    assert not (model_only / "train_state").exists() and verify_checkpoint(model_only)


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_load_train_state_restores_optimizer_scheduler_and_rank_state(tmp_path, setup):
    info, model, opt, sched = setup
    for _ in range(3):
        _train_step(model, opt, sched)
    path = _save(tmp_path, 3, setup)
    saved = {k: {n: v.full_tensor().clone() if hasattr(v, "full_tensor") else v.clone() for n, v in s.items()}
             for k, s in enumerate(opt.state.values())}
    lr = sched.get_last_lr()[0]
    for _ in range(2):
        _train_step(model, opt, sched)
    state, rank_state = load_train_state(path, model, opt, sched, info)
    assert state.step == 3 and rank_state["data"] == {"pos": 3}
    assert sched.get_last_lr()[0] == lr and opt.param_groups[0]["lr"] == lr
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    for k, s in enumerate(opt.state.values()):
        for name, value in s.items():
            value = value.full_tensor() if hasattr(value, "full_tensor") else value
            assert torch.equal(value, saved[k][name]), (k, name)


def test_resume_with_other_world_size_is_refused(tmp_path, setup):
    info, model, opt, sched = setup
    path = _save(tmp_path, 1, setup)
    TrainerState(step=1, world_size=4).save(path / "train_state" / "trainer_state.json")
    with pytest.raises(ValueError, match="saved by 4 processes"):
        load_train_state(path, model, opt, sched, info)


def _full_optimizer_state(opt) -> dict[str, torch.Tensor]:
    out = {}
    for i, state in enumerate(opt.state.values()):
        for name, value in state.items():
            out[f"{i}/{name}"] = (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
    return out


def _reshard_worker(rank: int, world: int, port: int, one_rank_dir: str, two_rank_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed()
    try:
        torch.manual_seed(0)
        model = Toy()
        apply_fsdp(model, list(model.blocks), info)
        opt = build_optimizer(model, 1e-2, 0.0, (0.9, 0.999), 1e-8)
        load_optimizer_state(Path(one_rank_dir) / "train_state" / "optimizer", model, opt)
        expected = load_file(Path(one_rank_dir) / "reference.safetensors")
        restored = _full_optimizer_state(opt)
        assert restored.keys() == expected.keys()
        assert all(torch.equal(restored[k], expected[k]) for k in expected), "1 -> 2 processes changed the state"
        torch.manual_seed(1 + rank)
        model(torch.randn(3, 4)).pow(2).mean().backward()
        opt.step()
        save_optimizer_state(Path(two_rank_dir) / "optimizer", model, opt, info)
        full = _full_optimizer_state(opt)
        if rank == 0:
            save_file(full, str(Path(two_rank_dir) / "reference.safetensors"))
    finally:
        shutdown_distributed()


def test_optimizer_state_reshards_between_world_sizes(tmp_path, setup):
    """1 process -> 2 processes -> 1 process: each loads exactly the rows it holds from the other's shards."""
    _, model, opt, sched = setup
    for _ in range(2):
        _train_step(model, opt, sched)
    one = _save(tmp_path, 2, setup)
    save_file(_full_optimizer_state(opt), str(one / "reference.safetensors"))
    two = tmp_path / "two_ranks"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_reshard_worker, args=(2, port, str(one), str(two)), nprocs=2, join=True)
    assert len(list((two / "optimizer").glob("shard_*.safetensors"))) == 2
    load_optimizer_state(two / "optimizer", model, opt)
    expected = load_file(two / "reference.safetensors")
    restored = _full_optimizer_state(opt)
    assert restored.keys() == expected.keys() and all(torch.equal(restored[k], expected[k]) for k in expected)


def test_training_state_files_holding_pickles_are_refused_without_running_them(tmp_path, setup):
    """Without a manifest (an attacker can delete it) every train_state file is parsed as JSON or
    safetensors: a pickle in its place is an error, never executed."""
    info, model, opt, sched = setup
    _train_step(model, opt, sched)
    path = _save(tmp_path / "run", 1, setup)
    (path / MANIFEST_FILE).unlink()
    canary = tmp_path / "canary"
    for file in sorted(p for p in (path / "train_state").rglob("*") if p.is_file()):
        original = file.read_bytes()
        plant(file, canary)
        assert_payload_is_live(file, canary)
        with pytest.raises(ValueError, match="not valid JSON|not a readable safetensors"):
            load_train_state(path, model, opt, sched, info)
        assert not canary.exists(), file
        file.write_bytes(original)
    load_train_state(path, model, opt, sched, info)


# ---- integrity ------------------------------------------------------------------------------------------
def _flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_manifest_names_a_flipped_truncated_or_missing_file(tmp_path, setup):
    info, model, opt, sched = setup
    _train_step(model, opt, sched)
    path = _save(tmp_path, 1, setup)
    verify_resume_checkpoint(path, True, info)
    weights = path / "model.safetensors"
    original = weights.read_bytes()
    _flip_byte(weights)
    with pytest.raises(CheckpointIntegrityError, match=r"model\.safetensors: sha256 differs"):
        verify_resume_checkpoint(path, False, info)
    weights.write_bytes(original[:-10])
    with pytest.raises(CheckpointIntegrityError, match=r"model\.safetensors has \d+ bytes.*truncated"):
        verify_resume_checkpoint(path, False, info)
    weights.write_bytes(original)
    shard = path / "train_state" / "optimizer" / "shard_00000.safetensors"
    _flip_byte(shard)
    verify_resume_checkpoint(path, False, info)  # weights-only resume does not read train_state/
    with pytest.raises(CheckpointIntegrityError, match="shard_00000.safetensors: sha256 differs"):
        verify_resume_checkpoint(path, True, info)
    _flip_byte(shard)
    (path / "train_state" / "scheduler.json").unlink()
    with pytest.raises(CheckpointIntegrityError, match="scheduler.json is listed in manifest.json but missing"):
        verify_checkpoint(path)
    (path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CheckpointIntegrityError, match="manifest.json is not valid JSON"):
        verify_checkpoint(path)


def test_manifest_refuses_paths_outside_the_checkpoint(tmp_path):
    entry = {"size": 1, "sha256": "0" * 64}
    for name in ("../escape", "/etc/passwd"):
        (tmp_path / MANIFEST_FILE).write_text(json.dumps(
            {"format": "beingh-checkpoint-manifest/1", "files": {name: entry}}))
        with pytest.raises(CheckpointIntegrityError, match="not a path inside the checkpoint"):
            verify_checkpoint(tmp_path)


def test_folder_without_manifest_loads_with_a_log_line(caplog):
    from conftest import TINY_CHECKPOINT

    with caplog.at_level("INFO", logger="beingh.checkpoint_manifest"):
        assert verify_checkpoint(TINY_CHECKPOINT) is False
    assert any("has no manifest.json" in r.getMessage() and "not integrity-checked" in r.getMessage()
               for r in caplog.records)


def test_truncated_weights_without_manifest_name_the_file(tmp_path):
    from conftest import TINY_CHECKPOINT

    from beingh.model.beingh import BeingH

    for name in ("config.json", "model.safetensors"):
        shutil.copy(TINY_CHECKPOINT / name, tmp_path / name)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
        BeingH.from_pretrained(tmp_path)


# ---- crash windows (item: never lose a finished checkpoint, never leave an incomplete step folder) --------
class SimulatedCrash(BaseException):
    """A kill: not an Exception, so no handler in the code under test can swallow it."""


def _crash(*_args, **_kwargs):
    raise SimulatedCrash("killed")


def _crash_on_rename(monkeypatch, source: str, target: str) -> None:
    original = Path.rename

    def rename(self, dest):
        if self.name == source and Path(dest).name == target:
            raise SimulatedCrash(f"killed before renaming {source} -> {target}")
        return original(self, dest)

    monkeypatch.setattr(Path, "rename", rename)


def _crash_in_rmtree_of(monkeypatch, name: str) -> None:
    """Delete one file of `name`, then die (a kill in the middle of a recursive delete)."""
    original = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        path = Path(path)
        if path.name == name:
            next(p for p in sorted(path.rglob("*")) if p.is_file()).unlink()
            raise SimulatedCrash(f"killed while deleting {name}")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", rmtree)


def _restart(out: Path) -> dict[int, Path]:
    """What a restarted trainer does first; then every step folder must be a complete checkpoint."""
    recover_interrupted_saves(out)
    found = dict(list_checkpoints(out))
    for path in found.values():
        assert is_complete(path) and verify_checkpoint(path), path
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], list(out.iterdir())
    return found


def test_crash_while_writing_keeps_previous_and_removes_the_partial_save(tmp_path, setup, monkeypatch):
    _, model, opt, sched = setup
    first = _save(tmp_path, 1, setup)
    before = _weights(first)
    _train_step(model, opt, sched)
    for failing in ("write_safetensors", "save_optimizer_state", "write_manifest"):
        with monkeypatch.context() as patch:
            patch.setattr(ckpt_mod, failing, _crash)
            with pytest.raises(SimulatedCrash):
                _save(tmp_path, 2, setup)
        assert [s for s, _ in list_checkpoints(tmp_path)] == [1]  # never an incomplete 0000002
        assert (tmp_path / ".tmp-0000002").is_dir() and not is_complete(tmp_path / ".tmp-0000002")
        assert list(_restart(tmp_path)) == [1] and _same(before, _weights(first))


def test_crash_after_the_manifest_before_the_rename_recovers_the_save(tmp_path, setup, monkeypatch):
    _, model, opt, sched = setup
    _save(tmp_path, 1, setup)
    _train_step(model, opt, sched)
    with monkeypatch.context() as patch:
        _crash_on_rename(patch, ".tmp-0000002", "0000002")
        with pytest.raises(SimulatedCrash):
            _save(tmp_path, 2, setup)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    found = _restart(tmp_path)
    assert list(found) == [1, 2]
    assert torch.equal(_weights(found[2])["head.weight"], model.head.weight.full_tensor().detach())


@pytest.mark.parametrize(
    "window",
    [
        "old copy renamed, new copy not yet",  # the window that lost both copies before
        "new copy in place, old not yet deleted",
        "deleting the old copy",
    ],
)
def test_crash_during_a_re_save_keeps_the_new_copy(tmp_path, setup, monkeypatch, window):
    _, model, opt, sched = setup
    _save(tmp_path, 2, setup)
    _train_step(model, opt, sched)
    new_head = model.head.weight.full_tensor().detach().clone()
    with monkeypatch.context() as patch:
        if window.startswith("old copy renamed"):
            _crash_on_rename(patch, ".tmp-0000002", "0000002")
        elif window.startswith("new copy in place"):
            _crash_on_rename(patch, ".old-0000002", ".trash-.old-0000002")
        else:
            _crash_in_rmtree_of(patch, ".trash-.old-0000002")
        with pytest.raises(SimulatedCrash):
            _save(tmp_path, 2, setup)
    found = _restart(tmp_path)
    assert list(found) == [2]
    assert torch.equal(_weights(found[2])["head.weight"], new_head)


def test_crash_while_re_saving_before_the_swap_keeps_the_old_copy(tmp_path, setup, monkeypatch):
    _, model, opt, sched = setup
    old = _weights(_save(tmp_path, 2, setup))
    _train_step(model, opt, sched)
    with monkeypatch.context() as patch:
        patch.setattr(ckpt_mod, "write_manifest", _crash)
        with pytest.raises(SimulatedCrash):
            _save(tmp_path, 2, setup)
    found = _restart(tmp_path)
    assert list(found) == [2] and _same(old, _weights(found[2]))


def test_old_copy_without_its_step_folder_is_renamed_back(tmp_path, setup):
    path = _save(tmp_path, 3, setup)
    path.rename(tmp_path / ".old-0000003")
    assert list(_restart(tmp_path)) == [3]


@pytest.mark.parametrize("window", ["renaming the pruned folder", "deleting the pruned folder"])
def test_crash_while_pruning_never_leaves_a_half_deleted_step_folder(tmp_path, setup, monkeypatch, window):
    for step in (1, 2):
        _save(tmp_path, step, setup, keep_last_n=2)
    with monkeypatch.context() as patch:
        if window.startswith("renaming"):
            _crash_on_rename(patch, "0000001", ".trash-0000001")
        else:
            _crash_in_rmtree_of(patch, ".trash-0000001")
        with pytest.raises(SimulatedCrash):
            _save(tmp_path, 3, setup, keep_last_n=2)
    found = _restart(tmp_path)  # every remaining step folder is complete
    assert list(found)[-2:] == [2, 3]
    assert list(found) == ([1, 2, 3] if window.startswith("renaming") else [2, 3])
    _save(tmp_path, 4, setup, keep_last_n=2)
    assert list(_restart(tmp_path)) == [3, 4]


def test_keep_last_n(tmp_path, setup):
    for step in (1, 2, 3):
        _save(tmp_path, step, setup, keep_last_n=2, save_model_only=True)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
    (tmp_path / "experiment_cfg").mkdir()
    assert [p.name for _, p in list_checkpoints(tmp_path)] == [step_dir_name(2), step_dir_name(3)]


def test_recovery_leaves_folders_it_does_not_know_alone(tmp_path, setup):
    _save(tmp_path, 1, setup)
    legacy = tmp_path / ".tmp-old-0000001"  # what an earlier beingh version left mid re-save
    legacy.mkdir()
    (legacy / "model.safetensors").write_bytes(b"x")
    recover_interrupted_saves(tmp_path)
    assert legacy.is_dir() and [s for s, _ in list_checkpoints(tmp_path)] == [1]


def test_fsdp_wraps_every_unit_and_the_root(setup):
    from torch.distributed.fsdp import FSDPModule

    from beingh.train.distributed import mixed_precision_policy

    _, model, _, _ = setup
    assert isinstance(model, FSDPModule) and all(isinstance(b, FSDPModule) for b in model.blocks)
    assert not isinstance(model.head, FSDPModule)  # collected by the root
    cuda = mixed_precision_policy(torch.device("cuda"))
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)  # fp32 master + reduce
    assert mixed_precision_policy(torch.device("cpu")).param_dtype == torch.float32


def test_integrity_benchmark_prints_json(capsys):
    from benchmarks.checkpoint_integrity import main as bench_main

    assert bench_main(["--tiny"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"] == {"file_mb": 1, "files": 2, "algorithm": "sha256 (hashlib.file_digest)"}
    assert report["one_file"]["gb_per_s_wall"] > 0 and report["parallel_files"]["wall_s"] > 0
