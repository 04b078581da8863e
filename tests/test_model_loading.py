"""Building from InternVL/Qwen3 folders, expert init, checkpoint save/load (ours and the release format)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_CHECKPOINT
from safetensors.torch import load_file, save_file

from beingh.model.beingh import BeingH
from beingh.model.loading import build_model, init_expert, load_checkpoint
from beingh.model.tiny import (
    synthetic_packed_batch,
    tiny_config,
    write_internvl_folder,
    write_qwen3_folder,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    config = tiny_config()
    return write_internvl_folder(root / "internvl", config), write_qwen3_folder(
        root / "qwen3", config
    )


def test_build_model_loads_every_vlm_weight(folders):
    mllm, expert = folders
    model = build_model(
        mllm, expert, {"use_mpg": True, "mpg_lambda": 0.1, "force_image_size": 56}, vocab_size=520
    )
    src = load_file(str(mllm / "model.safetensors"))
    state = model.state_dict()
    torch.testing.assert_close(
        state["language_model.model.layers.1.mlp.up_proj.weight"],
        src["language_model.model.layers.1.mlp.up_proj.weight"],
    )
    torch.testing.assert_close(
        state["vit_model.encoder.layers.0.attn.qkv.bias"], src["vision_model.encoder.layers.0.attn.qkv.bias"]
    )
    torch.testing.assert_close(state["connector.mlp1.3.weight"], src["mlp1.3.weight"])
    # The ViT position table (stored for 112 px) is resized to force_image_size (56 px: 4x4 + CLS).
    assert state["vit_model.embeddings.position_embedding"].shape == (1, 17, 32)
    assert model.config.vit.image_size == 56
    # Vocabulary growth for added special tokens: new rows are the mean of the old ones.
    embed = state["language_model.model.embed_tokens.weight"]
    assert embed.shape == (520, 64) and model.config.llm.vocab_size == 520
    torch.testing.assert_close(
        embed[512:], src["language_model.model.embed_tokens.weight"].mean(0).expand(8, -1)
    )
    out = model(synthetic_packed_batch(model.config, [1, 2]))
    assert torch.isfinite(out.loss)


def test_build_model_rejects_foreign_weights(folders, tmp_path):
    mllm, expert = folders
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((mllm / "config.json").read_text())
    weights = load_file(str(mllm / "model.safetensors"))
    weights["vision_model.extra.weight"] = torch.zeros(2)
    save_file(weights, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match="vision_model.extra.weight"):
        build_model(bad, expert, {})
    with pytest.raises(FileNotFoundError, match="config"):
        build_model(tmp_path / "nothing", expert, {})


def test_init_expert_copies_qwen3_weights_into_the_mot_gen_twins(folders):
    mllm, expert = folders
    model = build_model(mllm, expert, {})
    report = init_expert(model, expert, from_scratch=False)
    src = load_file(str(expert / "model.safetensors"))
    layer = model.language_model.model.layers[1]
    torch.testing.assert_close(layer.mlp_mot_gen.down_proj.weight, src["model.layers.1.mlp.down_proj.weight"])
    torch.testing.assert_close(
        layer.self_attn.q_proj_mot_gen.weight, src["model.layers.1.self_attn.q_proj.weight"]
    )
    torch.testing.assert_close(
        layer.self_attn.k_norm_mot_gen.weight, src["model.layers.1.self_attn.k_norm.weight"]
    )
    torch.testing.assert_close(model.language_model.model.norm_mot_gen.weight, src["model.norm.weight"])
    assert not report.skipped and len(report.copied) == 1 + 2 * 11
    init_expert(model, None, from_scratch=True)
    assert not torch.equal(layer.mlp_mot_gen.down_proj.weight, src["model.layers.1.mlp.down_proj.weight"])


def test_init_expert_requires_matching_depth(folders, tmp_path):
    mllm, _ = folders
    deeper = write_qwen3_folder(
        tmp_path / "deep", tiny_config(llm={"num_hidden_layers": 3}, expert={"num_hidden_layers": 3})
    )
    with pytest.raises(ValueError, match="3 layers"):
        init_expert(build_model(mllm, None, {}), deeper)


def test_release_fixture_loads_with_no_missing_or_unexpected_keys():
    model = BeingH.from_pretrained(TINY_CHECKPOINT)
    names = [
        line.split("\t")[0] for line in (TINY_CHECKPOINT / "parameter_names.txt").read_text().splitlines()
    ]
    assert sorted(model.state_dict()) == sorted(names)
    report = load_checkpoint(model, TINY_CHECKPOINT)
    assert report.clean and not report.resized, report.summary()
    cfg = model.config
    assert (cfg.use_mpg, cfg.mpg_lambda, cfg.simulated_delay, cfg.llm.head_dim, cfg.expert.hidden_size) == (
        True,
        0.1,
        4,
        32,
        64,
    )
    batch = synthetic_packed_batch(cfg, [1, 2])
    assert torch.isfinite(model.train()(batch).loss)
    actions = model.eval().sample_actions(batch)
    assert actions.shape == (2, 16, 200) and torch.isfinite(actions).all()


def test_save_and_reload_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BeingH(tiny_config(use_mpg=True, mpg_lambda=0.2)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    raw = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert raw["llm_config"]["expert_config"]["hidden_size"] == 32 and raw["vit_config"]["hidden_size"] == 32
    loaded = BeingH.from_pretrained(tmp_path / "ckpt").eval()
    batch = synthetic_packed_batch(model.config, [1, 1])
    noise = torch.randn(2, 16, 200)
    assert torch.equal(model.sample_actions(batch, noise=noise), loaded.sample_actions(batch, noise=noise))


def test_load_checkpoint_reports_and_raises(tmp_path):
    torch.manual_seed(0)
    model = BeingH(tiny_config())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # Original-style names: state_encoder.* is renamed; shards with an index are followed.
    renamed = {k.replace("proprio_encoder_robot.", "state_encoder."): v for k, v in state.items()}
    keys = sorted(renamed)
    half = len(keys) // 2
    ckpt = tmp_path / "sharded"
    ckpt.mkdir()
    save_file({k: renamed[k] for k in keys[:half]}, str(ckpt / "model-00001-of-00002.safetensors"))
    save_file({k: renamed[k] for k in keys[half:]}, str(ckpt / "model-00002-of-00002.safetensors"))
    weight_map = {k: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, k in enumerate(keys)}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fresh = BeingH(tiny_config())
    report = load_checkpoint(fresh, ckpt)
    assert report.clean and len(report.renamed) == 4
    assert torch.equal(
        fresh.proprio_encoder_robot.layer1.weight, state["proprio_encoder_robot.layer1.weight"]
    )

    bad = tmp_path / "bad"
    bad.mkdir()
    broken = dict(state)
    broken["action_decoder.layer2.weight"] = torch.zeros(3, 3)
    broken["mystery.weight"] = torch.zeros(1)
    del broken["action_encoder.W1.bias"]
    save_file(broken, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match="mismatched.*|missing.*|unexpected.*"):
        load_checkpoint(BeingH(tiny_config()), bad)
    report = load_checkpoint(BeingH(tiny_config()), bad, strict=False)
    assert report.missing == ["action_encoder.W1.bias"] and report.unexpected == ["mystery.weight"]
    assert report.mismatched and report.mismatched[0].startswith("action_decoder.layer2.weight")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(model, tmp_path)


def test_checkpoint_vocab_growth(tmp_path):
    torch.manual_seed(0)
    small = BeingH(tiny_config())
    small.save_pretrained(tmp_path / "small")
    big = BeingH(tiny_config(llm={"vocab_size": 520}))
    report = load_checkpoint(big, tmp_path / "small")
    assert report.clean and len(report.resized) == 2
    embed = big.language_model.model.embed_tokens.weight
    torch.testing.assert_close(embed[:512], small.language_model.model.embed_tokens.weight)
    torch.testing.assert_close(
        embed[512:], small.language_model.model.embed_tokens.weight.mean(0).expand(8, -1)
    )
