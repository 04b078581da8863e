"""`benchmarks/gpu_suite.sh`: the tiny CPU run writes the full report, and a failing, hanging or partly
failing stage is recorded without stopping the run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from beingh.model.beingh import BeingH
from benchmarks import gpu_suite as suite
from benchmarks import policy_latency
from tests.conftest import REPO_ROOT

STAGES = ("environment", "memory_estimate", "model_step", "train_no_ckpt", "train_ckpt", "policy_latency",
          "policy_latency_compiled", "precision")
VARIANT_CASES = {"eager_1view", "eager_uncached_1view", "eager_2view", "eager_uncached_2view", "cuda_graph_1view",
                 "cuda_graph_2view", "compiled_1view", "compiled_2view", "compiled_cuda_graph_1view",
                 "compiled_cuda_graph_2view"}


@pytest.mark.slow
def test_tiny_run_writes_every_stage_figure(tmp_path):
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_suite.sh"), "--tiny", "--results_dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report_path,) = tmp_path.glob("cpu-tiny-*.json")
    assert report_path.with_suffix(".log").is_file()
    report = json.loads(report_path.read_text())
    assert {name: r["status"] for name, r in report["stages"].items()} == dict.fromkeys(STAGES, "ok")
    assert report["environment"]["torch"] and report["config"]["flow_steps"] == 4
    s = report["summary"]
    assert s["model_step"]["fwd_bwd_ms"] > 0 and s["model_step"]["tokens_per_s"] > 0
    for name in ("train_no_ckpt", "train_ckpt"):
        assert s[name]["samples_per_s"] > 0 and s[name]["state_gib"]["optimizer"] > 0
        predicted = s[name]["predicted_peak_gib"]
        assert 0 < predicted["forward_end"] < predicted["with_all_grads"]
    assert report["stages"]["train_ckpt"]["result"]["config"]["grad_checkpoint"] is True
    assert set(s["policy_latency"]) == VARIANT_CASES
    for case in s["policy_latency"].values():
        assert 0 < case["get_action_p50_ms"] <= case["get_action_p95_ms"]
    for part in ("velocity", "sample_actions"):
        assert 0 < s["precision"][part]["max_abs_err"] < 0.1 and s["precision"][part]["finite"]
    assert "goals" not in s  # goals are for the full shape on a GPU only
    assert "policy_latency" in proc.stdout and "compiled_cuda_graph_1view" in proc.stdout  # the table


def _stage(name: str, code: str, cap_s: float = 60) -> suite.Stage:
    return suite.Stage(name, [sys.executable, "-c", code], cap_s)


def test_failing_hanging_and_partial_stages_are_recorded(tmp_path):
    log = (tmp_path / "log").open("w")
    ok = suite.run_stage(_stage("ok", "print('noise'); print('{\"x\": 1}')"), 60, log)
    assert ok["status"] == "ok" and ok["result"] == {"x": 1}
    failed = suite.run_stage(_stage("failed", "raise MemoryError('CUDA out of memory. Tried to allocate')"), 60, log)
    assert failed["status"] == "error" and failed["out_of_memory"] and "Tried to allocate" in failed["error"]
    partial = suite.run_stage(_stage("partial", "print('{\"results\": []}'); raise SystemExit(1)"), 60, log)
    assert partial["status"] == "partial" and partial["result"] == {"results": []}
    silent = suite.run_stage(_stage("silent", "pass"), 60, log)
    assert silent["status"] == "error" and "no JSON" in silent["error"]
    hung = suite.run_stage(_stage("hung", "import time; time.sleep(60)"), 1, log)
    assert hung["status"] == "timeout" and hung["seconds"] < 30


def test_summary_and_table_survive_missing_stages():
    records = {"model_step": {"status": "error", "error": "boom"}, "policy_latency": {"status": "partial", "result": {
        "results": [{"variant": "cuda_graph", "views": 1, "prefix_cache": True, "error": "RuntimeError: capture"}]}}}
    summary = suite.summarize(records)
    assert summary["model_step"]["mfu"] is None and summary["policy_latency"]["cuda_graph_1view"]["error"]
    summary["goals"] = suite.goals(summary)
    assert set(summary["goals"].values()) == {None}
    text = suite.table({"stages": records, "summary": summary})
    assert "model_step" in text and "ERROR RuntimeError: capture" in text


def test_goals_judge_the_full_shape_figures():
    summary = suite.summarize({})
    summary["policy_latency"] = {"compiled_cuda_graph_1view": {"get_action_p50_ms": 9.0},
                                 "eager_1view": {"get_action_p50_ms": 40.0}}
    summary["train_no_ckpt"].update(mfu=0.35, fits_80gb_card=False)
    summary["train_ckpt"].update(fits_80gb_card=True)
    assert suite.goals(summary) == {"get_action_p50_le_15ms_1view": True, "training_mfu_ge_40pct": False,
                                    "no_oom_80gb_1gpu_no_ckpt": False, "no_oom_80gb_1gpu_ckpt": True}
    assert suite.device_slug({"gpu": "NVIDIA H100 80GB HBM3"}, tiny=False) == "nvidia-h100-80gb-hbm3"


@pytest.mark.parametrize(("record", "gpu_gib", "fits"), [
    ({"status": "ok", "result": {"peak_reserved_gib": 78.5}}, 79.1, True),  # it ran on an 80 GB card
    ({"status": "ok", "result": {"peak_reserved_gib": 78.5}}, 139.8, False),  # too much for one
    ({"status": "ok", "result": {"peak_reserved_gib": 60.0}}, 139.8, True),
    ({"status": "error", "out_of_memory": True}, 79.1, False),
    ({"status": "error", "out_of_memory": True}, 139.8, None),  # over 140 GB: says nothing about 80
    ({"status": "timeout"}, 139.8, None),
])
def test_fits_an_80gb_card(record, gpu_gib, fits):
    assert suite.fits_80gb_card(record, gpu_gib) is fits


def test_unknown_stage_names_are_refused(capsys):
    with pytest.raises(SystemExit):
        suite.main(["--tiny", "--stages", "no_such_stage"])
    assert "unknown stages ['no_such_stage']" in capsys.readouterr().err


def test_policy_latency_records_a_failed_compile_and_skips_what_depends_on_it(monkeypatch, capsys):
    def broken_compile(self, backend="inductor"):
        def fail(*args, **kwargs):
            raise RuntimeError("inductor failed")

        for block in self.blocks():
            block.forward = fail

    monkeypatch.setattr(BeingH, "compile_for_inference", broken_compile)
    args = ["--tiny", "--views", "1", "2", "--warmup", "0", "--iters", "1", "--variants", "eager", "compiled",
            "compiled_cuda_graph"]
    assert policy_latency.main(args) == 1
    results = json.loads(capsys.readouterr().out)["results"]
    errors = {(r["variant"], r["views"], r["prefix_cache"]): r.get("error") for r in results}
    assert [k for k, e in errors.items() if e is None] == [("eager", 1, True), ("eager", 1, False),
                                                            ("eager", 2, True), ("eager", 2, False)]
    assert errors[("compiled", 1, True)] == "RuntimeError: inductor failed"
    for key in (("compiled", 2, True), ("compiled_cuda_graph", 1, True), ("compiled_cuda_graph", 2, True)):
        assert errors[key].startswith("skipped after an earlier failure: RuntimeError: inductor failed")
