"""Training throughput of the full Being-H0.5 2B shape on one device: samples/s, tokens/s, MFU, peak memory.

Random weights built on the meta device and materialised directly on the GPU in fp32 (the master
weights), the trainer's FSDP2 wrapping on a 1-rank group (bf16 compute, fp32 reduction), the trainer's
AdamW and gradient clipping, synthetic packs with the real token layout
(`beingh.model.tiny.synthetic_packed_batch`, ~8192 tokens). Prints one JSON object: config, device,
seconds/step, samples/s, tokens/s, model TFLOPs, MFU, peak memory and where the memory goes: the model
state (fp32 parameters, fp32 gradients of the parameters that get one, AdamW's two fp32 moments), the
rest of the peak (activations, the unsharded bf16 parameters and gradients of the unit in flight,
workspaces), and the peak per GPU this implies with N-way sharding (the state divided by N, the rest
unchanged: an estimate, since one GPU holds whole units).

    python benchmarks/train_throughput.py                      # 2B shape, CUDA, 8192-token packs
    python benchmarks/train_throughput.py --grad_checkpoint     # with activation checkpointing
    python benchmarks/train_throughput.py --tiny                # CPU smoke test (tiny model)

FLOPs: `beingh.model.flops.training_flops` (6 x parameters x tokens of the stream that uses them plus
12 x d_attn x document-causal pairs per layer; recompute under checkpointing not counted), MFU against
`--peak_tflops` or the device's dense bf16 peak (`beingh.model.flops.PEAK_BF16_TFLOPS`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beingh.model.beingh import BeingH  # noqa: E402
from beingh.model.config import BeingHConfig  # noqa: E402
from beingh.model.flops import peak_bf16_tflops, training_flops  # noqa: E402
from beingh.model.tiny import LIBERO_TEXT_LENS, synthetic_packed_batch, tiny_config  # noqa: E402
from beingh.train.distributed import apply_fsdp, init_distributed, shutdown_distributed  # noqa: E402
from beingh.train.optim import build_optimizer  # noqa: E402


def views_for_tokens(config: BeingHConfig, target_tokens: int, views_per_sample: int) -> list[int]:
    """Sample view counts whose packed length is close to (and at most) `target_tokens`."""
    probe = synthetic_packed_batch(config, num_views=[views_per_sample], text_lens=LIBERO_TEXT_LENS)
    per_sample = probe.num_tokens
    return [views_per_sample] * max(1, target_tokens // per_sample)


def tensor_bytes(tensors) -> int:
    """Bytes this rank holds of `tensors` (the local shards of DTensors; non-tensors skipped)."""
    local = (t.to_local() if hasattr(t, "to_local") else t for t in tensors if isinstance(t, torch.Tensor))
    return sum(t.numel() * t.element_size() for t in local)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke test)")
    parser.add_argument("--tokens", type=int, default=8192, help="target tokens per pack")
    parser.add_argument("--views", type=int, default=2, help="camera views per sample")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, compile)")
    parser.add_argument("--grad_checkpoint", action="store_true")
    parser.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU (bf16 dense)")
    args = parser.parse_args(argv)

    if not args.tiny and not torch.cuda.is_available():
        print("the 2B benchmark needs a CUDA device; use --tiny on CPU", file=sys.stderr)
        return 2
    info = init_distributed()
    if args.tiny:
        config = tiny_config(use_mpg=True, mpg_lambda=0.1, gradient_checkpointing=args.grad_checkpoint)
        tokens = min(args.tokens, 512)
    else:
        config = BeingHConfig(use_mpg=True, mpg_lambda=0.1, mpg_gate_temperature=1.0,
                              gradient_checkpointing=args.grad_checkpoint)  # fmt: skip
        tokens = args.tokens
    torch.manual_seed(0)
    with torch.device("meta"):
        model = BeingH(config)
    model.to_empty(device=info.device)
    model.init_weights()
    num_params = sum(p.numel() for p in model.parameters())
    views = views_for_tokens(config, tokens, args.views)
    batch = synthetic_packed_batch(config, num_views=views, text_lens=LIBERO_TEXT_LENS, seed=0)
    flops = training_flops(model, config, batch)
    apply_fsdp(model, model.fsdp_units(), info)
    optimizer = build_optimizer(model, 1e-4, 1e-5, (0.9, 0.999), 1e-8)
    batch = batch.to(info.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()

    grad_bytes = 0

    def step() -> torch.Tensor:
        nonlocal grad_bytes
        loss = model(batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0, foreach=True)
        optimizer.step()
        grad_bytes = tensor_bytes(p.grad for p in trainable)
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def sync() -> None:
        if info.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = (time.perf_counter() - started) / args.steps

    gib = 2**30
    state_gib = {
        "params": tensor_bytes(model.parameters()) / gib,
        "grads": grad_bytes / gib,
        "optimizer": tensor_bytes(t for state in optimizer.state.values() for t in state.values()) / gib,
    }
    peak_gib = torch.cuda.max_memory_allocated(info.device) / gib if info.device.type == "cuda" else None
    device_name = (
        torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else platform.processor()
    )
    peak = args.peak_tflops or peak_bf16_tflops(device_name)
    achieved = flops / seconds / 1e12
    result = {
        "benchmark": "train_throughput",
        "config": {
            "model": "tiny"
            if args.tiny
            else "beingh-2B (InternViT-300M + Qwen3-1.7B-shaped LLM + 0.6B expert)",
            "parameters": num_params,
            "pack_tokens": batch.num_tokens,
            "samples_per_pack": batch.num_samples,
            "views_per_sample": args.views,
            "text_tokens": list(LIBERO_TEXT_LENS),
            "image_size": config.force_image_size,
            "grad_checkpoint": args.grad_checkpoint,
            "precision": "bf16 params / fp32 reduce" if info.device.type == "cuda" else "fp32",
            "mpg": True,
            "steps": args.steps,
        },
        "device": {"type": info.device.type, "name": device_name, "torch": torch.__version__},
        "seconds_per_step": seconds,
        "samples_per_s": batch.num_samples / seconds,
        "tokens_per_s": batch.num_tokens / seconds,
        "model_tflops_per_step": flops / 1e12,
        "achieved_tflops": achieved,
        "mfu": achieved / peak if peak else None,
        "peak_memory_gib": peak_gib,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(info.device) / gib
        if info.device.type == "cuda"
        else None,
        "state_gib": state_gib,
        "peak_gib_if_sharded": None
        if peak_gib is None
        else {n: peak_gib - sum(state_gib.values()) * (1 - 1 / n) for n in (4, 8)},
        "final_loss": float(loss),
    }
    print(json.dumps(result, indent=2))
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
