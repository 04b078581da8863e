"""LIBERO env steps per second (wall and CPU) with the cameras rendering on every step, on every 8th step
(what the evaluation needs: one observation per replan), and never (the collector's physics-only rollout).

Runs in the LIBERO venv (`bash scripts/eval/setup_libero.sh`); prints one JSON object:

    .venv-libero/bin/python benchmarks/libero_render.py [--resolution 128] [--steps 48]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

import numpy as np

from beingh.eval.libero_env import LiberoEnv, load_task

MODES = {"every_step": 1, "every_8th_step": 8, "never": 0}


def measure(env: LiberoEnv, init_state: np.ndarray, actions: np.ndarray, every: int) -> dict[str, float]:
    env.reset(init_state, seed=0, render=False)
    wall, cpu = time.perf_counter(), time.process_time()
    for i, action in enumerate(actions):
        env.step(action, render=every > 0 and i % every == every - 1)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"steps_per_s": len(actions) / wall, "cpu_ms_per_step": 1000 * cpu / len(actions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--task", type=int, default=0, help="libero_spatial task id")
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # LIBERO prints to stdout; keep it pure JSON
        task = load_task("libero_spatial", args.task)
        env = LiberoEnv(task, args.resolution)
    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.uniform(-0.3, 0.3, (args.steps, 6)), np.full((args.steps, 1), -1.0)], axis=1)
    results = {mode: measure(env, task.init_states[0], actions, every) for mode, every in MODES.items()}
    env.close()
    print(json.dumps({
        "config": {"suite": "libero_spatial", "task": args.task, "resolution": args.resolution,
                   "cameras": 2, "steps": args.steps, "mujoco_gl": os.environ.get("MUJOCO_GL")},
        "device": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "load_average_1min": os.getloadavg()[0]},
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
