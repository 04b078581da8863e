"""Training throughput of the full Being-H0.5 2B shape on one device: samples/s, tokens/s, MFU, peak memory.

Random weights, synthetic packs with the real token layout (`beingh.model.tiny.synthetic_packed_batch`),
the trainer's FSDP2 wrapping (1-rank group), AdamW and gradient clipping. Prints one JSON object.

    python benchmarks/train_throughput.py                      # 2B shape, CUDA, 8192-token packs
    python benchmarks/train_throughput.py --grad_checkpoint     # with activation checkpointing
    python benchmarks/train_throughput.py --tiny                # CPU smoke test (tiny model)

MFU counts matmul FLOPs only (6 x parameters x tokens of the stream that uses them, plus document-
causal attention), against `--peak_tflops` (default: 989 for H100/H200 bf16 dense, 312 for A100).
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
from beingh.model.tiny import synthetic_packed_batch, tiny_config  # noqa: E402
from beingh.train.distributed import apply_fsdp, init_distributed, shutdown_distributed  # noqa: E402
from beingh.train.optim import build_optimizer  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}


def views_for_tokens(config: BeingHConfig, target_tokens: int, views_per_sample: int) -> list[int]:
    """Sample view counts whose packed length is close to `target_tokens`."""
    probe = synthetic_packed_batch(config, num_views=[views_per_sample])
    per_sample = probe.num_tokens
    return [views_per_sample] * max(1, target_tokens // per_sample)


def step_flops(model: BeingH, batch) -> float:
    """Matmul FLOPs of one forward+backward over `batch` (6 x params x tokens per stream + attention)."""
    cfg = model.config
    vit = sum(p.numel() for p in model.vit_model.parameters()) + sum(
        p.numel() for p in model.connector.parameters()
    )
    und = gen = 0
    for name, p in model.language_model.named_parameters():
        if "embed_tokens" in name or "lm_head" in name:
            continue
        if "_mot_gen" in name:
            gen += p.numel()
        else:
            und += p.numel()
    heads = sum(
        p.numel()
        for n, p in model.named_parameters()
        if not n.startswith(("vit_model", "connector", "language_model"))
    )
    patches = (cfg.force_image_size // cfg.vit.patch_size) ** 2 + 1
    n_img = batch.pixel_values.shape[0]
    gen_tokens = batch.num_samples * (1 + cfg.action_chunk_length)
    und_tokens = batch.num_tokens - gen_tokens
    dense = 6.0 * (vit * n_img * patches + und * und_tokens + gen * gen_tokens + heads * gen_tokens)
    width = cfg.llm.num_attention_heads * cfg.llm.head_dim
    causal_pairs = sum(n * (n + 1) / 2 for n in batch.sample_lens)
    vit_pairs = n_img * patches * patches
    attention = (
        3
        * 4
        * (
            cfg.llm.num_hidden_layers * width * causal_pairs
            + cfg.vit.num_hidden_layers * cfg.vit.hidden_size * vit_pairs
        )
    )
    return dense + attention


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

    info = init_distributed()
    if args.tiny:
        config = tiny_config(use_mpg=True, mpg_lambda=0.1, gradient_checkpointing=args.grad_checkpoint)
        tokens = min(args.tokens, 512)
    else:
        if info.device.type != "cuda":
            print("the 2B benchmark needs a CUDA device; use --tiny on CPU", file=sys.stderr)
            return 2
        config = BeingHConfig(use_mpg=True, mpg_lambda=0.1, mpg_gate_temperature=1.0,
                              gradient_checkpointing=args.grad_checkpoint)  # fmt: skip
        tokens = args.tokens
    torch.manual_seed(0)
    model = BeingH(config)
    num_params = sum(p.numel() for p in model.parameters())
    batch = synthetic_packed_batch(config, num_views=views_for_tokens(config, tokens, args.views), seed=0)
    flops = step_flops(model, batch)
    model.to(info.device)
    apply_fsdp(model, model.fsdp_units(), info)
    optimizer = build_optimizer(model, 1e-4, 1e-5, (0.9, 0.999), 1e-8)
    batch = batch.to(info.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def step() -> torch.Tensor:
        loss = model(batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0, foreach=True)
        optimizer.step()
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

    device_name = (
        torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else platform.processor()
    )
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)
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
        "peak_memory_gib": torch.cuda.max_memory_allocated(info.device) / 2**30
        if info.device.type == "cuda"
        else None,
        "final_loss": float(loss),
    }
    print(json.dumps(result, indent=2))
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
