"""Forward+backward throughput of BeingH on one packed batch, and sampling latency with/without the K/V cache.

Full shape (default, CUDA only): InternViT-300M + Qwen3-1.7B VLM + Qwen3-0.6B-shaped expert with MPG,
random weights built on the meta device and materialised directly on the GPU (no 11 GB CPU copy), cast
to bf16 (pure bf16 parameters; the trainer's fp32-master path is `benchmarks/train_throughput.py`), one
~8k-token pack of 37 LIBERO-like samples (2 views each). `--tiny` runs the tiny config on CPU as a smoke
check. Prints one JSON object: config, device, median step time, tokens/s, model TFLOPs, MFU, peak memory.

The sampling latency at the end uses the inference default attention backend ("auto": SDPA for prompts
shorter than `FLEX_MIN_TOKENS`), whatever `--attn-backend` the training step used.

FLOPs and MFU: `beingh.model.flops.training_flops` (formula in its docstring: 6 x parameters x tokens of
the stream that uses them + 12 x d_attn x document-causal pairs per layer, checkpoint recompute not
counted) against the device's dense bf16 peak (`beingh.model.flops.PEAK_BF16_TFLOPS`).

    python benchmarks/model_step.py                 # 2B shape on the GPU
    python benchmarks/model_step.py --tiny          # CPU smoke check (a few seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beingh.model.beingh import BeingH  # noqa: E402
from beingh.model.config import BeingHConfig  # noqa: E402
from beingh.model.flops import peak_bf16_tflops, training_flops  # noqa: E402
from beingh.model.tiny import LIBERO_TEXT_LENS, synthetic_packed_batch, tiny_config  # noqa: E402


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def build(config: BeingHConfig, device: torch.device, dtype: torch.dtype) -> BeingH:
    """Random-weight model: built on the meta device, allocated on `device`, initialised there."""
    with torch.device("meta"):
        model = BeingH(config)
    model.to_empty(device=device)
    model.init_weights()
    return model.to(dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config (CPU smoke check)")
    parser.add_argument("--samples", type=int, default=37)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--attn-backend", default="auto", choices=("auto", "sdpa", "flex"))
    parser.add_argument("--grad-ckpt", action="store_true")
    parser.add_argument("--no-mpg", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type != "cuda" and not args.tiny:
        print("the 2B benchmark needs a CUDA device; use --tiny on CPU", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    overrides = {
        "attn_backend": args.attn_backend,
        "gradient_checkpointing": args.grad_ckpt,
        "use_mpg": not args.no_mpg,
        "mpg_lambda": 0.0 if args.no_mpg else 0.1,
    }
    config = tiny_config(**overrides) if args.tiny else BeingHConfig(**overrides)
    samples = min(args.samples, 4) if args.tiny else args.samples
    torch.manual_seed(0)
    model = build(config, device, dtype).train()
    batch = synthetic_packed_batch(config, [args.views] * samples, text_lens=LIBERO_TEXT_LENS).to(device)
    batch.pixel_values = batch.pixel_values.to(dtype)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model(batch).loss.backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = _time(train_step, device, args.warmup, args.iters)
    step_s = statistics.median(times)
    peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    flops = training_flops(model, config, batch)
    gpu_name = torch.cuda.get_device_name() if device.type == "cuda" else None
    peak = peak_bf16_tflops(gpu_name) if gpu_name else None

    model.eval()
    model.config = replace(config, attn_backend="auto")  # inference's default: SDPA for short prompts
    single = synthetic_packed_batch(config, [args.views], text_lens=LIBERO_TEXT_LENS).to(device)
    single.pixel_values = single.pixel_values.to(dtype)
    latency = {}
    for use_cache in (True, False):
        t = _time(
            lambda c=use_cache: model.sample_actions(single, use_cache=c), device, args.warmup, args.iters
        )
        latency["cached_ms" if use_cache else "uncached_ms"] = round(1000 * statistics.median(t), 2)

    result = {
        "benchmark": "model_step",
        "config": {
            "model": "tiny"
            if args.tiny
            else "beingh-2B (InternViT-300M + Qwen3-1.7B-shaped LLM + 0.6B expert)",
            "parameters": _params(model),
            "dtype": str(dtype),
            "attn_backend": args.attn_backend,
            "gradient_checkpointing": args.grad_ckpt,
            "mpg": not args.no_mpg,
            "samples": samples,
            "pack_tokens": batch.num_tokens,
            "images": int(batch.pixel_values.shape[0]),
        },
        "device": {"type": device.type, "name": gpu_name or "cpu", "torch": torch.__version__},
        "fwd_bwd_s_median": step_s,
        "fwd_bwd_s_all": times,
        "tokens_per_s": batch.num_tokens / step_s,
        "model_tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / 1e12 / peak if peak else None,
        "peak_memory_gib": peak_memory_gib,
        "sample_actions_b1": {**latency, "num_steps": config.num_inference_timesteps},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
