"""Forward+backward throughput of BeingH on one packed batch, and sampling latency with/without the K/V cache.

Full shape (default): InternViT-300M + Qwen3-1.7B VLM + Qwen3-0.6B-shaped expert, random weights built on
the meta device and materialised on the GPU, bf16, one ~8k-token pack of 37 LIBERO-like samples (2 views
each). `--tiny` runs the tiny config on CPU as a smoke check. Prints one JSON object.

MFU counts 6 * params * tokens per stream (VLM layers for text/image tokens, expert layers for state/action
tokens, ViT on its 257 patch tokens per view, connector on 64 tokens per view) plus attention
(12 * d_attn * sum of per-sample causal pairs per layer, fwd+bwd), against the device's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from beingh.model.beingh import BeingH
from beingh.model.config import BeingHConfig
from beingh.model.tiny import synthetic_packed_batch, tiny_config

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}


def _params(module: torch.nn.Module, include=lambda name: True) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if include(n))


def step_flops(model: BeingH, batch) -> float:
    """Training FLOPs (fwd + bwd) of one step on `batch`."""
    cfg = model.config
    layers = model.language_model.model.layers
    und_params = _params(layers, lambda n: "_mot_gen" not in n)
    gen_params = _params(layers, lambda n: "_mot_gen" in n)
    n_img = batch.pixel_values.shape[0]
    n_gen = batch.num_samples * (1 + batch.chunk_length)
    n_und = batch.num_tokens - n_gen
    vit_tokens = n_img * ((cfg.force_image_size // cfg.vit.patch_size) ** 2 + 1)
    dense = 6 * (und_params * n_und + gen_params * n_gen)
    dense += (
        6 * _params(model.vit_model.encoder) * vit_tokens
        + 6 * _params(model.connector) * n_img * cfg.tokens_per_image
    )
    d_attn = cfg.llm.num_attention_heads * cfg.llm.head_dim
    causal_pairs = sum(n * (n + 1) / 2 for n in batch.sample_lens)
    attn = 12 * d_attn * causal_pairs * cfg.llm.num_hidden_layers
    vit_seq = vit_tokens / max(n_img, 1)
    attn += 12 * cfg.vit.hidden_size * vit_seq**2 * n_img * cfg.vit.num_hidden_layers
    return float(dense + attn)


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
    parser.add_argument(
        "--text", type=int, nargs=2, default=(45, 24), help="text tokens before/after the views"
    )
    parser.add_argument("--attn-backend", default="auto", choices=("auto", "sdpa", "flex"))
    parser.add_argument("--grad-ckpt", action="store_true")
    parser.add_argument("--no-mpg", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    overrides = {
        "attn_backend": args.attn_backend,
        "gradient_checkpointing": args.grad_ckpt,
        "use_mpg": not args.no_mpg,
        "mpg_lambda": 0.0 if args.no_mpg else 0.1,
    }
    config = tiny_config(**overrides) if args.tiny else BeingHConfig(**overrides)
    samples = 4 if args.tiny else args.samples
    torch.manual_seed(0)
    model = build(config, device, dtype).train()
    batch = synthetic_packed_batch(config, [args.views] * samples, text_lens=tuple(args.text)).to(device)
    batch.pixel_values = batch.pixel_values.to(dtype)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model(batch).loss.backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = _time(train_step, device, args.warmup, args.iters)
    step_s = statistics.median(times)
    flops = step_flops(model, batch)
    gpu_name = torch.cuda.get_device_name() if device.type == "cuda" else None
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu_name and k in gpu_name), None)

    model.eval()
    single = synthetic_packed_batch(config, [args.views], text_lens=tuple(args.text)).to(device)
    single.pixel_values = single.pixel_values.to(dtype)
    latency = {}
    for use_cache in (True, False):
        t = _time(lambda c=use_cache: model.sample_actions(single, use_cache=c), device, 2, 5)
        latency["cached_ms" if use_cache else "uncached_ms"] = round(1000 * statistics.median(t), 2)

    result = {
        "benchmark": "model_step",
        "device": gpu_name or "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "config": "tiny" if args.tiny else "2B (InternViT-300M + Qwen3-1.7B + 0.6B expert)",
        "params": _params(model),
        "attn_backend": args.attn_backend,
        "gradient_checkpointing": args.grad_ckpt,
        "mpg": not args.no_mpg,
        "samples": samples,
        "tokens": batch.num_tokens,
        "images": int(batch.pixel_values.shape[0]),
        "fwd_bwd_s_median": round(step_s, 5),
        "fwd_bwd_s_all": [round(t, 5) for t in times],
        "tokens_per_s": round(batch.num_tokens / step_s, 1),
        "tflops_per_step": round(flops / 1e12, 3),
        "achieved_tflops": round(flops / step_s / 1e12, 2),
        "mfu": round(flops / step_s / 1e12 / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.type == "cuda"
        else None,
        "sample_actions_b1": {**latency, "num_steps": config.num_inference_timesteps},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
