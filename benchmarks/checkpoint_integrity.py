"""sha256 throughput of the checkpoint manifest: what writing (`hash_files` at save) and verifying (resume,
`BeingHPolicy`) a manifest costs per GB, on one file and on several files hashed in parallel threads.

    python benchmarks/checkpoint_integrity.py [--mb 256] [--files 4] [--tiny]

Prints one JSON object (config, device, figures). Wall time on a shared machine is inflated by other
load: the CPU time of this process is reported next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from beingh.checkpoint_manifest import hash_files  # noqa: E402


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="size of each test file")
    parser.add_argument("--files", type=int, default=4, help="files hashed together in parallel")
    parser.add_argument("--tiny", action="store_true", help="2 files of 1 MB: a smoke run")
    args = parser.parse_args(argv)
    if args.tiny:
        args.mb, args.files = 1, 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = [f"file_{i}.bin" for i in range(args.files)]
        for name in names:
            (folder / name).write_bytes(os.urandom(args.mb * 2**20))
        hash_files(folder, names[:1])  # page cache warm, as right after a save
        one_wall, one_cpu = _timed(lambda: hash_files(folder, names[:1]))
        all_wall, all_cpu = _timed(lambda: hash_files(folder, names))
    gb_one, gb_all = args.mb / 1024, args.mb * args.files / 1024
    report = {
        "config": {"file_mb": args.mb, "files": args.files, "algorithm": "sha256 (hashlib.file_digest)"},
        "device": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
        "one_file": {"wall_s": one_wall, "cpu_s": one_cpu, "gb_per_s_wall": gb_one / one_wall,
                     "gb_per_s_cpu": gb_one / max(one_cpu, 1e-9)},
        "parallel_files": {"wall_s": all_wall, "cpu_s": all_cpu, "gb_per_s_wall": gb_all / all_wall},
        "note": "files are in the page cache (as right after a save); a cold read adds disk time",
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
