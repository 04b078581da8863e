"""Step checkpoints: `<output_dir>/<step:07d>/`, written atomically.

Layout of one checkpoint folder:
- `model.safetensors`: full (gathered, unsharded) fp32 state dict with the released parameter names,
  loadable by `BeingH.from_pretrained` and by `--resume_from`;
- `config.json`, tokenizer files, `experiment_cfg/<group>_metadata.json` for every YAML group,
  `train_args.json` (the arguments of the run), all written by rank 0;
- `train_state/` unless `--save_model_only`: `trainer_state.json` (step, world size, counters),
  `optimizer/` (torch.distributed.checkpoint, sharded and reshardable), `scheduler.pt`, and
  `rank_XXXXX.pt` per rank (data-loader position and RNG states).

Every rank writes into `<output_dir>/.tmp-<step>`; after a barrier rank 0 renames it to the final
name. A crash mid-save therefore leaves only a `.tmp-*` folder (removed at the next start) and the
previous checkpoints untouched. The output folder must be shared by all nodes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from beingh.train.distributed import DistInfo, barrier

STEP_DIGITS = 7
TMP_PREFIX = ".tmp-"
TRAIN_STATE_DIR = "train_state"
MODEL_FILE = "model.safetensors"


@dataclass
class TrainerState:
    """Counters that a full resume restores."""

    step: int
    """Optimizer steps completed."""
    world_size: int
    samples_seen: int = 0
    tokens_seen: int = 0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> TrainerState:
        return cls(**json.loads(path.read_text()))


def step_dir_name(step: int) -> str:
    return f"{step:0{STEP_DIGITS}d}"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Finished step checkpoints in `output_dir`, oldest first (other folders are ignored)."""
    if not output_dir.is_dir():
        return []
    found = [
        (int(p.name), p)
        for p in output_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and len(p.name) == STEP_DIGITS
    ]
    return sorted(found)


def remove_stale_tmp(output_dir: Path) -> None:
    """Remove `.tmp-*` folders left by an interrupted save (rank 0, at start)."""
    if output_dir.is_dir():
        for p in output_dir.iterdir():
            if p.is_dir() and p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p)


def gather_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 state dict on rank 0's CPU (other ranks get an empty dict); collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def write_safetensors(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write a state dict; tensors that share storage (tied weights) are cloned so safetensors accepts them."""
    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            tensor = tensor.clone()
        seen.add(key)
        tensors[name] = tensor
    save_file(tensors, str(path), metadata={"format": "pt"})


def save_checkpoint(
    output_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: TrainerState,
    rank_state: dict[str, Any],
    write_rank0_files: Callable[[Path], None],
    info: DistInfo,
    save_model_only: bool,
    keep_last_n: int = 0,
) -> Path:
    """Write checkpoint `step` atomically (collective: every rank must call it). Returns the final folder.

    `write_rank0_files(folder)` writes config, tokenizer and metadata on rank 0. `rank_state` holds
    this rank's data-loader position and RNG states.
    """
    final = output_dir / step_dir_name(step)
    tmp = output_dir / f"{TMP_PREFIX}{step_dir_name(step)}"
    if info.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    state_dict = gather_model_state_dict(model)
    if info.is_main:
        write_safetensors(state_dict, tmp / MODEL_FILE)
        write_rank0_files(tmp)
    del state_dict
    if not save_model_only:
        state_dir = tmp / TRAIN_STATE_DIR
        if info.is_main:
            state_dir.mkdir()
        barrier()
        dcp.save(
            {"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=state_dir / "optimizer"
        )
        torch.save(rank_state, state_dir / f"rank_{info.rank:05d}.pt")
        if info.is_main:
            torch.save(scheduler.state_dict(), state_dir / "scheduler.pt")
            trainer_state.save(state_dir / "trainer_state.json")
    barrier()
    if info.is_main:
        if final.exists():
            # Re-saving a step (e.g. after a resume from it): swap so a crash never loses both copies.
            old = output_dir / f"{TMP_PREFIX}old-{step_dir_name(step)}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        if keep_last_n > 0:
            for _, path in list_checkpoints(output_dir)[:-keep_last_n]:
                shutil.rmtree(path)
    barrier()
    return final


def load_train_state(
    ckpt_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: DistInfo,
) -> tuple[TrainerState, dict[str, Any]]:
    """Restore optimizer and scheduler in place; return the counters and this rank's data/RNG state."""
    state_dir = ckpt_dir / TRAIN_STATE_DIR
    trainer_state = TrainerState.load(state_dir / "trainer_state.json")
    if trainer_state.world_size != info.world_size:
        raise ValueError(
            f"{ckpt_dir} was saved by {trainer_state.world_size} processes and this run has "
            f"{info.world_size}: the per-rank data positions cannot be redistributed. Resume with the same "
            "number of processes, or start a new run from its weights with --resume_model_only True"
        )
    optim_state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    # Partial: parameters that never received a gradient (e.g. the LLM head without a text loss) have no
    # saved AdamW state; they keep the freshly initialised (zero) state.
    dcp.load(
        optim_state,
        checkpoint_id=state_dir / "optimizer",
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )
    set_optimizer_state_dict(model, optimizer, optim_state["optimizer"])
    scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=False))
    # Our own file, written by `save_checkpoint`: RNG states are numpy/python objects, not only tensors.
    rank_state = torch.load(state_dir / f"rank_{info.rank:05d}.pt", weights_only=False)
    return trainer_state, rank_state
