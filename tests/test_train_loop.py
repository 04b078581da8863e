"""The training loop on a tiny model with synthetic packs: 2 processes == 1 process with gradient
accumulation, resume == uninterrupted, checkpoints load back into the model, logs and curves exist.

"Same data" for 1 vs 2 processes: the global stream of packs is indexed (step, accumulation slot,
rank) exactly like the trainer's per-micro-batch seed, so 1 process with 2 accumulation steps and
2 processes with 1 see the same packs with the same noise in every optimizer step.
"""

from __future__ import annotations

import json
import os
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
    write_tiny_internvl_folder,
    write_tiny_qwen3_folder,
)
from beingh.train.args import parse_args
from beingh.train.build import TrainData
from beingh.train.checkpoint import list_checkpoints
from beingh.train.trainer import train

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
    mllm = write_tiny_internvl_folder(root / "internvl", config)
    build_tiny_tokenizer(mllm)
    return mllm, write_tiny_qwen3_folder(root / "qwen3", config)


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


def _rank_main(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    train(parse_args(argv), data_factory=indexed_data)


def test_two_processes_match_one_process_with_accumulation(model_folders, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train(
        parse_args(_argv(model_folders, one, 4, "--gradient_accumulation_steps", "2")),
        data_factory=indexed_data,
    )
    # Activation checkpointing inside the FSDP2 units (ViT blocks, decoder layers) changes nothing.
    argv = _argv(model_folders, two, 4, "--grad_checkpoint", "True")
    mp.spawn(_rank_main, args=(2, _free_port(), argv), nprocs=2, join=True)
    assert _losses(one) == pytest.approx(_losses(two), rel=1e-4, abs=1e-6)
    w1 = BeingH.from_pretrained(one / "0000004").state_dict()
    w2 = BeingH.from_pretrained(two / "0000004").state_dict()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


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
