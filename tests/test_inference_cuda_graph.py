"""The CUDA-graph flow sampler's CPU twin: the same static tensors, copies and layout keys as on a GPU, with
the captured loop run eagerly, must give `sample_actions`' result on every call (a tensor the loop reads
but the sampler forgot to refresh would replay the capture call's values)."""

from __future__ import annotations

import collections
from dataclasses import replace

import numpy as np
import pytest
import torch

from beingh.inference.cuda_graph import CUDAGraphSampler
from beingh.model.beingh import BeingH
from beingh.model.tiny import synthetic_packed_batch, tiny_config
from tests.test_inference_policy import make_policy, noise, observation, write_checkpoint
from tests.test_model_flow_loop import SYNC_METHODS


def _model() -> BeingH:
    torch.manual_seed(0)
    return BeingH(tiny_config(use_mpg=True, mpg_lambda=0.5, mpg_refinement_iters=1)).eval()


def _call(seed: int, batch) -> dict:
    """A new observation for the same layout: other pixels, state, noise and RTC prefix."""
    gen = torch.Generator().manual_seed(seed)
    b = batch.num_samples
    return {
        "batch": replace(batch, pixel_values=torch.randn(batch.pixel_values.shape, generator=gen),
                         state=torch.randn(batch.state.shape, generator=gen)),
        "noise": torch.randn(b, 16, 200, generator=gen),
        "prefix_actions": torch.randn(b, 6, 200, generator=gen),
        "prefix_len": seed % 4,
    }


def _check(sampler: CUDAGraphSampler, call: dict, steps: int = 3) -> None:
    expected = sampler.model.sample_actions(call["batch"], num_steps=steps, noise=call["noise"],
                                            prefix_actions=call["prefix_actions"], prefix_len=call["prefix_len"])
    got = sampler(call["batch"], num_steps=steps, noise=call["noise"], prefix_actions=call["prefix_actions"],
                  prefix_len=call["prefix_len"])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_replays_give_sample_actions_result_for_new_images_state_noise_and_prefix():
    model = _model()
    sampler = CUDAGraphSampler(model)
    layout = synthetic_packed_batch(model.config, [2, 1], seed=3)
    for seed in range(4):
        _check(sampler, _call(seed, layout))
    assert sampler.captures == 1
    # MPG reads the state features and the prefix pass fills the cache: both changed between the calls.
    first, second = (sampler(**_call(seed, layout)) for seed in (0, 1))
    assert not torch.allclose(first, second)


def test_a_new_layout_or_step_count_captures_its_own_graph():
    model = _model()
    sampler = CUDAGraphSampler(model, max_graphs=2)
    causal = synthetic_packed_batch(model.config, [1], seed=3)
    full = synthetic_packed_batch(model.config, [1], seed=3, attn_mode="full")  # same length, other mask
    shifted = replace(causal, position_ids=causal.position_ids + 5)  # same mask, other RoPE positions
    assert causal.sample_lens == full.sample_lens == shifted.sample_lens
    for batch in (causal, full, shifted):
        _check(sampler, _call(1, batch))
    assert sampler.captures == 3
    _check(sampler, _call(2, shifted), steps=5)
    assert sampler.captures == 4
    # Equal layout tensors (not the same objects) replay: no capture. The oldest graph was dropped.
    _check(sampler, _call(3, replace(shifted, position_ids=shifted.position_ids.clone())), steps=5)
    assert sampler.captures == 4
    _check(sampler, _call(4, causal))
    assert sampler.captures == 5


def test_original_mpg_semantics_with_one_noise_per_pass_replays_and_a_noise_shape_change_recaptures():
    torch.manual_seed(0)
    model = BeingH(tiny_config(use_mpg=True, mpg_lambda=0.5, mpg_refinement_iters=1,
                               mpg_semantics="original", mpg_seed=7)).eval()
    sampler = CUDAGraphSampler(model)
    layout = synthetic_packed_batch(model.config, [1], seed=3)
    for seed in range(3):
        call = _call(seed, layout)
        call["noise"] = torch.randn(2, *call["noise"].shape, generator=torch.Generator().manual_seed(seed))
        _check(sampler, call)
    assert sampler.captures == 1
    # One noise for all passes (the refinement pass then draws fresh noise): another static shape, another graph.
    assert sampler(**_call(5, layout), num_steps=3).shape == (1, 16, 200)
    assert sampler.captures == 2


def test_a_replay_with_the_same_layout_tensors_never_reads_values_on_the_host(monkeypatch):
    model = _model()
    sampler = CUDAGraphSampler(model)
    layout = synthetic_packed_batch(model.config, [2, 1], seed=3)
    sampler(**_call(0, layout))
    counts = collections.Counter()
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda *a, _name=name, _fn=original, **k: counts.update([_name]) or _fn(*a, **k))
    sampler(**_call(1, layout))
    monkeypatch.undo()
    assert sum(counts.values()) == 0, counts


def test_rejects_an_empty_graph_budget():
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphSampler(_model(), max_graphs=0)


def test_policy_with_cuda_graph_returns_the_same_actions(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", use_mpg=True, mpg_lambda=0.5)
    plain = make_policy(checkpoint, rtc_inference_delay=2)
    graphed = make_policy(checkpoint, rtc_inference_delay=2, cuda_graph=True)
    for seed in range(3):  # the second and third calls lock an RTC prefix from the previous chunk
        a = plain.get_action(observation(seed), executed_steps=4 if seed else None, noise=noise(seed))
        b = graphed.get_action(observation(seed), executed_steps=4 if seed else None, noise=noise(seed))
        for key in a:
            np.testing.assert_allclose(b[key], a[key], atol=1e-5, rtol=1e-5)
    assert graphed.flow_graphs.captures == 1
