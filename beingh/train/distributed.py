"""Process group, device, seeding and FSDP2 wrapping.

Every run uses a process group, also a single process started without torchrun (a 1-rank group on an
in-memory store), so one code path covers laptop, single GPU, several GPUs and several nodes.
CUDA uses NCCL with bf16 parameters and fp32 gradient reduction; CPU uses gloo in fp32.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun process group (or create a 1-rank one) and pick this rank's device."""
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled; for small objects such as a config)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj` on rank 0 (in rank order; other ranks get []). Pickled between the job's own
    processes, for small objects such as file hashes."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered or []


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (not covered by a state dict when non-persistent) to every rank."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices): used before the model is built, the same on every rank."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def micro_batch_seed(seed: int, global_micro_index: int) -> int:
    """Seed of the torch RNG for one micro-batch (flow-matching noise, time, RTC delay, dropout).

    Keyed by the micro-batch's index in the global stream (step, accumulation slot, rank), so ranks draw
    different noise, a resumed run draws exactly what an uninterrupted one would, and the draws do not
    depend on how a global batch is split between processes and accumulation steps.
    """
    return int(np.random.SeedSequence([seed, global_micro_index]).generate_state(1, np.uint64)[0] >> 1)


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and current CUDA device) RNG states as plain JSON values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().numpy().tobytes().hex(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().numpy().tobytes().hex()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_byte_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_byte_tensor(state["cuda"]))


def _byte_tensor(hex_text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray.fromhex(hex_text), dtype=torch.uint8)


def mixed_precision_policy(device: torch.device, cast_forward_inputs: bool = True) -> MixedPrecisionPolicy:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return MixedPrecisionPolicy(
        param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=cast_forward_inputs
    )


def apply_fsdp(model: nn.Module, units: list[nn.Module], info: DistInfo) -> nn.Module:
    """Shard each unit (`BeingH.fsdp_units`: ViT blocks, decoder layers, lm_head), then the root, with FSDP2.

    Units are sharded first so each one all-gathers on its own and overlaps with compute; the root
    collects the rest (embeddings, heads, MPG). The root does not cast its input: the pack's action
    targets and states stay fp32 and the model casts what it feeds to each module. Activation
    checkpointing is the model's own (`BeingHConfig.gradient_checkpointing`), inside the units.
    """
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mixed_precision_policy(info.device))
    fully_shard(model, mesh=mesh, mp_policy=mixed_precision_policy(info.device, cast_forward_inputs=False))
    return model


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
