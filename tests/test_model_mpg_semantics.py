"""MPG semantics: `original` reproduces the original's computation fact by fact (upstream_model.md §4, §9.1),
`fixed` is beingh's; which one a checkpoint gets (its config.json, --mpg_semantics, the policy argument)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from beingh.model.beingh import BeingH
from beingh.model.config import BeingHConfig, written_by_original
from beingh.model.flow import time_buckets
from beingh.model.mpg import MPGEnhancement, sliced_wasserstein, sliced_wasserstein_truncated
from beingh.model.tiny import synthetic_packed_batch, tiny_config
from tests.conftest import TINY_CHECKPOINT

T, U = 16, 200
S2 = 1.0 / (1.0 + 1e-5)
"""Squared value of a layer-normed 2-vector [a, b] with (a - b)^2 = 4 (variance 1, eps 1e-5): +-sqrt(S2)."""


def _model(semantics: str, seed: int = 0, **overrides) -> BeingH:
    torch.manual_seed(seed)
    config = tiny_config(use_mpg=True, mpg_lambda=0.5, mpg_gate_temperature=2.0, mpg_semantics=semantics)
    return BeingH(config.with_overrides(overrides)).eval()


def _identity_mpg() -> MPGEnhancement:
    mpg = MPGEnhancement(obs_dim=2, action_dim=2, emb_dim=2, num_projections=2)
    with torch.no_grad():
        for linear in (mpg.obs_proj, mpg.action_proj):
            linear.weight.copy_(torch.eye(2))
            linear.bias.zero_()
    return mpg


# ---- the distance and the gate, by hand -----------------------------------------------------------------
def test_truncated_sliced_wasserstein_by_hand():
    x = torch.tensor([[[3.0, 1.0], [1.0, 4.0], [2.0, 2.0]]])
    y = torch.tensor([[[5.0, 0.0], [0.0, 3.0]]])
    axes = torch.eye(2)
    # axis 0: sorted x [1, 2, 3] vs y [0, 5], first two: 1^2 + 3^2 = 10; axis 1: [1, 2, 4] vs [0, 3]: 1 + 1 = 2.
    assert sliced_wasserstein_truncated(x, y, axes).item() == pytest.approx(12 / 4)
    assert sliced_wasserstein(x, y, axes).item() != pytest.approx(3.0)  # `fixed` compares quantiles


def test_original_gate_averages_over_the_batch_before_layer_norm():
    """Observation rows LN to (-s, s), (s, -s), (-s, s). Clean samples (0, 2) and (6, 0) average to (3, 1),
    which LNs to (s, -s); LN-ing each first would have averaged to ~0 (distance s^2 instead)."""
    mpg = _identity_mpg()
    obs = torch.tensor([[[1.0, 3.0], [3.0, 1.0], [0.0, 2.0]]])
    clean = torch.tensor([[[0.0, 2.0], [0.0, 2.0]], [[6.0, 0.0], [6.0, 0.0]]])
    gate, distance = mpg.original_gate(obs, clean, temperature=2.0, projections=torch.eye(2))
    # axis 0: sorted (-s, -s, s) vs s: 4s^2, 4s^2, 0; axis 1: (-s, s, s) vs -s: 0, 4s^2, 4s^2.
    assert distance.item() == pytest.approx(16 * S2 / 6, rel=1e-6)
    assert gate.item() == pytest.approx(math.exp(-16 * S2 / 6 / 2.0), rel=1e-6)


def test_original_gate_mean_pools_the_clean_chunk_over_time():
    """Batch-averaged clean steps (3, 1) and (1, 3) LN to (s, -s) and (-s, s): their time mean is 0, so the
    distance is the mean squared projected observation, s^2 (comparing the two-point set would not be)."""
    mpg = _identity_mpg()
    obs = torch.tensor([[[1.0, 3.0], [3.0, 1.0], [0.0, 2.0]]])
    clean = torch.tensor([[[0.0, 2.0], [0.0, 2.0]], [[6.0, 0.0], [2.0, 4.0]]])
    _, distance = mpg.original_gate(obs, clean, temperature=1.0, projections=torch.eye(2))
    assert distance.item() == pytest.approx(S2, rel=1e-6)


def test_projections_are_drawn_per_call_unless_seeded():
    mpg = MPGEnhancement(obs_dim=8, action_dim=4, emb_dim=8, num_projections=16)
    cpu = torch.device("cpu")
    assert not torch.equal(mpg.projections(cpu, None), mpg.projections(cpu, None))
    seeded = mpg.projections(cpu, 7)
    assert mpg.projections(cpu, 7) is seeded
    torch.testing.assert_close(seeded.norm(dim=0), torch.ones(16))


# ---- the original's training computation ----------------------------------------------------------------
class _Spy:
    """Records the inputs of `model.mpg` and the time buckets of every `action_encoder` call."""

    def __init__(self, model: BeingH):
        self.mpg_calls, self.buckets = [], []
        mpg_forward, encoder_forward = model.mpg.forward, model.action_encoder.forward

        def mpg(obs, clean, *args, **kwargs):
            out = mpg_forward(obs, clean, *args, **kwargs)
            self.mpg_calls.append({"obs": obs.detach(), "clean": clean, "kwargs": kwargs, "out": out})
            return out

        def encoder(actions, buckets):
            self.buckets.append(buckets)
            return encoder_forward(actions, buckets)

        model.mpg.forward, model.action_encoder.forward = mpg, encoder


def _training_inputs(batch, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b = batch.action.shape[0]
    return torch.randn(b, T, U, generator=gen), torch.rand(b, generator=gen)


def test_original_training_reads_zero_state_rows_and_encodes_the_clean_chunk_at_bucket_0():
    model = _model("original", mpg_seed=3).train()
    batch = synthetic_packed_batch(model.config, [1, 2, 1], seed=1)
    noise, time = _training_inputs(batch)
    spy = _Spy(model)
    model(batch, noise=noise, time=time)
    (call,) = spy.mpg_calls
    noisy_buckets, clean_buckets = spy.buckets
    assert torch.equal(clean_buckets, torch.zeros_like(clean_buckets))  # bucket 0: the noise end
    assert torch.equal(noisy_buckets, time_buckets(time[:, None].expand(-1, T), 1000))
    obs = call["obs"]
    assert torch.equal(obs[:, 0], torch.zeros_like(obs[:, 0]))  # the all-zero VLM rows, not P_u(anything)
    x_t = (1 - time[:, None, None]) * noise + time[:, None, None] * batch.action
    features = model.action_encoder(x_t, noisy_buckets)
    torch.testing.assert_close(obs[:, 1:], model.action_to_vlm_proj(features).detach())
    # One gate for the pack: all observation rows against the batch-averaged clean embedding.
    _, gate, _ = call["out"]
    assert torch.equal(gate, gate[:1].expand_as(gate))
    obs_emb = model.mpg.obs_proj(obs).reshape(1, -1, obs.shape[-1])
    expected, _ = model.mpg.original_gate(obs_emb, call["clean"], 2.0, model.mpg.projections(obs.device, 3))
    torch.testing.assert_close(gate[:1], expected)


@pytest.mark.parametrize("semantics", ["original", "fixed"])
def test_state_and_packmates_reach_the_gated_features_only_when_fixed(semantics):
    model = _model(semantics, mpg_seed=0)
    gen = torch.Generator().manual_seed(2)
    x, clean = torch.randn(2, T, U, generator=gen), torch.randn(2, T, U, generator=gen)
    t_tok, state = torch.rand(2, 1, generator=gen).expand(2, T), torch.randn(2, 32, generator=gen)
    with torch.no_grad():
        pack, _ = model._action_features(x, t_tok, state, clean, one_gate=True)
        other_state, _ = model._action_features(x, t_tok, state + 1.0, clean, one_gate=True)
        alone, _ = model._action_features(x[:1], t_tok[:1], state[:1], clean[:1], one_gate=True)
    if semantics == "original":  # no state in MPG; one gate per pack, so packmates matter
        assert torch.equal(pack, other_state)
        assert not torch.allclose(pack[:1], alone, atol=1e-6)
    else:  # the real state; one gate per sample
        assert not torch.allclose(pack, other_state, atol=1e-6)
        torch.testing.assert_close(pack[:1], alone, atol=1e-6, rtol=1e-5)


# ---- the original's sampling ------------------------------------------------------------------------------
def test_original_first_pass_is_the_plain_ode_without_mpg():
    model = _model("original", mpg_refinement_iters=0)
    batch = synthetic_packed_batch(model.config, [1, 1], seed=3)
    noise = torch.randn(2, T, U, generator=torch.Generator().manual_seed(3))
    with_mpg = model.sample_actions(batch, noise=noise)
    model.config = model.config.with_overrides({"use_mpg": False})
    torch.testing.assert_close(with_mpg, model.sample_actions(batch, noise=noise), rtol=0, atol=0)
    fixed = _model("fixed", mpg_refinement_iters=0)  # `fixed` gates its first pass with g = 0
    plain = fixed.sample_actions(batch, noise=noise)
    fixed.config = fixed.config.with_overrides({"use_mpg": False})
    assert not torch.allclose(plain, fixed.sample_actions(batch, noise=noise), atol=1e-6)


def test_original_refinement_restarts_from_fresh_noise_gated_by_the_first_pass():
    model = _model("original", mpg_seed=1, num_inference_timesteps=2)
    batch = synthetic_packed_batch(model.config, [1], seed=4)
    gen = torch.Generator().manual_seed(4)
    first, second = torch.randn(1, T, U, generator=gen), torch.randn(1, T, U, generator=gen)
    result = model.sample_actions(batch, noise=torch.stack([first, second]), use_cache=False)
    with torch.no_grad():  # by hand: Euler from `first` without MPG, then from `second` gated by it
        velocity = model._full_velocity(batch, model._embed_prefix(batch))
        x = first
        for k in range(2):
            x = x + velocity(x, torch.full((1, T), k / 2), None) / 2
        estimate, x = x, second
        for k in range(2):
            x = x + velocity(x, torch.full((1, T), k / 2), estimate) / 2
    torch.testing.assert_close(result, x, atol=1e-6, rtol=1e-5)
    # Given one noise, the refinement pass draws its own: the same torch seed gives the same result.
    torch.manual_seed(5)
    a = model.sample_actions(batch, noise=first)
    torch.manual_seed(5)
    assert torch.equal(a, model.sample_actions(batch, noise=first))
    assert not torch.allclose(a, model.sample_actions(batch, noise=first), atol=1e-6)


def test_fixed_refinement_reuses_the_noise_and_is_deterministic():
    model = _model("fixed")
    batch = synthetic_packed_batch(model.config, [1], seed=6)
    noise = torch.randn(1, T, U, generator=torch.Generator().manual_seed(6))
    once = model.sample_actions(batch, noise=noise)
    assert torch.equal(once, model.sample_actions(batch, noise=noise))
    assert torch.equal(once, model.sample_actions(batch, noise=torch.stack([noise, noise])))


def test_original_projections_are_fresh_per_call_unless_mpg_seed_is_set():
    batch = synthetic_packed_batch(tiny_config(), [1], seed=7)
    noise = torch.randn(2, 1, T, U, generator=torch.Generator().manual_seed(7))
    unseeded = _model("original")
    assert not torch.allclose(unseeded.sample_actions(batch, noise=noise),
                              unseeded.sample_actions(batch, noise=noise), atol=1e-7)
    seeded = _model("original", mpg_seed=11)
    assert torch.equal(seeded.sample_actions(batch, noise=noise), seeded.sample_actions(batch, noise=noise))


# ---- which semantics a checkpoint gets -------------------------------------------------------------------
def test_config_written_by_the_original_loads_as_original():
    raw = json.loads((TINY_CHECKPOINT / "config.json").read_text())
    assert written_by_original(raw) and "mpg_semantics" not in raw
    config = BeingHConfig.load(TINY_CHECKPOINT / "config.json")
    assert config.mpg_semantics == "original" and config.mpg_seed is None
    assert config.use_inference_prefix_overwrite  # the file says False; the original's policy always locked


def test_beingh_configs_record_their_choice(tmp_path):
    for semantics in ("original", "fixed"):
        tiny_config(mpg_semantics=semantics).save(tmp_path / "config.json")
        raw = json.loads((tmp_path / "config.json").read_text())
        assert not written_by_original(raw) and raw["mpg_semantics"] == semantics
        assert BeingHConfig.load(tmp_path / "config.json").mpg_semantics == semantics
    del raw["mpg_semantics"]  # a beingh checkpoint from before the choice existed ran `fixed`
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert BeingHConfig.load(tmp_path / "config.json").mpg_semantics == "fixed"
    with pytest.raises(ValueError, match="mpg_semantics must be one of"):
        tiny_config(mpg_semantics="buggy")


@pytest.fixture()
def resume_args(tmp_path, tiny_tokenizer_dir):
    ckpt = tmp_path / "released"
    shutil.copytree(TINY_CHECKPOINT, ckpt)
    for item in tiny_tokenizer_dir.iterdir():
        shutil.copy(item, ckpt / item.name)
    data = tmp_path / "data.yaml"
    data.write_text("g: {}\n")
    return [
        "--dataset_config_file", str(data), "--output_dir", str(tmp_path / "out"), "--resume_from", str(ckpt),
        "--resume_model_only", "True", "--max_steps", "1", "--force_image_size", "56",
    ]  # fmt: skip


def test_resume_from_a_released_checkpoint_defaults_to_original(resume_args):
    from beingh.data.tokenizer import load_tokenizer
    from beingh.train.args import parse_args
    from beingh.train.build import build_train_model

    args = parse_args(resume_args)
    tokenizer = load_tokenizer(args.paths.resume_from)
    assert build_train_model(args, tokenizer).config.mpg_semantics == "original"
    chosen = parse_args([*resume_args, "--mpg_semantics", "fixed"])
    assert build_train_model(chosen, tokenizer).config.mpg_semantics == "fixed"
