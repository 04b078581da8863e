"""Data-loader throughput: samples/s per worker core, by default on a 2-view LeRobot v3.0 AV1 dataset at 224 px.

The fixture has one camera, so the benchmark copies it into a temp dir and declares its video a second
time under another camera name (two independent decoders, as with a real 2-camera dataset). It then
times, on one thread (wall clock, and CPU time of this process since the machine may be shared), the
full per-sample work a DataLoader worker does (exact-frame decode of the views, state/action slicing
and normalization, train image transform, tokenization), with a breakdown, and finally the packed
loader with `--loader_workers` worker processes.

`--dataset_config_file FILE` measures your own dataset YAML instead (statistics are read from, or
computed into, `--cache_dir`; data configs come from `BEINGH_DATA_CONFIGS` as for training). The
tokenizer is always the tiny test tokenizer (tokenization is ~1% of the per-sample time).

    python benchmarks/data_loader.py [--samples 400] [--loader_workers 2] [--loader_packs 20]
    python benchmarks/data_loader.py --dataset_config_file my_data.yaml --loader_workers 0

Prints one JSON object (config, device, figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from beingh.data.embodiment import MetaWorldDataConfig, register_data_config  # noqa: E402
from beingh.data.pipeline import DataArgs, SequenceArgs, build_train_loader  # noqa: E402
from beingh.data.tokenizer import build_tiny_tokenizer  # noqa: E402

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "lerobot" / "v30_av1"
SECOND_CAMERA = "observation.images.corner2"


class TwoViewMetaWorldDataConfig(MetaWorldDataConfig):
    VIDEO_KEYS = ["video.corner", "video.corner2"]
    VIDEO_SOURCE_COLUMNS = {"video.corner": "observation.images.corner", "video.corner2": SECOND_CAMERA}


def make_two_view_dataset(root: Path) -> Path:
    """Copy the v3.0 AV1 fixture and add a second camera whose video is a copy of the first."""
    dataset = root / "two_view"
    shutil.copytree(FIXTURE, dataset)
    for path in dataset.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.copytree(dataset / "videos" / "observation.images.corner", dataset / "videos" / SECOND_CAMERA)
    info_path = dataset / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"][SECOND_CAMERA] = info["features"]["observation.images.corner"]
    info_path.write_text(json.dumps(info, indent=2))
    import pyarrow.parquet as pq

    episodes_file = next((dataset / "meta" / "episodes").rglob("*.parquet"))
    table = pq.read_table(episodes_file)
    for column in [c for c in table.column_names if c.startswith("videos/observation.images.corner/")]:
        name = column.replace("observation.images.corner", SECOND_CAMERA)
        table = table.append_column(name, table.column(column))
    pq.write_table(table, episodes_file)
    return dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--loader_workers", type=int, default=2)
    parser.add_argument("--loader_packs", type=int, default=20)
    parser.add_argument(
        "--dataset_config_file", default=None, help="dataset YAML to measure (default: the 2-view AV1 fixture)"
    )
    parser.add_argument(
        "--cache_dir", default=None, help="statistics cache for --dataset_config_file (default: beingh's own)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.dataset_config_file is None:
            register_data_config("metaworld_two_view", TwoViewMetaWorldDataConfig)
            config = tmp_path / "bench.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "bench": {
                            "dataset_names": [str(make_two_view_dataset(tmp_path))],
                            "data_config_names": "metaworld_two_view",
                            "embodiment_tags": "metaworld",
                        }
                    }
                )
            )
            stats_cache_dir = tmp_path / "stats"
            dataset_description = "LeRobot v3.0 AV1 fixture, 2 views (same video declared twice)"
        else:
            config = Path(args.dataset_config_file)
            stats_cache_dir = args.cache_dir
            dataset_description = str(config.resolve())
        tokenizer = build_tiny_tokenizer()
        data_args = DataArgs(force_image_size=args.image_size, num_workers=0)
        loader = build_train_loader(
            config,
            tokenizer,
            data_args,
            SequenceArgs(),
            stats_cache_dir=stats_cache_dir,
            multiprocessing_context="forkserver",
        )
        stream = loader.make_stream(0)
        source = stream.source
        keys = [stream.sampler.next_key(stream.sampler.next_group()) for _ in range(args.samples)]
        for key in keys[:10]:
            source.build(key)  # warm up: open files, first decode, layout cache

        wall = np.zeros(3)  # sample build + decode, image transform, tokenize
        cpu = np.zeros(3)
        views = 0
        cpu_start = time.process_time()
        start = time.perf_counter()
        for key in keys:
            marks = [(time.perf_counter(), time.process_time())]
            rng = np.random.default_rng(key.seed)
            sample = source.builders[key.group][key.dataset](key.episode, key.frame, rng)
            views += len(sample.images)
            marks.append((time.perf_counter(), time.process_time()))
            pixels = torch.stack([source.image_transform(image, rng) for image in sample.images])
            marks.append((time.perf_counter(), time.process_time()))
            source.prompt_builder.tokenize(sample, pixels)
            marks.append((time.perf_counter(), time.process_time()))
            steps = np.diff(np.array(marks), axis=0)
            wall += steps[:, 0]
            cpu += steps[:, 1]
        elapsed = time.perf_counter() - start
        cpu_elapsed = time.process_time() - cpu_start
        n = len(keys)

        loader_figures = {}
        if args.loader_workers > 0:
            data_args = DataArgs(
                force_image_size=args.image_size, num_workers=args.loader_workers, prefetch_factor=2
            )
            packed = build_train_loader(
                config, tokenizer, data_args, SequenceArgs(), stats_cache_dir=stats_cache_dir
            )
            iterator = iter(packed)
            next(iterator)  # worker start-up excluded
            t0 = time.perf_counter()
            packs = [next(iterator) for _ in range(args.loader_packs)]
            dt = time.perf_counter() - t0
            samples = sum(p.num_samples for p in packs)
            loader_figures = {
                "loader_workers": args.loader_workers,
                "packs": len(packs),
                "samples_per_pack": samples / len(packs),
                "tokens_per_pack": sum(p.num_tokens for p in packs) / len(packs),
                "loader_samples_per_s": samples / dt,
                "loader_packs_per_s": len(packs) / dt,
            }
            del iterator

    result = {
        "benchmark": "data_loader",
        "config": {
            "dataset": dataset_description,
            "image_size": args.image_size,
            "views_per_sample": views / n,
            "samples": n,
            "sampling": "step, shuffled",
            "torch_threads": 1,
        },
        "device": {
            "cpu": platform.processor() or platform.machine(),
            "cores_visible": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_1min": os.getloadavg()[0],
            "note": "wall-clock figures (samples_per_s_per_core, ms_*) count time lost to other jobs "
            "on a shared machine; the CPU-time figures (samples_per_cpu_second, cpu_ms_*) "
            "measure this process's own work on one core",
        },
        "figures": {
            "samples_per_s_per_core": n / elapsed,
            "samples_per_cpu_second": n / cpu_elapsed,
            "ms_per_sample": 1000 * elapsed / n,
            "ms_sample_build_decode": 1000 * wall[0] / n,
            "ms_image_transform": 1000 * wall[1] / n,
            "ms_tokenize": 1000 * wall[2] / n,
            "cpu_ms_per_sample": 1000 * cpu_elapsed / n,
            "cpu_ms_sample_build_decode": 1000 * cpu[0] / n,
            "cpu_ms_image_transform": 1000 * cpu[1] / n,
            "cpu_ms_tokenize": 1000 * cpu[2] / n,
            **loader_figures,
        },
        "goal_samples_per_s_per_core": 400,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
