"""FLOP counting for MFU, the 2B shape's parameter budget, and the model_step benchmark's CPU smoke run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from beingh.model.beingh import BeingH
from beingh.model.config import BeingHConfig
from beingh.model.flops import peak_bf16_tflops, training_flops
from beingh.model.tiny import synthetic_packed_batch, tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _count(module: torch.nn.Module, keep=lambda name: True) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if keep(n))


def test_full_shape_matches_the_reference_parameter_budget():
    """reference/upstream_model.md §8.1: 1.409 B VLM layers, 0.440 B expert layers, 0.303 B ViT, 2.81 B total."""
    with torch.device("meta"):
        model = BeingH(BeingHConfig(use_mpg=True, mpg_lambda=0.1))
    layers = model.language_model.model.layers
    assert _count(layers, lambda n: "_mot_gen" not in n) == pytest.approx(1.409e9, rel=1e-3)
    assert _count(layers, lambda n: "_mot_gen" in n) == pytest.approx(0.440e9, rel=2e-3)
    assert _count(model.vit_model) == pytest.approx(0.303e9, rel=2e-3)
    assert _count(model) == pytest.approx(2.81e9, rel=2e-3)
    assert model.config.tokens_per_image == 64


def test_training_flops_follow_the_documented_formula():
    config = tiny_config()
    with torch.device("meta"):
        model = BeingH(config)
    batch = synthetic_packed_batch(config, [1, 2])
    b, t = batch.num_samples, batch.chunk_length
    layers = model.language_model.model.layers
    heads = sum(
        _count(getattr(model, n)) for n in ("proprio_encoder_robot", "action_encoder", "action_decoder")
    )
    vit = _count(model.vit_model.encoder) + _count(model.vit_model.embeddings.patch_embedding)
    patches, n_img = (56 // 14) ** 2 + 1, 3
    dense = 6 * (
        vit * n_img * patches
        + _count(model.connector) * n_img * config.tokens_per_image
        + _count(layers, lambda n: "_mot_gen" not in n) * (batch.num_tokens - b * (1 + t))
        + (_count(layers, lambda n: "_mot_gen" in n) + heads) * b * (1 + t)
    )
    pairs = sum(n * (n + 1) / 2 for n in batch.sample_lens)
    attention = 12 * (2 * 64 * pairs + 2 * 32 * n_img * patches**2)
    assert training_flops(model, config, batch) == pytest.approx(dense + attention)
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_bf16_tflops("cpu") is None
    assert peak_bf16_tflops("NVIDIA H200") == 989.0 and peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0


def test_model_step_benchmark_runs_tiny_on_cpu(capsys):
    assert (
        load_benchmark("model_step").main(["--tiny", "--warmup", "0", "--iters", "1", "--samples", "2"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["device"]["type"] == "cpu" and result["config"]["model"] == "tiny"
    assert result["tokens_per_s"] > 0 and result["model_tflops_per_step"] > 0
    assert result["sample_actions_b1"]["cached_ms"] > 0
