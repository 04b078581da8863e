"""The training-throughput benchmark's CPU smoke run (the 2B shape needs a GPU)."""

from __future__ import annotations

import json

from test_model_flops import load_benchmark


def test_train_throughput_benchmark_runs_tiny_on_cpu(capsys):
    module = load_benchmark("train_throughput")
    assert module.main(["--tiny", "--warmup", "1", "--steps", "1", "--tokens", "256"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"]["type"] == "cpu" and result["config"]["model"] == "tiny"
    assert result["samples_per_s"] > 0 and result["tokens_per_s"] > 0 and result["model_tflops_per_step"] > 0
    assert result["config"]["pack_tokens"] <= 256
