"""Step checkpoints: `<output_dir>/<step:07d>/`, complete or absent, never unpickled.

Layout of one checkpoint folder:
- `model.safetensors`: full (gathered, unsharded) fp32 state dict with the released parameter names,
  loadable by `BeingH.from_pretrained` and by `--resume_from`;
- `config.json`, tokenizer files, `experiment_cfg/<group>_metadata.json` for every YAML group,
  `train_args.json` (the arguments of the run), all written by rank 0;
- `train_state/` unless `--save_model_only`: `trainer_state.json` (step, world size, counters),
  `scheduler.json`, `rank_XXXXX.json` per rank (data-loader position, RNG states, the logging
  interval's running sums) and `optimizer/` (safetensors shards + JSON, see `optimizer_state`);
- `manifest.json`: size and sha256 of every other file, written last (`beingh.checkpoint_manifest`).
No file is ever read with pickle, so a crafted checkpoint folder cannot run code on resume.

Crash safety (a kill at any point loses no finished checkpoint and leaves no incomplete step folder):
every rank writes into `.tmp-<step>`; once the manifest is written rank 0 renames it to `<step>`. A
re-save of an existing step first renames the old copy to `.old-<step>`. Folders are deleted only after
being renamed to `.trash-<name>`. At start-up `recover_interrupted_saves` finishes what a crash
interrupted: a complete `.tmp-*` becomes its step (the newer copy wins), a `.old-*` whose step is
missing is renamed back, incomplete `.tmp-*` and `.trash-*` folders are deleted. The output folder must
be shared by all nodes.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from beingh.checkpoint_manifest import (
    TRAIN_STATE_DIR,
    CheckpointIntegrityError,
    hash_files,
    is_complete,
    list_files,
    verify_checkpoint,
    write_manifest,
)
from beingh.train.distributed import DistInfo, barrier, broadcast_object, gather_object
from beingh.train.json_files import read_json, write_json
from beingh.train.optimizer_state import load_optimizer_state, save_optimizer_state

logger = logging.getLogger("beingh.train")

STEP_DIGITS = 7
TMP_PREFIX = ".tmp-"
"""A save in progress; complete once its manifest exists."""
OLD_PREFIX = ".old-"
"""The previous copy of a step while a re-save of that step swaps it out."""
TRASH_PREFIX = ".trash-"
"""A folder being deleted: renamed first, so a crash never leaves half a checkpoint under a real name."""
MODEL_FILE = "model.safetensors"
LEGACY_STATE_FILES = ("scheduler.pt", "optimizer/.metadata")
"""Pickle-based training state of earlier beingh versions: never loaded."""


@dataclass
class TrainerState:
    """Counters that a full resume restores."""

    step: int
    """Optimizer steps completed."""
    world_size: int
    samples_seen: int = 0
    tokens_seen: int = 0

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> TrainerState:
        data = read_json(path)
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"{path}: {err}") from err


def step_dir_name(step: int) -> str:
    return f"{step:0{STEP_DIGITS}d}"


def _is_step_name(name: str) -> bool:
    return name.isdigit() and len(name) == STEP_DIGITS


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Finished step checkpoints in `output_dir`, oldest first (other folders are ignored)."""
    if not output_dir.is_dir():
        return []
    found = [(int(p.name), p) for p in output_dir.iterdir() if p.is_dir() and _is_step_name(p.name)]
    return sorted(found)


def discard(path: Path) -> None:
    """Delete a folder by renaming it to `.trash-<name>` first (a crash mid-delete leaves only trash)."""
    trash = path.parent / f"{TRASH_PREFIX}{path.name}"
    if trash.exists():
        shutil.rmtree(trash)
    path.rename(trash)
    shutil.rmtree(trash)


def publish(tmp: Path, final: Path) -> None:
    """Rename a complete save to its step name; an existing copy of that step is swapped out, then deleted."""
    if final.exists():
        old = final.parent / f"{OLD_PREFIX}{final.name}"
        if old.exists():
            discard(old)
        final.rename(old)
        tmp.rename(final)
        discard(old)
    else:
        tmp.rename(final)


def recover_interrupted_saves(output_dir: Path) -> None:
    """Finish or undo what a crash interrupted in `output_dir` (rank 0, at start; see the module docstring)."""
    if not output_dir.is_dir():
        return
    for path in sorted(output_dir.iterdir()):
        if path.is_dir() and path.name.startswith(TRASH_PREFIX):
            shutil.rmtree(path)
            logger.info("removed %s (left by an interrupted delete)", path)
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        for path in sorted(output_dir.iterdir()):
            name = path.name[len(prefix) :]
            if not (path.is_dir() and path.name.startswith(prefix)):
                continue
            if not _is_step_name(name):
                logger.warning("left %s alone: not a folder this version of beingh writes", path)
                continue
            final = output_dir / name
            if prefix == OLD_PREFIX and final.exists():
                discard(path)
                logger.info("removed %s: the re-save of step %s had finished", path, name)
            elif prefix == OLD_PREFIX:
                path.rename(final)
                logger.info("recovered checkpoint %s from %s (interrupted re-save)", final, path.name)
            elif is_complete(path):
                publish(path, final)
                logger.info("recovered checkpoint %s from %s (save finished, rename interrupted)", final, path.name)
            else:
                discard(path)
                logger.info("removed %s: an incomplete save of step %s", path, name)


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
    this rank's data-loader position, RNG states and metric sums (JSON-serializable).
    """
    final = output_dir / step_dir_name(step)
    tmp = output_dir / f"{TMP_PREFIX}{step_dir_name(step)}"
    if info.is_main:
        if tmp.exists():
            discard(tmp)
        tmp.mkdir(parents=True)
    barrier()
    state_dict = gather_model_state_dict(model)
    if info.is_main:
        write_safetensors(state_dict, tmp / MODEL_FILE)
        write_rank0_files(tmp)
    del state_dict
    written: list[Path] = []
    if not save_model_only:
        state_dir = tmp / TRAIN_STATE_DIR
        if info.is_main:
            state_dir.mkdir()
        barrier()
        written += save_optimizer_state(state_dir / "optimizer", model, optimizer, info)
        written.append(write_json(state_dir / f"rank_{info.rank:05d}.json", rank_state))
    # Every rank hashes the files it wrote; rank 0 hashes the rest and writes the manifest last.
    hashed = gather_object(hash_files(tmp, [p.relative_to(tmp).as_posix() for p in written]))
    if info.is_main:
        if not save_model_only:
            write_json(state_dir / "scheduler.json", scheduler.state_dict())
            trainer_state.save(state_dir / "trainer_state.json")
        entries = {name: entry for part in hashed for name, entry in part.items()}
        entries.update(hash_files(tmp, [name for name in list_files(tmp) if name not in entries]))
        write_manifest(tmp, entries)
        publish(tmp, final)
        if keep_last_n > 0:
            for _, path in list_checkpoints(output_dir)[:-keep_last_n]:
                discard(path)
    barrier()
    return final


def verify_resume_checkpoint(ckpt_dir: Path, full_state: bool, info: DistInfo) -> None:
    """Check `ckpt_dir` against its manifest on rank 0 (train_state/ only for a full resume); every rank
    raises the same error when a file is bad (collective)."""
    error = None
    if info.is_main:
        try:
            verify_checkpoint(ckpt_dir, skip_train_state=not full_state)
        except CheckpointIntegrityError as err:
            error = str(err)
    error = broadcast_object(error)
    if error is not None:
        raise CheckpointIntegrityError(f"--resume_from {ckpt_dir}: {error}")


def load_train_state(
    ckpt_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: DistInfo,
) -> tuple[TrainerState, dict[str, Any]]:
    """Restore optimizer and scheduler in place; return the counters and this rank's data/RNG/metric state."""
    state_dir = ckpt_dir / TRAIN_STATE_DIR
    if not (state_dir / "scheduler.json").is_file():
        legacy = [name for name in LEGACY_STATE_FILES if (state_dir / name).exists()]
        if legacy or list(state_dir.glob("rank_*.pt")):
            raise ValueError(
                f"{state_dir} holds training state in the pickle-based format of earlier beingh versions "
                f"({', '.join(legacy) or 'rank_*.pt'}), which is never loaded: unpickling runs code stored in "
                "the folder. Start a new run from its weights with --resume_model_only True"
            )
    trainer_state = TrainerState.load(state_dir / "trainer_state.json")
    if trainer_state.world_size != info.world_size:
        raise ValueError(
            f"{ckpt_dir} was saved by {trainer_state.world_size} processes and this run has "
            f"{info.world_size}: the per-rank data positions cannot be redistributed. Resume with the same "
            "number of processes, or start a new run from its weights with --resume_model_only True"
        )
    load_optimizer_state(state_dir / "optimizer", model, optimizer)
    scheduler.load_state_dict(read_json(state_dir / "scheduler.json"))
    rank_state = read_json(state_dir / f"rank_{info.rank:05d}.json")
    return trainer_state, rank_state
