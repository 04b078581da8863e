"""Optimizer state on disk without pickle: flattened tensors in safetensors plus JSON, resharded on load.

Layout of `train_state/optimizer/`:
- `shard_XXXXX.safetensors` (one per rank): this rank's rows of every state tensor, keyed
  `<parameter FQN>/<state name>` (e.g. `language_model.model.layers.0.mlp.up_proj.weight/exp_avg`);
- `shard_XXXXX.json`: for each key, the tensor's global shape and the first global row this rank holds
  (FSDP2 shards dim 0 like `torch.chunk`); `null` for an unsharded tensor (AdamW's `step`), kept by rank 0;
- `index.json` (rank 0): format, world size and the param groups (lr, betas, ... and parameter FQNs).

Loading reads, for every tensor of the running optimizer, exactly its rows from whichever shard files
hold them, so the state loads into any number of processes.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.tensor import DTensor

from beingh.train.distributed import DistInfo
from beingh.train.json_files import read_json, write_json

logger = logging.getLogger("beingh.train")

INDEX_FILE = "index.json"
FORMAT = "beingh-optimizer-state/1"


def shard_files(rank: int) -> tuple[str, str]:
    """(tensor file, JSON index) names of one rank's shard."""
    return f"shard_{rank:05d}.safetensors", f"shard_{rank:05d}.json"


def _row_range(tensor: DTensor, key: str) -> tuple[int, int]:
    """[start, end) global dim-0 rows of this rank's local shard of a 1-D-mesh Shard(0) DTensor."""
    placements = tensor.placements
    if tensor.device_mesh.ndim != 1 or len(placements) != 1:
        raise ValueError(f"optimizer state {key}: only a 1-D device mesh is supported, got {placements}")
    if placements[0].is_replicate():
        return 0, tensor.shape[0] if tensor.ndim else 0
    if not placements[0].is_shard(dim=0):
        raise ValueError(f"optimizer state {key}: placement {placements[0]} is not supported (FSDP2 shards dim 0)")
    rows, world, rank = tensor.shape[0], tensor.device_mesh.size(), tensor.device_mesh.get_local_rank()
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    end = min(start + chunk, rows)
    if tensor.to_local().shape[0] != end - start:
        raise ValueError(f"optimizer state {key}: local shard has {tensor.to_local().shape[0]} rows, expected "
                         f"{end - start} (torch.chunk layout)")
    return start, end


def save_optimizer_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> list[Path]:
    """Write this rank's shard (and, on rank 0, the index) into `folder` (collective). Returns the files written."""
    state = get_optimizer_state_dict(model, optimizer)
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    for fqn, param_state in state["state"].items():
        for name, value in param_state.items():
            key = f"{fqn}/{name}"
            if isinstance(value, DTensor):
                if value.placements[0].is_replicate() and not info.is_main:
                    continue
                start, _ = _row_range(value, key)
                tensors[key] = value.to_local()
                entries[key] = {"shape": list(value.shape), "start": start}
            elif isinstance(value, torch.Tensor):
                if info.is_main:
                    tensors[key] = value
                    entries[key] = {"shape": list(value.shape), "start": None}
            elif isinstance(value, bool | int | float):
                if info.is_main:
                    entries[key] = {"value": value}
            else:
                raise TypeError(f"optimizer state {key} is a {type(value).__name__}: only tensors and numbers are saved")
    folder.mkdir(parents=True, exist_ok=True)
    tensor_file, index_file = (folder / name for name in shard_files(info.rank))
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tensor_file))
    write_json(index_file, {"rank": info.rank, "world_size": info.world_size, "entries": entries})
    written = [tensor_file, index_file]
    if info.is_main:
        written.append(write_json(folder / INDEX_FILE, {
            "format": FORMAT, "world_size": info.world_size, "param_groups": state["param_groups"]}))
    return written


def load_optimizer_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore the optimizer from `folder`, whatever the world size that wrote it.

    Parameters without saved state (those that never received a gradient, e.g. the LLM head without a
    text loss) keep a fresh zero state.
    """
    index = read_json(folder / INDEX_FILE)
    if index.get("format") != FORMAT:
        raise ValueError(f"{folder / INDEX_FILE} is not a {FORMAT} index")
    pieces: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for rank in range(int(index["world_size"])):
        for key, entry in read_json(folder / shard_files(rank)[1])["entries"].items():
            pieces.setdefault(key, []).append((rank, entry))
    template = get_optimizer_state_dict(model, optimizer)
    restored: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        opened: dict[int, Any] = {}

        def shard(rank: int) -> Any:
            if rank not in opened:
                path = folder / shard_files(rank)[0]
                try:
                    opened[rank] = stack.enter_context(safe_open(str(path), framework="pt"))
                except (SafetensorError, OSError) as err:
                    raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
            return opened[rank]

        for fqn, param_state in template["state"].items():
            restored[fqn] = {}
            for name, current in param_state.items():
                key = f"{fqn}/{name}"
                saved = pieces.pop(key, None)
                restored[fqn][name] = current if saved is None else _assemble(key, current, saved, shard, folder)
    if pieces:
        logger.warning("%s: state of %d tensors that this optimizer does not have was ignored (e.g. %s)",
                       folder, len(pieces), next(iter(pieces)))
    param_groups = [
        {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in group.items()}
        for group in index["param_groups"]
    ]
    set_optimizer_state_dict(model, optimizer, {"state": restored, "param_groups": param_groups})


def _assemble(key: str, current: Any, saved: list[tuple[int, dict[str, Any]]], shard, folder: Path) -> Any:
    """This process's part of one saved value, shaped and placed like `current`."""
    if not isinstance(current, torch.Tensor):
        return saved[0][1]["value"]
    if saved[0][1]["shape"] != list(current.shape):
        raise ValueError(f"{folder}: optimizer state {key} has shape {saved[0][1]['shape']}, "
                         f"the model needs {list(current.shape)}")
    target = current.to_local() if isinstance(current, DTensor) else current
    if current.ndim == 0:
        local = shard(saved[0][0]).get_tensor(key)
    else:
        start, end = _row_range(current, key) if isinstance(current, DTensor) else (0, current.shape[0])
        local = torch.empty(target.shape, dtype=target.dtype)
        covered = 0
        for rank, entry in saved:
            piece = shard(rank).get_slice(key)
            piece_start = entry["start"] or 0
            lo, hi = max(start, piece_start), min(end, piece_start + piece.get_shape()[0])
            if lo < hi:
                local[lo - start : hi - start] = piece[lo - piece_start : hi - piece_start]
                covered += hi - lo
        if covered != end - start:
            raise ValueError(f"{folder}: the shard files hold {covered} of rows {start}..{end} of optimizer "
                             f"state {key}")
    local = local.to(target.device, target.dtype)
    if not isinstance(current, DTensor):
        return local
    return DTensor.from_local(local, current.device_mesh, current.placements, run_check=False,
                              shape=current.shape, stride=current.stride())
