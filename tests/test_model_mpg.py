"""Sliced-Wasserstein distance, the MPG gate, and the RTC delay distribution."""

from __future__ import annotations

import math

import pytest
import torch

from beingh.model.mpg import MPGEnhancement, random_projections, sliced_wasserstein
from beingh.model.rtc import delay_distribution, fit_prefix, prefix_mask, sample_delays


def _gauss(b: int, n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


def test_identical_sets_have_zero_distance():
    x = _gauss(3, 20, 16, 0)
    proj = random_projections(16, 64, seed=0, device=torch.device("cpu"))
    assert torch.all(sliced_wasserstein(x, x, proj) == 0)
    shuffled = x[:, torch.randperm(20)]  # a set, not a sequence: order does not matter
    torch.testing.assert_close(sliced_wasserstein(x, shuffled, proj), torch.zeros(3), atol=1e-6, rtol=0)


def test_shifted_gaussians_give_the_projected_shift():
    d, shift = 32, torch.zeros(32)
    shift[:4] = torch.tensor([1.0, -2.0, 0.5, 3.0])
    x = _gauss(2, 50, d, 1)
    proj = random_projections(d, 20_000, seed=1, device=torch.device("cpu"))
    dist = sliced_wasserstein(x, x + shift, proj)
    exact = ((shift @ proj) ** 2).mean()  # every projected point moves by theta.shift
    torch.testing.assert_close(dist, exact.expand(2), atol=1e-4, rtol=1e-4)
    # E[(theta.mu)^2] = |mu|^2 / D for theta uniform on the sphere.
    assert math.isclose(float(exact), float(shift.pow(2).sum()) / d, rel_tol=0.05)


def test_distance_scales_quadratically_and_handles_unequal_sizes():
    x, y = _gauss(2, 16, 8, 2), _gauss(2, 16, 8, 3) + 1.0
    proj = random_projections(8, 32, seed=2, device=torch.device("cpu"))
    base = sliced_wasserstein(x, y, proj)
    torch.testing.assert_close(sliced_wasserstein(3 * x, 3 * y, proj), 9 * base, rtol=1e-5, atol=1e-6)
    # A set compared with itself repeated twice is the same empirical distribution.
    doubled = torch.cat([x, x], dim=1)
    assert torch.all(sliced_wasserstein(x, doubled, proj) < 0.05 * base)


def test_projections_are_seeded_and_unit_norm():
    a = random_projections(16, 8, seed=5, device=torch.device("cpu"))
    assert torch.equal(a, random_projections(16, 8, seed=5, device=torch.device("cpu")))
    torch.testing.assert_close(a.norm(dim=0), torch.ones(8))


def test_mpg_gate_is_per_sample_and_deterministic():
    torch.manual_seed(0)
    mpg = MPGEnhancement(obs_dim=16, action_dim=8, emb_dim=16, num_projections=32)
    obs, clean = torch.randn(3, 5, 16), torch.randn(3, 4, 8)
    out1, gate1, dist1 = mpg(obs, clean, lam=0.1, temperature=1.0, stop_gradient=True)
    out2, gate2, _ = mpg(obs, clean, lam=0.1, temperature=1.0, stop_gradient=True)
    assert torch.equal(out1, out2) and torch.equal(gate1, gate2)
    torch.testing.assert_close(gate1, torch.exp(-dist1))
    _, gate_first, _ = mpg(obs[:1], clean[:1], lam=0.1, temperature=1.0, stop_gradient=True)
    torch.testing.assert_close(gate_first, gate1[:1])  # other samples do not change a sample's gate
    no_evidence, gate0, _ = mpg(obs, None, lam=0.1, temperature=1.0, stop_gradient=True)
    assert torch.all(gate0 == 0)
    torch.testing.assert_close(no_evidence, obs + 0.1 * mpg.enhancement_proj.bias)


def test_stop_gradient_controls_the_gate_gradient():
    torch.manual_seed(0)
    mpg = MPGEnhancement(obs_dim=8, action_dim=8, emb_dim=8, num_projections=8)
    obs, clean = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    mpg(obs, clean, lam=1.0, temperature=1.0, stop_gradient=True)[0].sum().backward()
    assert mpg.action_proj.weight.grad is None
    mpg(obs, clean, lam=1.0, temperature=1.0, stop_gradient=False)[0].sum().backward()
    assert mpg.action_proj.weight.grad is not None and mpg.action_proj.weight.grad.abs().sum() > 0


def test_delay_distribution_is_exponential_and_stable():
    probs = delay_distribution(4, exp_weight=True)
    expected = torch.exp(-torch.arange(4.0)) / torch.exp(-torch.arange(4.0)).sum()
    torch.testing.assert_close(probs, expected)
    assert math.isclose(float(probs[0]), 0.6439, rel_tol=1e-3)
    huge = delay_distribution(500, exp_weight=True)  # the original overflowed past ~89
    assert torch.isfinite(huge).all() and math.isclose(float(huge.sum()), 1.0, rel_tol=1e-5)
    torch.testing.assert_close(delay_distribution(5, exp_weight=False), torch.full((5,), 0.2))


def test_sampled_delays_follow_the_distribution():
    torch.manual_seed(0)
    delays = sample_delays(20_000, 4, True, chunk_length=16, device=torch.device("cpu"))
    freq = torch.bincount(delays, minlength=4).float() / delays.numel()
    torch.testing.assert_close(freq, delay_distribution(4, True), atol=0.015, rtol=0)
    assert torch.all(sample_delays(5, 0, True, 16, torch.device("cpu")) == 0)  # delay 0: RTC off, no crash
    assert sample_delays(1000, 40, False, 16, torch.device("cpu")).max() <= 16


def test_prefix_helpers():
    assert prefix_mask(torch.tensor([0, 2]), 4).tolist() == [[False] * 4, [True, True, False, False]]
    prev = torch.arange(6.0).view(1, 3, 2)
    padded = fit_prefix(prev, 5)
    assert padded.shape == (1, 5, 2) and torch.equal(padded[0, 3:], prev[0, 2:].expand(2, -1))
    assert fit_prefix(torch.zeros(1, 20, 2), 16).shape == (1, 16, 2)
    with pytest.raises(ValueError, match="prefix_actions"):
        fit_prefix(torch.zeros(1, 0, 2), 16)
