"""BeingH forward/sampling on tiny configs: loss, masking, packing invariance, RTC, caching, backends."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from beingh.batch import ATTN_MODES
from beingh.model.action_head import sinusoidal_embedding
from beingh.model.attention import TokenMeta, dense_mask
from beingh.model.beingh import BeingH
from beingh.model.config import BeingHConfig
from beingh.model.flow import masked_mse, time_buckets
from beingh.model.tiny import synthetic_packed_batch, tiny_config

T, U = 16, 200


def _model(seed: int = 0, **overrides) -> BeingH:
    torch.manual_seed(seed)
    return BeingH(tiny_config(**overrides))


def _draws(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, T, U, generator=gen), torch.rand(b, generator=gen)


def test_config_round_trips_through_both_layouts(tmp_path):
    config = tiny_config(use_mpg=True, mpg_lambda=0.1, simulated_delay=3, noise_beta_alpha=2.0)
    assert BeingHConfig.from_dict(config.to_dict()) == config
    assert BeingHConfig.from_release_dict(config.to_release_dict()) == config
    config.save(tmp_path / "config.json")
    assert BeingHConfig.load(tmp_path / "config.json") == config
    with pytest.raises(ValueError, match="unknown keys"):
        BeingHConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="as many layers"):
        tiny_config(expert={"num_hidden_layers": 3})


def test_flow_constants_are_configurable():
    """The original hard-coded them (upstream §9.4.13); ours follow the config."""
    config = tiny_config(noise_beta_alpha=50.0, noise_beta_beta=1.0, noise_s=0.999)
    from beingh.model.flow import sample_time

    t = sample_time(config, 4000, torch.device("cpu"))
    assert t.mean() < 0.05  # Beta(50, 1) puts s near 1, so t near 0
    assert time_buckets(torch.tensor([-0.001, 0.0, 0.75, 1.0]), 1000).tolist() == [0, 0, 750, 1000]


def test_time_embedding_and_buckets_follow_the_reference():
    """PE(tau) = [sin(tau w_i), cos(tau w_i)], w_i = exp(-i ln(10000) / (dim / 2)), tau = floor(1000 t)."""
    tau = torch.tensor([0, 250, 1000])
    pe = sinusoidal_embedding(tau, 8)
    w = torch.exp(-torch.arange(4.0) * math.log(10000.0) / 4)
    torch.testing.assert_close(
        pe, torch.cat([torch.sin(tau[:, None] * w), torch.cos(tau[:, None] * w)], dim=-1)
    )
    assert time_buckets(torch.tensor([0.2509, 0.999]), 1000).tolist() == [250, 999]


def test_loss_decreases_when_overfitting_one_pack():
    model = _model(use_mpg=True, mpg_lambda=0.1)
    batch = synthetic_packed_batch(model.config, [1, 1], seed=1)
    noise, time = _draws(2)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        out = model(batch, noise=noise, time=time)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.4 * losses[0], losses
    assert set(out.metrics) >= {"action_loss", "mpg_gate", "mpg_distance", "rtc_delay_mean"}


def test_document_mask_rule():
    """Sample 0 = [text, img, img, act, act] with the image pair and the action pair as bidirectional
    segments; sample 1 = [text, act]. Causal within a sample, bidirectional within a segment, never across."""
    meta = TokenMeta(
        sample_ids=torch.tensor([0, 0, 0, 0, 0, 1, 1]),
        pack_index=torch.arange(7),
        segment_ids=torch.tensor([-1, 0, 0, 1, 1, -1, -1]),
    )
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(dense_mask(meta, meta), expected)
    # Cached action steps: queries are the action tokens, keys are cache + the action tokens.
    actions = torch.tensor([3, 4])
    assert torch.equal(dense_mask(meta.select(actions), meta), expected[actions])


def test_attn_mode_names_are_shared_and_checked():
    assert tiny_config(attn_mode="causal_actionfull").attn_mode == "causal_actionfull"
    with pytest.raises(ValueError, match="attn_mode must be one of"):
        tiny_config(attn_mode="bidirectional")
    with pytest.raises(ValueError, match="attn_mode must be one of"):
        synthetic_packed_batch(tiny_config(), [1], attn_mode="bidirectional")
    batch = synthetic_packed_batch(tiny_config(), [2], attn_mode="full")
    image_positions = batch.position_ids[batch.image_token_indexes]
    assert image_positions.unique().numel() == 2  # one RoPE position per image block, as the prompt builder
    assert (batch.segment_ids[batch.action_indexes] == -1).all()
    full_actions = synthetic_packed_batch(tiny_config(), [1, 1], attn_mode="causal_actionfull")
    action_segments = full_actions.segment_ids[full_actions.action_indexes]
    assert (action_segments >= 0).all() and action_segments[:, 0].unique().numel() == 2


def test_masked_dims_do_not_count():
    pred, target = torch.randn(2, T, U), torch.randn(2, T, U)
    mask = torch.zeros(2, T, U, dtype=torch.bool)
    mask[..., :5] = True
    changed = pred.clone()
    changed[..., 5:] += 100.0
    assert torch.equal(masked_mse(pred, target, mask), masked_mse(changed, target, mask))
    assert masked_mse(pred, target, torch.zeros_like(mask)) == 0

    model = _model()
    batch = synthetic_packed_batch(model.config, [1, 1], active_dims=6)
    noise, time = _draws(2)
    model(batch, noise=noise, time=time).loss.backward()
    bias_grad = model.action_decoder.layer2.bias.grad
    assert torch.all(bias_grad[6:] == 0) and torch.any(bias_grad[:6] != 0)


@pytest.mark.parametrize("attn_mode", ["causal", "actionfull"])
def test_packed_samples_match_samples_run_alone(attn_mode):
    model = _model(use_mpg=True, mpg_lambda=0.5, attn_mode=attn_mode).eval()
    views = [1, 2, 1]
    batches = [
        synthetic_packed_batch(model.config, [v], seed=10 + i, attn_mode=attn_mode)
        for i, v in enumerate(views)
    ]
    packed = _concat(batches)
    noise, time = _draws(3)
    together = model.sample_actions(packed, noise=noise)
    for i, single in enumerate(batches):
        alone = model.sample_actions(single, noise=noise[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, atol=2e-5, rtol=1e-4)
    # Per-sample losses: a pack's loss is the mask-weighted mean of its samples' losses.
    alone_losses = [
        model(b, noise=noise[i : i + 1], time=time[i : i + 1]).loss for i, b in enumerate(batches)
    ]
    weights = torch.stack([b.action_mask.sum() for b in batches]).float()
    expected = (torch.stack(alone_losses) * weights).sum() / weights.sum()
    torch.testing.assert_close(model(packed, noise=noise, time=time).loss, expected, atol=1e-5, rtol=1e-5)


def _concat(batches):
    """Pack single-sample batches into one (shifts indexes and segment ids)."""
    from beingh.batch import PackedBatch

    offset, seg_offset, parts = 0, 0, {k: [] for k in ("ids", "pos", "seg", "text", "img", "state", "act")}
    for b in batches:
        parts["ids"].append(b.input_ids)
        parts["pos"].append(b.position_ids)
        parts["seg"].append(torch.where(b.segment_ids >= 0, b.segment_ids + seg_offset, b.segment_ids))
        seg_offset += int(b.segment_ids.max().clamp(min=-1)) + 1
        parts["text"].append(b.text_indexes + offset)
        parts["img"].append(b.image_token_indexes + offset)
        parts["state"].append(b.state_indexes + offset)
        parts["act"].append(b.action_indexes + offset)
        offset += b.num_tokens
    return PackedBatch(
        input_ids=torch.cat(parts["ids"]),
        position_ids=torch.cat(parts["pos"]),
        sample_lens=[n for b in batches for n in b.sample_lens],
        segment_ids=torch.cat(parts["seg"]),
        text_indexes=torch.cat(parts["text"]),
        pixel_values=torch.cat([b.pixel_values for b in batches]),
        image_token_indexes=torch.cat(parts["img"]),
        state=torch.cat([b.state for b in batches]),
        state_indexes=torch.cat(parts["state"]),
        action=torch.cat([b.action for b in batches]),
        action_mask=torch.cat([b.action_mask for b in batches]),
        action_indexes=torch.cat(parts["act"]),
        embodiment_ids=torch.cat([b.embodiment_ids for b in batches]),
    )


@pytest.mark.parametrize("attn_mode", ATTN_MODES)
def test_cached_sampling_equals_uncached(attn_mode):
    model = _model(use_mpg=True, mpg_lambda=0.3, mpg_refinement_iters=1, attn_mode=attn_mode).eval()
    batch = synthetic_packed_batch(model.config, [2, 1, 1], seed=4, attn_mode=attn_mode)
    noise, _ = _draws(3)
    cached = model.sample_actions(batch, noise=noise, use_cache=True)
    full = model.sample_actions(batch, noise=noise, use_cache=False)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    assert cached.shape == (3, T, U) and cached.dtype == torch.float32


def test_prefix_overwrite_keeps_the_prefix_exactly():
    model = _model().eval()
    batch = synthetic_packed_batch(model.config, [1, 1], seed=5)
    noise, _ = _draws(2)
    previous = torch.randn(2, 10, U)
    out = model.sample_actions(batch, noise=noise, prefix_actions=previous, prefix_len=torch.tensor([3, 5]))
    assert torch.equal(out[0, :3], previous[0, :3]) and torch.equal(out[1, :5], previous[1, :5])
    free = model.sample_actions(batch, noise=noise)
    assert not torch.allclose(out[0, 3:], free[0, 3:])  # the locked prefix conditions the rest
    short = model.sample_actions(batch, noise=noise, prefix_actions=previous[:, :2], prefix_len=4)
    assert torch.equal(short[:, 2:4], previous[:, 1:2].expand(-1, 2, -1))  # replicate-padded prefix


def test_training_time_rtc_excludes_the_prefix_from_the_loss():
    model = _model(use_training_time_rtc=True, simulated_delay=4).train()
    batch = synthetic_packed_batch(model.config, [1, 1], seed=6)
    noise, time = _draws(2)
    assert model(batch, noise=noise, time=time, rtc_delay=torch.tensor([T, T])).loss == 0
    # Committed steps are fed clean (t=1: x_t = a, whatever the noise) and carry no loss.
    delay = torch.tensor([3, 5])
    reference = model(batch, noise=noise, time=time, rtc_delay=delay).loss
    prefix_noise = noise.clone()
    prefix_noise[0, :3] += 10.0
    prefix_noise[1, :5] -= 10.0
    torch.testing.assert_close(model(batch, noise=prefix_noise, time=time, rtc_delay=delay).loss, reference)
    no_delay = torch.zeros(2, dtype=torch.long)
    without_rtc = [model(batch, noise=n, time=time, rtc_delay=no_delay).loss for n in (noise, prefix_noise)]
    assert not torch.allclose(*without_rtc)
    out = model(batch, noise=noise, time=time)  # delays drawn inside, vectorised
    assert torch.isfinite(out.loss) and 0 <= out.metrics["rtc_delay_mean"] < 4
    off = _model(use_training_time_rtc=True, simulated_delay=0).train()
    assert off(batch, noise=noise, time=time).metrics["rtc_delay_mean"] == 0


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_sdpa_and_flex_backends_agree():
    sdpa = _model(attn_backend="sdpa")
    flex = copy.deepcopy(sdpa)
    flex.config = replace(flex.config, attn_backend="flex")
    batch = synthetic_packed_batch(sdpa.config, [1, 2], seed=7, attn_mode="actionfull")
    noise, time = _draws(2)
    with torch.no_grad():  # flex has no CPU backward; on CUDA it is compiled and trains
        a, b = sdpa(batch, noise=noise, time=time).loss, flex(batch, noise=noise, time=time).loss
        sampled = [m.eval().sample_actions(batch, noise=noise) for m in (sdpa, flex)]  # cache: Nq != Nk
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sampled[0], sampled[1], atol=1e-5, rtol=1e-5)


def test_bf16_forward_agrees_with_fp32():
    model = _model()
    batch = synthetic_packed_batch(model.config, [1, 2], seed=8)
    noise, time = _draws(2)
    ref = model(batch, noise=noise, time=time).loss
    low = copy.deepcopy(model).to(torch.bfloat16)(batch, noise=noise, time=time).loss
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, atol=0, rtol=3e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model(batch, noise=noise, time=time).loss
    torch.testing.assert_close(auto, ref, atol=0, rtol=3e-2)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _model(use_mpg=True, mpg_lambda=0.1).train()
    batch = synthetic_packed_batch(model.config, [1, 1], seed=9)
    noise, time = _draws(2)
    model(batch, noise=noise, time=time).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_gradient_checkpointing(True)
    model(batch, noise=noise, time=time).loss.backward()
    for name, grad in ref.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)
    units = model.fsdp_units()
    assert len(units) == model.config.vit.num_hidden_layers + model.config.llm.num_hidden_layers + 1
    assert units[-1] is model.language_model.lm_head


def test_bad_batches_raise_clear_errors():
    model = _model()
    batch = synthetic_packed_batch(model.config, [1], seed=0)
    with pytest.raises(ValueError, match="sample_lens"):
        model(replace(batch, sample_lens=[batch.num_tokens + 1]))
    with pytest.raises(ValueError, match="image_token_indexes"):
        model(replace(batch, image_token_indexes=batch.image_token_indexes[:-1]))
    with pytest.raises(ValueError, match="MPG"):
        replace_cfg = copy.deepcopy(model)
        replace_cfg.config = replace(model.config, use_mpg=True, mpg_lambda=0.1)
        replace_cfg(batch)


def test_meta_built_model_materialises_with_init_weights():
    with torch.device("meta"):
        model = BeingH(tiny_config())
    model.to_empty(device="cpu")
    model.init_weights()
    batch = synthetic_packed_batch(model.config, [1])
    assert torch.isfinite(model(batch).loss)
    assert torch.equal(model.language_model.model.norm_mot_gen.weight, torch.ones(32))
