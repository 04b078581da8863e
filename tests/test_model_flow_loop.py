"""The cached Euler loop of `sample_actions` is lean: its setup is built once per call and it never syncs."""

from __future__ import annotations

import collections

import pytest
import torch

import beingh.model.attention as attention
import beingh.model.mot as mot
from beingh.model.beingh import BeingH
from beingh.model.tiny import synthetic_packed_batch, tiny_config

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")
"""Tensor methods that read values on the host (a device sync on CUDA)."""


def _model() -> BeingH:
    torch.manual_seed(0)
    return BeingH(tiny_config(use_mpg=True, mpg_lambda=0.3, mpg_refinement_iters=1)).eval()


def _counting(counts: collections.Counter, name: str, fn):
    def wrapper(*args, **kwargs):
        counts[name] += 1
        return fn(*args, **kwargs)

    return wrapper


def _setup_counts(monkeypatch, model: BeingH, steps: int, use_cache: bool) -> collections.Counter:
    """How often one `sample_actions` call builds masks, RoPE tables and mask metadata."""
    batch = synthetic_packed_batch(model.config, [2, 1], seed=3)
    counts = collections.Counter()
    monkeypatch.setattr(attention, "dense_mask", _counting(counts, "dense_mask", attention.dense_mask))
    monkeypatch.setattr(mot, "rope_cos_sin", _counting(counts, "rope_cos_sin", mot.rope_cos_sin))
    for cls, method in ((attention.AttentionMask, "__init__"), (attention.TokenMeta, "select")):
        monkeypatch.setattr(cls, method, _counting(counts, f"{cls.__name__}.{method}", getattr(cls, method)))
    model.sample_actions(batch, num_steps=steps, noise=torch.randn(2, 16, 200), use_cache=use_cache)
    monkeypatch.undo()
    return counts


def test_cached_loop_builds_masks_and_rope_once_per_call(monkeypatch):
    model = _model()
    few, many = (_setup_counts(monkeypatch, model, steps, use_cache=True) for steps in (2, 7))
    assert few == many and min(few[k] for k in ("dense_mask", "rope_cos_sin", "AttentionMask.__init__")) > 0
    # The counters do see per-step work: the reference path rebuilds everything every step.
    few, many = (_setup_counts(monkeypatch, model, steps, use_cache=False) for steps in (2, 7))
    assert many["dense_mask"] > few["dense_mask"] and many["rope_cos_sin"] > few["rope_cos_sin"]


def _sync_count(monkeypatch, model: BeingH, steps: int, prefix: bool) -> int:
    batch = synthetic_packed_batch(model.config, [2, 1], seed=3)
    extra = {"prefix_actions": torch.randn(2, 5, 200), "prefix_len": torch.tensor([2, 4])} if prefix else {}
    counts = collections.Counter()
    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, _counting(counts, name, getattr(torch.Tensor, name)))
    model.sample_actions(batch, num_steps=steps, noise=torch.randn(2, 16, 200), **extra)
    monkeypatch.undo()
    return sum(counts.values())


@pytest.mark.parametrize("prefix", [False, True])
def test_cached_loop_never_reads_tensor_values_on_the_host(monkeypatch, prefix):
    """Only the once-per-call input check reads a value back; an Euler step adds no sync."""
    model = _model()
    few, many = (_sync_count(monkeypatch, model, steps, prefix) for steps in (2, 7))
    assert few == many == 1


def test_decoder_layers_trace_whole_in_every_sampling_pass():
    """Full pass, prefix pass and cached steps each compile to one graph per layer (no graph breaks), the
    precondition for inductor and CUDA graphs; `compile_for_inference` compiles the same layers."""
    model = _model()
    batch = synthetic_packed_batch(model.config, [2, 1], seed=3)
    noise = torch.randn(2, 16, 200)
    expected = model.sample_actions(batch, num_steps=3, noise=noise, use_cache=False)
    torch._dynamo.reset()
    try:
        for layer in model.language_model.model.layers:
            layer.compile(dynamic=True, backend="eager", fullgraph=True)
        for use_cache in (True, False):
            out = model.sample_actions(batch, num_steps=3, noise=noise, use_cache=use_cache)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    finally:
        torch._dynamo.reset()


def _compiled_graphs(num_layers: int) -> int:
    """Graphs dynamo builds for `compile_for_inference` over cached and full sampling of 1- and 2-view packs."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    config = tiny_config(use_mpg=True, mpg_lambda=0.3, llm={"num_hidden_layers": num_layers},
                         expert={"num_hidden_layers": num_layers})
    model = BeingH(config).eval()
    torch._dynamo.reset()
    counters.clear()
    try:
        model.compile_for_inference(backend="eager")
        for views in ([1], [2]):
            batch = synthetic_packed_batch(config, views, seed=3)
            for use_cache in (True, False):
                model.sample_actions(batch, num_steps=2, noise=torch.randn(1, 16, 200), use_cache=use_cache)
        assert not counters["unimplemented"], dict(counters["unimplemented"])  # e.g. recompile limit hit
        return counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()


def test_compile_for_inference_shares_graphs_across_decoder_layers():
    """A layer reading its index (as a cache slot) compiled once per layer and, past dynamo's recompile
    limit (8), ran the remaining layers of the 28-layer model eagerly."""
    assert _compiled_graphs(2) == _compiled_graphs(12)
