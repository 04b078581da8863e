"""End-to-end `BeingHPolicy.get_action` latency (preprocessing + flow sampling + unnormalization).

Full shape (default): InternViT-300M + Qwen3-1.7B VLM + 0.6B-shaped expert with random weights, bf16 on
CUDA, 224 px views, 4 flow steps, 1 and 2 views. `--tiny` runs the tiny config on CPU (fp32) as a smoke
check of the same code path. The model folder holds only a tiny tokenizer and metadata for the
`libero_nonorm` config (no statistics needed); the weights are built in memory. Prints one JSON object.

Variants (`--variants`, run in this order on one model, since compiling changes it in place):
`eager` (with and without the prefix K/V cache; without it, every flow step reruns the whole prompt as the
original does), `cuda_graph` (eager prefix pass, flow loop replayed from a CUDA graph:
`beingh.inference.cuda_graph`), `compiled` (`BeingH.compile_for_inference`) and `compiled_cuda_graph`
(both). On a CPU, "compiled" traces with dynamo's eager backend (no code generation) and the graph
variants run the CUDA-graph sampler's eager twin: the same code paths, not GPU speed-ups. A case that
fails (a compile, a graph capture) is reported with its error, the later cases of that variant (and of
the compiled ones, when "compiled" failed) are skipped, and the other variants still run (exit status 1).

Per case: `get_action_ms` is the wall time of a call (it ends with the device-to-host copy of the chunk,
so it includes every queued GPU kernel); `model_ms` is `sample_actions` alone on a prebuilt pack (CUDA
events on GPU); `build_batch_ms` is the observation -> device pack step (image + state transforms,
copies). The rest of `get_action_ms` is RTC bookkeeping and unnormalization.

    python -m benchmarks.policy_latency --tiny --threads 1     # CPU smoke check
    python -m benchmarks.policy_latency --variants eager cuda_graph compiled compiled_cuda_graph   # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch._dynamo.utils import counters

from beingh.data.metadata import DatasetMetadata, MetadataSource, VideoMeta, write_group_metadata
from beingh.data.tokenizer import build_tiny_tokenizer
from beingh.inference.policy import BeingHPolicy
from beingh.model.beingh import BeingH
from beingh.model.config import BeingHConfig
from beingh.model.tiny import tiny_config

DATA_CONFIG = "libero_nonorm"
GROUP = "bench"
CONTROL_HZ = 20.0
VIEW_KEYS = ("video.top_view", "video.wrist_view")
VARIANTS = ("eager", "cuda_graph", "compiled", "compiled_cuda_graph")
"""In the order they run: the compiled ones after `compile_for_inference`, which changes the model."""


def build_model(config: BeingHConfig, device: torch.device, dtype: torch.dtype) -> BeingH:
    """Random weights materialised directly on the device (no CPU copy of a 2B model)."""
    with torch.device("meta"):
        model = BeingH(config)
    model.to_empty(device=device)
    model.init_weights()
    return model.to(dtype).eval()


def write_model_folder(root: Path, image_size: int) -> Path:
    build_tiny_tokenizer(root)
    videos = {name: VideoMeta((image_size, image_size), 3, CONTROL_HZ) for name in ("top_view", "wrist_view")}
    metadata = DatasetMetadata({"state": {}, "action": {}}, {"video": videos}, "libero")
    write_group_metadata(root / "experiment_cfg", GROUP, [MetadataSource("bench", metadata, 1)])
    return root


def observation(views: int, image_size: int, rng: np.random.Generator) -> dict:
    obs = {
        "state.eef_position": rng.uniform(-0.5, 0.5, 3),
        "state.eef_rotation": rng.uniform(-1.0, 1.0, 3),
        "state.libero_gripper_position": rng.uniform(0.0, 0.04, 2),
        "language.instruction": "put the bowl on the plate",
    }
    for name in VIEW_KEYS[:views]:
        obs[name] = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    return obs


def wall_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of `fn` with the device idle before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000.0 * (time.perf_counter() - start)


def device_ms(fn: Callable[[], object], device: torch.device) -> float:
    """GPU stream time of `fn` (CUDA events), or wall time on CPU."""
    if device.type != "cuda":
        return wall_ms(fn, device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def summarize(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "p50": round(statistics.median(times), 3),
        "p95": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 3),
        "mean": round(statistics.fmean(times), 3),
    }


def measure(policy: BeingHPolicy, obs: dict, warmup: int, iters: int) -> dict:
    device = policy.device
    batch, _ = policy.build_batch(obs)

    def sample() -> torch.Tensor:
        steps = policy.num_inference_timesteps
        with torch.inference_mode():
            if policy.flow_graphs is not None and policy.use_prefix_cache:
                return policy.flow_graphs(batch, num_steps=steps)
            return policy.model.sample_actions(batch, num_steps=steps, use_cache=policy.use_prefix_cache)

    for _ in range(warmup):
        policy.get_action(obs)
        sample()
    get_action, model, build = [], [], []
    for _ in range(iters):  # interleaved, so a slow phase of a shared machine hits all three alike
        get_action.append(wall_ms(lambda: policy.get_action(obs), device))
        model.append(device_ms(sample, device))
        build.append(wall_ms(lambda: policy.build_batch(obs), device))
    return {
        "num_tokens": batch.num_tokens,
        "get_action_ms": summarize(get_action),
        "model_ms": summarize(model),
        "build_batch_ms": summarize(build),
    }


def config_summary(config: BeingHConfig, tiny: bool) -> dict:
    return {
        "name": "tiny" if tiny else "2B (InternViT-300M + Qwen3-1.7B + 0.6B-shaped expert), random weights",
        "llm_hidden": config.llm.hidden_size,
        "expert_hidden": config.expert.hidden_size,
        "layers": config.llm.num_hidden_layers,
        "vit_hidden": config.vit.hidden_size,
        "vit_layers": config.vit.num_hidden_layers,
        "image_size": config.force_image_size,
        "tokens_per_image": config.tokens_per_image,
        "chunk_length": config.action_chunk_length,
        "attn_mode": config.attn_mode,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny config (smoke check; on CPU unless --device)"
    )
    parser.add_argument("--device", default=None, help="default: cpu with --tiny, else cuda when available")
    parser.add_argument("--num_inference_timesteps", type=int, default=4)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--mpg", action="store_true", help="MPG on (lambda 0.1, 1 refinement pass)")
    parser.add_argument("--variants", nargs="+", default=["eager"], choices=VARIANTS,
                        help="what to time (see the module docstring); eager also times the uncached path")
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed calls per case (at least 10 for compiled variants)"
    )
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    compile_backend = "inductor" if device.type == "cuda" else "eager"
    overrides = {
        "use_mpg": args.mpg,
        "mpg_lambda": 0.1 if args.mpg else 0.0,
        "num_inference_timesteps": args.num_inference_timesteps,
    }
    config = tiny_config(**overrides) if args.tiny else BeingHConfig(**overrides)
    torch.manual_seed(0)
    model = build_model(config, device, dtype)
    rng = np.random.default_rng(0)
    results, is_compiled, failed = [], False, {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp), config.force_image_size)
        for variant in sorted(set(args.variants), key=VARIANTS.index):
            compiled = variant.startswith("compiled")
            if compiled and not is_compiled:
                model.compile_for_inference(backend=compile_backend)
                is_compiled = True
            warmup = max(args.warmup, 10) if compiled else args.warmup
            for views in args.views:
                policy = BeingHPolicy(
                    folder,
                    DATA_CONFIG,
                    GROUP,
                    "libero",
                    "long",
                    device=str(device),
                    enable_rtc=False,
                    use_fixed_view=views == 1,
                    model=model,
                    cuda_graph=variant.endswith("cuda_graph"),
                )
                obs = observation(views, config.force_image_size, rng)
                for use_cache in (True, False) if variant == "eager" else (True,):
                    policy.use_prefix_cache = use_cache
                    case = {"variant": variant, "views": views, "prefix_cache": use_cache, "warmup": warmup}
                    broken = failed.get(variant) or (failed.get("compiled") if compiled else None)
                    if broken:  # a failed compile or capture would fail (slowly) again
                        results.append({**case, "error": f"skipped after an earlier failure: {broken}"[:2000]})
                        continue
                    try:
                        results.append({**case, **measure(policy, obs, warmup, args.iters)})
                    except Exception as err:  # one failed variant (a compile, a capture) must not hide the rest
                        traceback.print_exc()
                        failed[variant] = f"{type(err).__name__}: {err}"[:2000]
                        results.append({**case, "error": failed[variant]})
    print(
        json.dumps(
            {
                "benchmark": "policy_latency",
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "cpu_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "dtype": str(dtype),
                "config": config_summary(config, args.tiny),
                "params": sum(p.numel() for p in model.parameters()),
                "num_inference_timesteps": args.num_inference_timesteps,
                "mpg": args.mpg,
                "variants": args.variants,
                "compile_backend": compile_backend,
                "iters": args.iters,
                "peak_gpu_memory_gb": (
                    round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                    if device.type == "cuda"
                    else None
                ),
                "dynamo": {
                    "unique_graphs": counters["stats"]["unique_graphs"],
                    "graph_breaks": sum(counters["graph_break"].values()),
                },
                "results": results,
            },
            indent=2,
        )
    )
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
