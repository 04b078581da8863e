"""The GPU figures at the full 2B shape in one run: training step, training throughput, policy latency and
bf16 accuracy, written to one JSON file and summarised in a table. Run it through `gpu_suite.sh`.

Stages, in order, each in its own process (an out-of-memory error, a failed compile or a hang ends that
stage only; its error lands in the JSON and the next stage starts on a clean GPU):

  environment          torch / CUDA / cuDNN / NCCL versions, GPU name and memory
  memory_estimate      predicted training memory per GPU (CPU only: parameter counts, measured activations)
  model_step           8192-token pack, compiled FlexAttention, bf16, fwd+bwd: step time, MFU
  train_no_ckpt        FSDP2 (1 GPU, NCCL), fp32 master weights, AdamW: samples/s, tokens/s, MFU, memory
  train_ckpt           the same with activation checkpointing
  policy_latency       get_action p50/p95, 1 and 2 views at 224 px, 4 flow steps, MPG as in the guide:
                       eager (with and without the prefix cache), eager + CUDA graph
  policy_latency_compiled   the same after compile_for_inference: compiled, compiled + CUDA graph (its
                       own process, so a failed or slow compile cannot cost the eager figures)
  precision            bf16 against fp32: predicted velocity of one forward, one sampled chunk

A stage's status is ok, partial (it reported failed cases next to its figures), error, timeout or
skipped. Each stage has a time cap, and the run a total budget (`--budget_s`): a stage gets what is
left, and stages past the budget are skipped. The JSON (`<results_dir>/<gpu>-<UTC time>.json`) holds the
environment, the configuration, every stage's full result or error, a summary of the headline figures
and, for the full shape, issue 12's goals; the log beside it holds every stage's output. `--tiny` runs the same stages on the CPU with the tiny
model (the compiled variants trace with dynamo's eager backend, the CUDA-graph variants run the sampler's
eager twin, FlexAttention's backward is not available on CPU so model_step uses SDPA) to keep this
script working between GPU runs. Exit status 0 when every stage succeeded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
GOALS = {
    "get_action_p50_ms_1view": 15.0,
    "training_mfu": 0.40,
    "card_memory_gib": 80.0,
}
"""Issue 12's targets on an H100-class GPU: get_action p50 (1 view, 224 px, 4 steps), training MFU at 8192
tokens, and no out-of-memory error at the guide's settings on an 80 GB card."""
USABLE_80GB_GIB = 78.0
"""On a larger card, a peak (reserved) up to this fits an 80 GB one: an 80 GB H100 reports 79.1 GiB, and
about 1 GiB goes to the CUDA context, NCCL and cuBLAS workspaces."""

ENVIRONMENT = """
import json, os, platform, sys
import torch
cuda = torch.cuda.is_available()
props = torch.cuda.get_device_properties(0) if cuda else None
nccl = torch.cuda.nccl.version() if cuda else None
print(json.dumps({
    "python": sys.version.split()[0],
    "platform": platform.platform(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version() if cuda else None,
    "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "gpu_memory_gib": props.total_memory / 2**30 if cuda else None,
    "gpu_count": torch.cuda.device_count(),
    "compute_capability": f"{props.major}.{props.minor}" if cuda else None,
    "cpu_count": os.cpu_count(),
    "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
}))
"""


@dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str]
    cap_s: float


def stages(tiny: bool) -> list[Stage]:
    py = sys.executable
    if tiny:
        return [
            Stage("environment", [py, "-c", ENVIRONMENT], 60),
            Stage("memory_estimate", [py, "benchmarks/memory_estimate.py", "--tiny"], 60),
            Stage("model_step", [py, "benchmarks/model_step.py", "--tiny", "--warmup", "0", "--iters", "1",
                                 "--samples", "2"], 120),
            Stage("train_no_ckpt", [py, "benchmarks/train_throughput.py", "--tiny", "--warmup", "1",
                                    "--steps", "1", "--tokens", "256"], 120),
            Stage("train_ckpt", [py, "benchmarks/train_throughput.py", "--tiny", "--warmup", "1", "--steps", "1",
                                 "--tokens", "256", "--grad_checkpoint"], 120),
            Stage("policy_latency", [py, "-m", "benchmarks.policy_latency", "--tiny", "--threads", "1", "--mpg",
                                     "--warmup", "1", "--iters", "3", "--variants", "eager", "cuda_graph"], 120),
            Stage("policy_latency_compiled", [py, "-m", "benchmarks.policy_latency", "--tiny", "--threads", "1",
                                              "--mpg", "--warmup", "1", "--iters", "3", "--variants", "compiled",
                                              "compiled_cuda_graph"], 120),
            Stage("precision", [py, "benchmarks/precision_check.py", "--tiny", "--samples", "2"], 120),
        ]
    return [
        Stage("environment", [py, "-c", ENVIRONMENT], 60),
        Stage("memory_estimate", [py, "benchmarks/memory_estimate.py"], 60),
        Stage("model_step", [py, "benchmarks/model_step.py", "--attn-backend", "flex", "--warmup", "2",
                             "--iters", "8"], 150),
        Stage("train_no_ckpt", [py, "benchmarks/train_throughput.py", "--tokens", "8192", "--views", "2",
                                "--warmup", "2", "--steps", "8"], 120),
        Stage("train_ckpt", [py, "benchmarks/train_throughput.py", "--tokens", "8192", "--views", "2",
                             "--warmup", "2", "--steps", "8", "--grad_checkpoint"], 120),
        Stage("policy_latency", [py, "-m", "benchmarks.policy_latency", "--mpg", "--views", "1", "2",
                                 "--warmup", "5", "--iters", "30", "--variants", "eager", "cuda_graph"], 120),
        Stage("policy_latency_compiled", [py, "-m", "benchmarks.policy_latency", "--mpg", "--views", "1", "2",
                                          "--warmup", "10", "--iters", "30", "--variants", "compiled",
                                          "compiled_cuda_graph"], 240),
        Stage("precision", [py, "benchmarks/precision_check.py"], 90),
    ]


def last_json(text: str) -> dict | None:
    """The last top-level JSON object printed (the benchmarks print one, indented, at the end)."""
    starts = [m.start() for m in re.finditer(r"^\{", text, flags=re.MULTILINE)]
    for start in reversed(starts):
        try:
            return json.JSONDecoder().raw_decode(text[start:])[0]
        except json.JSONDecodeError:
            continue
    return None


def run_stage(stage: Stage, timeout_s: float, log) -> dict:
    """Run one stage in its own process group (so a timeout also ends its compile workers). Recompiles
    and graph breaks go to the log."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "TORCH_LOGS": os.environ.get("TORCH_LOGS", "recompiles,graph_breaks")}
    proc = subprocess.Popen(stage.argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        status = "ok" if proc.returncode == 0 else "error"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        status = "timeout"
    seconds = time.perf_counter() - started
    log.write(f"===== {stage.name} ({status}, {seconds:.1f} s): {' '.join(stage.argv)}\n")
    log.write(f"----- stdout\n{out}\n----- stderr\n{err}\n")
    log.flush()
    record = {"status": status, "seconds": round(seconds, 1), "command": stage.argv[1:]}
    result = last_json(out)
    if status == "ok" and result is None:
        status = record["status"] = "error"
        err += "\nthe stage printed no JSON result"
    if status == "error" and result is not None:
        status = record["status"] = "partial"  # a benchmark that reports its own failed cases
    if result is not None:
        record["result"] = result
    if status != "ok":
        record["returncode"] = proc.returncode
        record["error"] = err[-3000:]
        record["out_of_memory"] = "OutOfMemoryError" in err or "CUDA out of memory" in err
        if status == "timeout":
            record["error"] = f"killed after {timeout_s:.0f} s\n" + record["error"]
    return record


def _get(record: dict, *path):
    value = record.get("result")
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def fits_80gb_card(record: dict, gpu_memory_gib: float | None) -> bool | None:
    """Whether a training stage would run on an 80 GB card: it did, on one; else its peak fits in one."""
    if record.get("out_of_memory"):
        return False if gpu_memory_gib is None or gpu_memory_gib < 81 else None
    peak = _get(record, "peak_reserved_gib")
    if peak is None:
        return None
    return True if gpu_memory_gib is not None and gpu_memory_gib < 81 else peak <= USABLE_80GB_GIB


def summarize(records: dict[str, dict]) -> dict:
    """The headline figures of every stage (None where a stage gave none)."""
    gpu_memory_gib = _get(records.get("environment", {}), "gpu_memory_gib")
    summary: dict = {}
    step = records.get("model_step", {})
    summary["model_step"] = {
        "fwd_bwd_ms": _scaled(_get(step, "fwd_bwd_s_median"), 1000),
        "tokens_per_s": _get(step, "tokens_per_s"),
        "mfu": _get(step, "mfu"),
        "peak_memory_gib": _get(step, "peak_memory_gib"),
        "pack_tokens": _get(step, "config", "pack_tokens"),
    }
    predicted = _get(records.get("memory_estimate", {}), "predicted_peak_gib") or {}
    for name in ("train_no_ckpt", "train_ckpt"):
        record = records.get(name, {})
        summary[name] = {
            "predicted_peak_gib": predicted.get("1gpu_" + name.removeprefix("train_")),
            "samples_per_s": _get(record, "samples_per_s"),
            "tokens_per_s": _get(record, "tokens_per_s"),
            "mfu": _get(record, "mfu"),
            "peak_memory_gib": _get(record, "peak_memory_gib"),
            "peak_reserved_gib": _get(record, "peak_reserved_gib"),
            "state_gib": _get(record, "state_gib"),
            "peak_gib_if_sharded": _get(record, "peak_gib_if_sharded"),
            "fits_80gb_card": fits_80gb_card(record, gpu_memory_gib),
            "out_of_memory": record.get("out_of_memory", False),
        }
    latency = {}
    cases = [case for name in ("policy_latency", "policy_latency_compiled")
             for case in _get(records.get(name, {}), "results") or []]
    for case in cases:
        key = f"{case['variant']}{'' if case['prefix_cache'] else '_uncached'}_{case['views']}view"
        if "error" in case:
            latency[key] = {"error": case["error"]}
            continue
        latency[key] = {
            "get_action_p50_ms": case["get_action_ms"]["p50"],
            "get_action_p95_ms": case["get_action_ms"]["p95"],
            "model_p50_ms": case["model_ms"]["p50"],
            "num_tokens": case["num_tokens"],
        }
    summary["policy_latency"] = latency
    precision = records.get("precision", {})
    summary["precision"] = {"velocity": _get(precision, "velocity"),
                            "sample_actions": _get(precision, "sample_actions")}
    return summary


def goals(summary: dict) -> dict[str, bool | None]:
    """Each of issue 12's goals: met, missed, or None when its stage gave no figure."""
    latency = summary["policy_latency"]
    one_view = [v["get_action_p50_ms"] for k, v in latency.items() if k.endswith("_1view") and "error" not in v]
    mfu = summary["train_no_ckpt"]["mfu"]
    return {
        "get_action_p50_le_15ms_1view": None if not one_view else min(one_view) <= GOALS["get_action_p50_ms_1view"],
        "training_mfu_ge_40pct": None if mfu is None else mfu >= GOALS["training_mfu"],
        "no_oom_80gb_1gpu_no_ckpt": summary["train_no_ckpt"]["fits_80gb_card"],
        "no_oom_80gb_1gpu_ckpt": summary["train_ckpt"]["fits_80gb_card"],
    }


def last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


def _scaled(value, factor):
    return None if value is None else value * factor


def _fmt(value, spec: str = ".1f", suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:{spec}}{suffix}"


def table(report: dict) -> str:
    s = report["summary"]
    rows = [("stage", "figure", "value")]
    for name, record in report["stages"].items():
        if record["status"] != "ok":
            rows.append((name, record["status"], last_line(record.get("error"))[:80]))
    m = s["model_step"]
    rows += [
        ("model_step", f"fwd+bwd ms ({_fmt(m['pack_tokens'], 'd')} tok)", _fmt(m["fwd_bwd_ms"])),
        ("model_step", "MFU | peak GiB", f"{_fmt(_scaled(m['mfu'], 100), '.1f', '%')} | {_fmt(m['peak_memory_gib'])}"),
    ]
    for name in ("train_no_ckpt", "train_ckpt"):
        t = s[name]
        rows.append((name, "samples/s | tokens/s | MFU",
                     f"{_fmt(t['samples_per_s'])} | {_fmt(t['tokens_per_s'], '.0f')} | "
                     f"{_fmt(_scaled(t['mfu'], 100), '.1f', '%')}"))
        predicted = t["predicted_peak_gib"] or {}
        rows.append((name, "peak GiB: predicted | alloc | reserved",
                     f"{_fmt(predicted.get('forward_end'))}-{_fmt(predicted.get('with_all_grads'))} | "
                     f"{_fmt(t['peak_memory_gib'])} | {_fmt(t['peak_reserved_gib'])}"))
        rows.append((name, "fits an 80 GB card (1 GPU)", _fmt(t["fits_80gb_card"])))
    for key, v in s["policy_latency"].items():
        value = (f"ERROR {v['error'][:60]}" if "error" in v
                 else f"{_fmt(v['get_action_p50_ms'], '.2f')} | {_fmt(v['get_action_p95_ms'], '.2f')}")
        rows.append(("policy_latency", f"{key} p50 | p95 ms", value))
    for part in ("velocity", "sample_actions"):
        e = s["precision"][part] or {}
        rows.append(("precision", f"bf16 vs fp32 {part}: max abs | max rel | rel L2",
                     f"{_fmt(e.get('max_abs_err'), '.2e')} | {_fmt(e.get('max_rel_err'), '.2e')} | "
                     f"{_fmt(e.get('rel_l2_err'), '.2e')}"))
    for goal, met in (s.get("goals") or {}).items():
        rows.append(("goal", goal, _fmt(met)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def device_slug(environment: dict | None, tiny: bool) -> str:
    if tiny:
        return "cpu-tiny"
    name = (environment or {}).get("gpu") or "unknown-device"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (keeps the script tested)")
    parser.add_argument("--stages", nargs="+", default=None,
                        help="run only these (environment always runs), e.g. to redo a failed one")
    parser.add_argument("--budget_s", type=float, default=540.0,
                        help="total seconds for all stages (typical full run on an H100/H200: under 8 minutes)")
    parser.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    plan = stages(args.tiny)
    known = [s.name for s in plan]
    if args.stages:
        unknown = sorted(set(args.stages) - set(known))
        if unknown:
            parser.error(f"unknown stages {unknown}; known: {known}")
        plan = [s for s in plan if s.name == "environment" or s.name in args.stages]
    started_at = dt.datetime.now(dt.UTC)
    stamp = started_at.strftime("%Y-%m-%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.results_dir / f"suite-{stamp}.log"
    deadline = time.perf_counter() + args.budget_s
    records: dict[str, dict] = {}
    with log_path.open("w") as log:
        for index, stage in enumerate(plan, 1):
            left = deadline - time.perf_counter()
            if left < 10:
                records[stage.name] = {"status": "skipped", "error": f"budget of {args.budget_s:.0f} s used up"}
                print(f"[{index}/{len(plan)}] {stage.name}: skipped (budget used up)", flush=True)
                continue
            timeout = min(stage.cap_s, left)
            print(f"[{index}/{len(plan)}] {stage.name} (up to {timeout:.0f} s) ...", flush=True)
            records[stage.name] = record = run_stage(stage, timeout, log)
            note = "" if record["status"] == "ok" else f": {last_line(record.get('error'))}"
            print(f"[{index}/{len(plan)}] {stage.name}: {record['status']} in {record['seconds']:.0f} s{note}",
                  flush=True)

    environment = records.get("environment", {}).get("result")
    report = {
        "suite": "benchmarks/gpu_suite.sh",
        "mode": "tiny (CPU smoke run, not a GPU figure)" if args.tiny else "full 2B shape",
        "started_utc": started_at.isoformat(timespec="seconds"),
        "wall_s": round(sum(r.get("seconds", 0) for r in records.values()), 1),
        "budget_s": args.budget_s,
        "environment": environment,
        "config": {
            "model": "tiny" if args.tiny else "InternViT-300M + Qwen3-1.7B-shaped LLM + Qwen3-0.6B-shaped expert (MoT)",
            "weights": "random (meta device, initialised on the device)",
            "training_pack_tokens": 256 if args.tiny else 8192,
            "views_per_sample": 2,
            "image_size": 56 if args.tiny else 224,
            "flow_steps": 4,
            "mpg": "on (lambda 0.1), as in the training guide",
            "compute_dtype": "fp32 (CPU)" if args.tiny else "bf16",
            "goals": GOALS,
        },
        "stages": records,
    }
    report["summary"] = summarize(records)
    if not args.tiny:
        report["summary"]["goals"] = goals(report["summary"])
    out_path = args.results_dir / f"{device_slug(environment, args.tiny)}-{stamp}.json"
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    log_path = log_path.rename(out_path.with_suffix(".log"))
    print()
    print(table(report))
    print(f"\nresults: {out_path}\nlog:     {log_path}")
    return 0 if all(r["status"] == "ok" for r in records.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
