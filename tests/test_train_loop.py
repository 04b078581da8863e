"""The training loop on a tiny model with synthetic packs: 2 processes == 1 process with gradient
accumulation, resume == uninterrupted (1 and 2 processes, also between two logging steps and after a
crash mid-save), checkpoints load back into the model, logs and curves exist, and a checkpoint folder
with pickle payloads planted in it never runs them.

"Same data" for 1 vs 2 processes: the global stream of packs is indexed (step, accumulation slot,
rank) exactly like the trainer's per-micro-batch seed, so 1 process with 2 accumulation steps and
2 processes with 1 see the same packs with the same noise in every optimizer step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from beingh.model.beingh import BeingH
from beingh.model.tiny import (
    synthetic_packed_batch,
    tiny_config,
    write_internvl_folder,
    write_qwen3_folder,
)
from beingh.train.args import parse_args
from beingh.train.build import TrainData
from beingh.train.checkpoint import list_checkpoints
from beingh.train.loss import NonFiniteStepError
from beingh.train.trainer import train
from tests.pickle_canary import assert_payload_is_live, plant

REPO_ROOT = Path(__file__).resolve().parents[1]
YAML = REPO_ROOT / "configs" / "tests" / "fixtures_v30.yaml"


class IndexedPacks:
    """Rank `r`'s i-th pack is global pack `i * world + r` (resumable by position)."""

    def __init__(self, config, rank: int, world: int, crash_after: int | None = None):
        self.config, self.rank, self.world, self.position = config, rank, world, 0
        self.crash_after = crash_after

    def __iter__(self):
        while True:
            if self.position == self.crash_after:
                raise RuntimeError("simulated crash")
            index = self.position * self.world + self.rank
            self.position += 1
            yield synthetic_packed_batch(self.config, num_views=[1, 2, 1], seed=index)

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def indexed_data(args, tokenizer, info, crash_after: int | None = None) -> TrainData:
    def write_metadata(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "synthetic_metadata.json").write_text("{}")

    config = tiny_config(force_image_size=args.data.force_image_size)
    return TrainData(IndexedPacks(config, info.rank, info.world_size, crash_after), write_metadata)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> tuple[Path, Path]:
    from beingh.data.tokenizer import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny_models")
    config = tiny_config()
    mllm = write_internvl_folder(root / "internvl", config)
    build_tiny_tokenizer(mllm)
    return mllm, write_qwen3_folder(root / "qwen3", config)


def _argv(model_folders, out: Path, steps: int, *extra: str) -> list[str]:
    mllm, expert = model_folders
    return [
        "--mllm_path", str(mllm), "--expert_path", str(expert), "--dataset_config_file", str(YAML),
        "--output_dir", str(out), "--max_steps", str(steps), "--save_steps", "2", "--save_steps_start", "0",
        "--logging_steps", "1", "--warmup_ratio", "0.25", "--learning_rate", "1e-3", "--force_image_size", "56",
        "--num_workers", "0", *extra,
    ]  # fmt: skip


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, runs: list[tuple[int, list[str]]]) -> None:
    """One rank of a 2-process job: the runs one after the other, each in its own process group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    for port, argv in runs:
        os.environ["MASTER_PORT"] = str(port)
        train(parse_args(argv), data_factory=indexed_data)


def test_two_processes_match_one_process_with_accumulation_and_resume_exactly(model_folders, tmp_path):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "two_resumed"
    train(
        parse_args(_argv(model_folders, one, 4, "--gradient_accumulation_steps", "2")),
        data_factory=indexed_data,
    )
    # Activation checkpointing inside the FSDP2 units (ViT blocks, decoder layers) changes nothing.
    argv = _argv(model_folders, two, 4, "--grad_checkpoint", "True")
    resume = _argv(model_folders, resumed, 4, "--grad_checkpoint", "True", "--resume_from", str(two / "0000002"))
    mp.spawn(_rank_main, args=(2, [(_free_port(), argv), (_free_port(), resume)]), nprocs=2, join=True)
    assert _losses(one) == pytest.approx(_losses(two), rel=1e-4, abs=1e-6)
    w1 = BeingH.from_pretrained(one / "0000004").state_dict()
    w2 = BeingH.from_pretrained(two / "0000004").state_dict()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    # 2 sharded processes resume from their step-2 checkpoint exactly: same losses, same weights.
    assert len(list((two / "0000002" / "train_state" / "optimizer").glob("shard_*.safetensors"))) == 2
    assert _losses(resumed) == _losses(two)[2:]
    w3 = BeingH.from_pretrained(resumed / "0000004").state_dict()
    assert all(torch.equal(w2[k], w3[k]) for k in w2)


def test_resume_after_a_crash_continues_exactly(model_folders, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(parse_args(_argv(model_folders, straight, 6)), data_factory=indexed_data)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(parse_args(_argv(model_folders, resumed, 6)), data_factory=partial(indexed_data, crash_after=3))
    assert [s for s, _ in list_checkpoints(resumed)] == [2]
    argv = _argv(model_folders, resumed, 6, "--resume_from", str(resumed / "0000002"))
    train(parse_args(argv), data_factory=indexed_data)
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-6)
    events = EventAccumulator(str(resumed / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]  # crashed run's step 3 purged
    a = BeingH.from_pretrained(straight / "0000006").state_dict()
    b = BeingH.from_pretrained(resumed / "0000006").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_between_logging_steps_after_a_crash_mid_save_logs_the_same(model_folders, tmp_path, monkeypatch):
    """save_steps 2, logging_steps 3: the step-3 average covers steps 1-2 from before the resume and step 3
    after it. The first run is killed after writing checkpoint 4 but before renaming it: the restart
    recovers it (then re-saves step 4 itself)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(parse_args(_argv(model_folders, straight, 7, "--logging_steps", "3")), data_factory=indexed_data)
    original_rename = Path.rename

    def killed_at_publish(self, target):
        if self.name == ".tmp-0000004":
            raise KeyboardInterrupt("killed before publishing checkpoint 4")
        return original_rename(self, target)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "rename", killed_at_publish)
        with pytest.raises(KeyboardInterrupt):
            train(parse_args(_argv(model_folders, resumed, 7, "--logging_steps", "3")), data_factory=indexed_data)
    assert [s for s, _ in list_checkpoints(resumed)] == [2] and (resumed / ".tmp-0000004").is_dir()
    argv = _argv(model_folders, resumed, 7, "--logging_steps", "3", "--resume_from", str(resumed / "0000002"))
    train(parse_args(argv), data_factory=indexed_data)
    assert "recovered checkpoint" in (resumed / "training.log").read_text()
    assert [s for s, _ in list_checkpoints(resumed)] == [2, 4, 6, 7]
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 7]
    assert _losses(resumed) == _losses(straight)
    a = BeingH.from_pretrained(straight / "0000007").state_dict()
    b = BeingH.from_pretrained(resumed / "0000007").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


PICKLE_PLACES = (
    "train_state/scheduler.pt",  # earlier beingh versions: torch.load(weights_only=False)
    "train_state/rank_00000.pt",
    "train_state/optimizer/.metadata",  # torch.distributed.checkpoint unpickles its metadata
    "train_state/optimizer/__0_0.distcp",
    "pytorch_model.bin",  # what other loaders look for
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "training_args.bin",
    "experiment_cfg/stats.pkl",
)


def test_poisoned_checkpoint_folder_never_runs_code(model_folders, tmp_path):
    """Pickle payloads in every place a pickle could be read: resume ignores them (they are not part of the
    checkpoint) or refuses the folder (only the old pickle-based state); no payload ever runs."""
    from beingh.data.tokenizer import load_tokenizer

    run = tmp_path / "run"
    train(parse_args(_argv(model_folders, run, 2)), data_factory=indexed_data)
    canary = tmp_path / "canary"
    poisoned = tmp_path / "poisoned"
    shutil.copytree(run / "0000002", poisoned)
    for name in PICKLE_PLACES:
        plant(poisoned / name, canary)
        assert_payload_is_live(poisoned / name, canary)
    resumed = tmp_path / "resumed"
    train(parse_args(_argv(model_folders, resumed, 3, "--resume_from", str(poisoned))), data_factory=indexed_data)
    assert [s for s, _ in list_checkpoints(resumed)] == [3] and len(_losses(resumed)) == 1
    BeingH.from_pretrained(poisoned)
    load_tokenizer(poisoned)
    assert not canary.exists()
    # A bit flip in the weights: refused before anything is loaded, naming the file.
    weights = poisoned / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 differs"):
        train(parse_args(_argv(model_folders, tmp_path / "flipped", 3, "--resume_from", str(poisoned))),
              data_factory=indexed_data)
    weights.write_bytes(original)
    # Only the old pickle-based training state (and no manifest): refused with a clear error, nothing runs.
    for name in ("scheduler.json", "rank_00000.json", "optimizer/index.json", "optimizer/shard_00000.json",
                 "optimizer/shard_00000.safetensors"):
        (poisoned / "train_state" / name).unlink()
    (poisoned / "manifest.json").unlink()
    argv = _argv(model_folders, tmp_path / "refused", 3, "--resume_from", str(poisoned))
    with pytest.raises(ValueError, match="pickle-based format.*never loaded.*--resume_model_only True"):
        train(parse_args(argv), data_factory=indexed_data)
    assert not canary.exists()


def test_outputs_of_a_run(model_folders, tmp_path):
    out = tmp_path / "run"
    last = train(
        parse_args(_argv(model_folders, out, 3, "--keep_last_n_checkpoints", "1")), data_factory=indexed_data
    )
    assert last == out / "0000003"
    assert [s for s, _ in list_checkpoints(out)] == [3]
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "experiment_cfg/synthetic_metadata.json",
    ):
        assert (last / name).is_file(), name
    assert len(_losses(out)) == 3
    assert (out / "loss_curve.png").stat().st_size > 1000
    logged = {"loss", "action_loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "mpg_gate"}
    log_line = next(line for line in (out / "training.log").read_text().splitlines() if "step 3/3" in line)
    assert all(f" {name} " in log_line for name in logged), log_line
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {f"train/{name}" for name in logged} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    model = BeingH.from_pretrained(last)
    assert model.config.use_mpg and model.config.force_image_size == 56
    fresh_model_only = tmp_path / "posttrain"
    argv = _argv(
        model_folders, fresh_model_only, 1, "--resume_from", str(last), "--resume_model_only", "True"
    )
    assert train(parse_args(argv), data_factory=indexed_data) == fresh_model_only / "0000001"


def test_out_of_memory_gives_hints(model_folders, tmp_path, monkeypatch):
    def out_of_memory(self, batch, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(BeingH, "forward", out_of_memory)
    with pytest.raises(RuntimeError, match="--grad_checkpoint True") as info:
        train(parse_args(_argv(model_folders, tmp_path / "oom", 2)), data_factory=indexed_data)
    assert "--max_num_tokens" in str(info.value) and "Tried to allocate" in str(info.value)


class UnevenPacks(IndexedPacks):
    """Packs of 1, 2 or 3 samples: their numbers of valid action elements differ."""

    def __iter__(self):
        while True:
            index = self.position * self.world + self.rank
            self.position += 1
            yield synthetic_packed_batch(self.config, num_views=[1] * (1 + index % 3), seed=index)


def uneven_data(args, tokenizer, info) -> TrainData:
    data = indexed_data(args, tokenizer, info)
    return TrainData(UnevenPacks(data.packs.config, info.rank, info.world_size), data.write_metadata)


def _uneven_rank_main(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    train(parse_args(argv), data_factory=uneven_data)


def test_global_loss_normalisation_two_processes_match_one_process(model_folders, tmp_path):
    one, two, pack = tmp_path / "one", tmp_path / "two", tmp_path / "pack"
    global_norm = ("--loss_normalization", "global")
    train(parse_args(_argv(model_folders, one, 2, "--gradient_accumulation_steps", "2", *global_norm)),
          data_factory=uneven_data)
    argv = _argv(model_folders, two, 2, *global_norm)
    mp.spawn(_uneven_rank_main, args=(2, _free_port(), argv), nprocs=2, join=True)
    train(parse_args(_argv(model_folders, pack, 2, "--gradient_accumulation_steps", "2")), data_factory=uneven_data)
    w1 = BeingH.from_pretrained(one / "0000002").state_dict()
    w2 = BeingH.from_pretrained(two / "0000002").state_dict()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    w_pack = BeingH.from_pretrained(pack / "0000002").state_dict()
    assert not all(torch.allclose(w1[k], w_pack[k], atol=1e-5) for k in w1)


def _poison(steps_to_poison: set[int], kind: str):
    """A `BeingH.forward` whose loss is NaN (kind "loss") or whose gradients are inf (kind "grad") on the
    given 1-based calls (one call per step here)."""
    original = BeingH.forward
    calls = {"n": 0}

    class InfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    def forward(self, batch, **kwargs):
        output = original(self, batch, **kwargs)
        calls["n"] += 1
        if calls["n"] in steps_to_poison:
            if kind == "loss":
                output.loss = output.loss * float("nan")
            else:
                output.loss = InfGrad.apply(output.loss)
        return output

    return forward


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_step_is_skipped_and_counted(model_folders, tmp_path, monkeypatch, kind):
    out = tmp_path / kind
    monkeypatch.setattr(BeingH, "forward", _poison({2}, kind))
    train(parse_args(_argv(model_folders, out, 3, "--save_steps", "1")), data_factory=indexed_data)
    before, after = (BeingH.from_pretrained(out / f"000000{s}").state_dict() for s in (1, 2))
    assert all(torch.equal(before[k], after[k]) for k in before)  # step 2 updated nothing
    third = BeingH.from_pretrained(out / "0000003").state_dict()
    assert not all(torch.equal(after[k], third[k]) for k in after)  # training went on
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_skipped_steps"] for r in records] == [0, 1, 1]
    assert "loss" not in records[1] and all(math.isfinite(r["loss"]) for r in (records[0], records[2]))
    assert "step 2: non-finite" in (out / "training.log").read_text()


def test_too_many_non_finite_steps_in_a_row_stop_the_run(model_folders, tmp_path, monkeypatch):
    monkeypatch.setattr(BeingH, "forward", _poison({2, 3}, "loss"))
    argv = _argv(model_folders, tmp_path / "nan", 4, "--max_consecutive_nonfinite_steps", "2")
    with pytest.raises(NonFiniteStepError, match="2 consecutive steps"):
        train(parse_args(argv), data_factory=indexed_data)
