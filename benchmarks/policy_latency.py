"""End-to-end `BeingHPolicy.get_action` latency (preprocessing + flow sampling + unnormalization).

Full shape (default): InternViT-300M + Qwen3-1.7B VLM + 0.6B-shaped expert with random weights, bf16 on
CUDA, 224 px views, 4 flow steps, 1 and 2 views, with and without the prefix K/V cache. `--tiny` runs the
tiny config on CPU as a smoke check. The model folder holds only a tiny tokenizer and metadata for the
`libero_nonorm` config (no statistics needed), the weights are built in memory. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from beingh.data.metadata import DatasetMetadata, MetadataSource, VideoMeta, write_group_metadata
from beingh.data.tokenizer import build_tiny_tokenizer
from beingh.inference.policy import BeingHPolicy
from beingh.model.beingh import BeingH
from beingh.model.config import BeingHConfig
from beingh.model.tiny import tiny_config

DATA_CONFIG = "libero_nonorm"
GROUP = "bench"
CONTROL_HZ = 20.0


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
    for name in ("video.top_view", "video.wrist_view")[:views]:
        obs[name] = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    return obs


def measure(policy: BeingHPolicy, obs: dict, warmup: int, iters: int) -> dict:
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        policy.get_action(obs)
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        policy.get_action(obs)
        sync()
        times.append(1000.0 * (time.perf_counter() - start))
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))], 2),
        "mean_ms": round(statistics.fmean(times), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (smoke check)")
    parser.add_argument("--num_inference_timesteps", type=int, default=4)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--mpg", action="store_true", help="MPG on (lambda 0.1, 1 refinement pass)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the layers (CUDA only)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    overrides = {"use_mpg": args.mpg, "mpg_lambda": 0.1 if args.mpg else 0.0,
                 "num_inference_timesteps": args.num_inference_timesteps}
    config = tiny_config(**overrides) if args.tiny else BeingHConfig(**overrides)
    torch.manual_seed(0)
    model = build_model(config, device, dtype)
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp), config.force_image_size)
        for views in args.views:
            policy = BeingHPolicy(folder, DATA_CONFIG, GROUP, "libero", "long", device=str(device),
                                  enable_rtc=False, use_fixed_view=views == 1, compile=args.compile, model=model)
            obs = observation(views, config.force_image_size, rng)
            for use_cache in (True, False):
                policy.use_prefix_cache = use_cache
                results.append({"views": views, "prefix_cache": use_cache,
                                **measure(policy, obs, args.warmup, args.iters)})
    print(json.dumps({
        "benchmark": "policy_latency",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "config": "tiny" if args.tiny else "2B (InternViT-300M + Qwen3-1.7B + 0.6B expert), random weights",
        "params": sum(p.numel() for p in model.parameters()),
        "image_size": config.force_image_size,
        "num_inference_timesteps": args.num_inference_timesteps,
        "mpg": args.mpg,
        "compile": args.compile,
        "iters": args.iters,
        "results": results,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
