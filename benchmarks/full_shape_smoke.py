"""Full-shape smoke run on the CPU: the InternVL3.5-2B + Qwen3-0.6B shape builds, loads, acts and trains.

1. Writes synthetic InternVL3.5-2B- and Qwen3-0.6B-shaped folders: config.json as the released ones,
   random bf16 weights under the original key names in sharded safetensors with
   `model.safetensors.index.json`, generated and written shard by shard (tied embeddings, as Qwen3-1.7B
   and Qwen3-0.6B: no `lm_head` tensors); a tiny tokenizer and LIBERO-shaped metadata beside them.
2. Builds the model exactly as training does from `--mllm_path/--expert_path` (`parse_args` ->
   `build_train_model`), in bf16 (the fp32 master copy would not fit next to its gradients in 24 GB).
3. Runs one `BeingHPolicy.get_action` (2 views at 224 px, 4 flow steps, MPG on as in the guide's scripts).
4. Runs one training forward+backward with gradient checkpointing on a short pack (one 2-view LIBERO-like
   sample); forward only when the free memory cannot hold the gradients (`--step auto`).

Prints one JSON object: parameter counts, shard files, times (wall and CPU seconds: on a shared machine
the CPU time is the fairer figure), the loss, and the peak RSS after each phase.

    python benchmarks/full_shape_smoke.py           # 2B shape: ~12 GB peak RSS, several minutes on 2 cores
    python benchmarks/full_shape_smoke.py --tiny    # the same code path at the tiny shape (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beingh.data.metadata import DatasetMetadata, MetadataSource, VideoMeta, write_group_metadata  # noqa: E402
from beingh.data.tokenizer import build_tiny_tokenizer  # noqa: E402
from beingh.inference.policy import BeingHPolicy  # noqa: E402
from beingh.model.config import BeingHConfig  # noqa: E402
from beingh.model.tiny import (  # noqa: E402
    LIBERO_TEXT_LENS,
    synthetic_packed_batch,
    tiny_config,
    write_internvl_folder,
    write_qwen3_folder,
)
from beingh.train.args import parse_args  # noqa: E402
from beingh.train.build import build_train_model, load_train_tokenizer  # noqa: E402

DTYPE = torch.bfloat16
GROUP = "smoke"
VIEWS = ("top_view", "wrist_view")
ACTIVATION_MARGIN_GB = 2.0
"""Memory beyond parameters and gradients that `--step auto` requires for a backward pass."""


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def available_gb() -> float:
    """MemAvailable from /proc/meminfo (what the machine can still give this process)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def progress(message: str) -> None:
    """One line per phase on stderr (stdout is the JSON): the 2B phases take minutes on a CPU."""
    print(f"[full_shape_smoke {time.strftime('%H:%M:%S')}] {message} (peak RSS {peak_rss_gb()} GB)",
          file=sys.stderr, flush=True)


class Timer:
    """Wall and CPU (this process, all threads) seconds of a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = round(time.perf_counter() - self.wall, 2)
        self.cpu = round(time.process_time() - self.cpu, 2)


def write_folders(root: Path, config: BeingHConfig, stored_image_size: int, max_shard_bytes: int) -> dict:
    """The InternVL folder (with tokenizer and metadata), the Qwen3 folder and a dataset YAML."""
    mllm = write_internvl_folder(root / "InternVL3_5-2B", config, image_size=stored_image_size, seed=0,
                                 dtype=DTYPE, max_shard_bytes=max_shard_bytes, tie_word_embeddings=True)
    expert = write_qwen3_folder(root / "Qwen3-0.6B", config, seed=1, dtype=DTYPE,
                                max_shard_bytes=max_shard_bytes, tie_word_embeddings=True)
    build_tiny_tokenizer(mllm)
    videos = {name: VideoMeta((config.force_image_size, config.force_image_size), 3, 20.0) for name in VIEWS}
    metadata = DatasetMetadata({"state": {}, "action": {}}, {"video": videos}, "libero")
    write_group_metadata(mllm / "experiment_cfg", GROUP, [MetadataSource("smoke", metadata, 1)])
    data_yaml = root / "unused_data.yaml"
    data_yaml.write_text("smoke: {}\n")  # parse_args checks the file exists; no data is read
    return {"mllm": mllm, "expert": expert, "data_yaml": data_yaml}


def observation(image_size: int) -> dict:
    rng = np.random.default_rng(0)
    obs = {f"video.{name}": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for name in VIEWS}
    obs.update({
        "state.eef_position": rng.uniform(-0.5, 0.5, 3),
        "state.eef_rotation": rng.uniform(-1.0, 1.0, 3),
        "state.libero_gripper_position": rng.uniform(0.0, 0.04, 2),
        "language.instruction": "put the bowl on the plate",
    })  # fmt: skip
    return obs


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    groups = {"total": 0, "vit": 0, "connector": 0, "llm": 0, "expert": 0, "heads_and_mpg": 0}
    for name, param in model.named_parameters():
        n = param.numel()
        groups["total"] += n
        if name.startswith("vit_model."):
            groups["vit"] += n
        elif name.startswith("connector."):
            groups["connector"] += n
        elif name.startswith("language_model."):
            groups["expert" if "_mot_gen" in name else "llm"] += n
        else:
            groups["heads_and_mpg"] += n
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shape (a fast check of the same code path)")
    parser.add_argument("--step", choices=("auto", "backward", "forward"), default="auto",
                        help="training step: forward+backward, forward only, or decided by free memory")
    parser.add_argument("--max_shard_mb", type=float, default=None,
                        help="safetensors shard size (default: 1024 MB; 0.05 MB with --tiny)")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    parser.add_argument("--workdir", default=None, help="where to write the folders (default: a temp dir)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tiny:
        config, stored_image_size, image_size = tiny_config(), 112, 56
    else:
        config, stored_image_size, image_size = BeingHConfig(), 448, 224
    config = replace(config, force_image_size=image_size)
    max_shard_bytes = int((args.max_shard_mb or (0.05 if args.tiny else 1024)) * 2**20)
    result: dict = {
        "benchmark": "full_shape_smoke",
        "shape": "tiny" if args.tiny else "InternVL3.5-2B (InternViT-300M + Qwen3-1.7B) + Qwen3-0.6B-shaped expert",
        "device": {"type": "cpu", "threads": torch.get_num_threads(), "machine": platform.machine()},
        "torch": torch.__version__,
        "dtype": str(DTYPE),
        "image_size": image_size,
        "note": "random weights; wall times on a shared machine are inflated, CPU seconds are fairer",
    }
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        progress(f"writing synthetic folders in {tmp}")
        with Timer() as write:
            paths = write_folders(Path(tmp), config, stored_image_size, max_shard_bytes)
        result["write_folders"] = {
            "s": write.wall,
            "internvl_shards": len(list(paths["mllm"].glob("model-*-of-*.safetensors"))),
            "qwen3_shards": len(list(paths["expert"].glob("model-*-of-*.safetensors"))),
            "peak_rss_gb": peak_rss_gb(),
        }
        train_args = parse_args([
            "--mllm_path", str(paths["mllm"]), "--expert_path", str(paths["expert"]),
            "--dataset_config_file", str(paths["data_yaml"]), "--output_dir", str(Path(tmp) / "out"),
            "--max_steps", "1", "--force_image_size", str(image_size), "--grad_checkpoint", "True",
        ])  # fmt: skip
        progress(f"wrote folders in {write.wall} s; building the model from --mllm_path/--expert_path")
        with Timer() as load:
            tokenizer = load_train_tokenizer(train_args)
            model = build_train_model(train_args, tokenizer, dtype=DTYPE)
        result["parameters"] = count_parameters(model)
        result["load"] = {"s": load.wall, "cpu_s": load.cpu, "peak_rss_gb": peak_rss_gb()}

        policy = BeingHPolicy(paths["mllm"], "libero_nonorm", GROUP, "libero", "long", device="cpu",
                              dtype=DTYPE, enable_rtc=False, model=model)
        obs = observation(image_size)
        progress(f"built in {load.wall} s; one get_action")
        with Timer() as act:
            actions = policy.get_action(obs)
        result["get_action"] = {
            "s": act.wall, "cpu_s": act.cpu, "views": len(VIEWS), "flow_steps": policy.num_inference_timesteps,
            "mpg_passes": 1 + model.config.mpg_refinement_iters if model.config.mpg_active else 1,
            "finite": bool(all(np.isfinite(v).all() for v in actions.values())), "peak_rss_gb": peak_rss_gb(),
        }  # fmt: skip

        batch = synthetic_packed_batch(model.config, [len(VIEWS)], text_lens=LIBERO_TEXT_LENS, seed=0)
        batch = replace(batch, pixel_values=batch.pixel_values.to(DTYPE))
        gradient_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
        free_gb = available_gb()
        backward = args.step == "backward" or (args.step == "auto" and free_gb > gradient_gb + ACTIVATION_MARGIN_GB)
        model.train()
        torch.manual_seed(0)
        progress(f"get_action took {act.wall} s; one training {'forward+backward' if backward else 'forward'}")
        with Timer() as step, torch.set_grad_enabled(backward):
            output = model(batch)
            if backward:
                output.loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        result["train_step"] = {
            "kind": "forward+backward" if backward else "forward only (not enough free memory for gradients)",
            "s": step.wall, "cpu_s": step.cpu, "tokens": batch.num_tokens,
            "gradient_checkpointing": model.config.gradient_checkpointing,
            "loss": round(float(output.loss.detach()), 4),
            "params_with_grad": len(grads),
            "finite_grads": bool(all(torch.isfinite(g).all() for g in grads)),
            "free_gb_before": round(free_gb, 1), "peak_rss_gb": peak_rss_gb(),
        }  # fmt: skip
    result["peak_rss_gb"] = peak_rss_gb()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
