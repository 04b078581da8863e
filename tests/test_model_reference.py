"""Our InternViT and MoT decoder against the transformers reference implementations (same weights).

With the expert given the VLM's shape and weights, the MoT decoder must equal a plain Qwen3 decoder on
the whole sequence, whatever tokens are routed to which stream: this pins down RMSNorm, QK-norm, RoPE,
GQA and the stream permutation.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3Model
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
from transformers.models.internvl.modeling_internvl import InternVLVisionModel

from beingh.model.attention import AttentionMask, TokenMeta
from beingh.model.mot import AttentionInputs, MoTModel, StreamLayout
from beingh.model.tiny import tiny_config
from beingh.model.vision import InternVisionModel


def _expert_name(key: str) -> str:
    """The `_mot_gen` twin of a Qwen3Model parameter name."""
    if key == "norm.weight":
        return "norm_mot_gen.weight"
    parts = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "q_norm",
        "k_norm",
        "mlp",
        "input_layernorm",
        "post_attention_layernorm",
    )
    for part in parts:
        key = key.replace(f".{part}.", f".{part}_mot_gen.")
    return key


def _qwen3_pair(seed: int = 0) -> tuple[Qwen3Model, MoTModel]:
    config = tiny_config(expert={"hidden_size": 64, "intermediate_size": 128})
    llm = config.llm
    hf_config = Qwen3Config(
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads,
        head_dim=llm.head_dim,
        vocab_size=llm.vocab_size,
        rope_theta=llm.rope_theta,
        rms_norm_eps=llm.rms_norm_eps,
        max_position_embeddings=llm.max_position_embeddings,
    )
    hf_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = Qwen3Model(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    ours = MoTModel(config.llm, config.expert).eval()
    state = hf.state_dict()
    twins = {_expert_name(k): v for k, v in state.items() if k != "embed_tokens.weight"}
    ours.load_state_dict({**state, **twins}, strict=True)
    return hf, ours


@pytest.mark.parametrize("gen_fraction", [0.0, 0.4, 1.0])
def test_mot_decoder_matches_qwen3_whatever_the_routing(gen_fraction):
    hf, ours = _qwen3_pair()
    n = 37
    ids = torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(input_ids=ids, position_ids=torch.arange(n)[None]).last_hidden_state[0]
        is_gen = torch.rand(n, generator=torch.Generator().manual_seed(2)) < gen_fraction
        positions = torch.arange(n)
        und_index, gen_index = positions[~is_gen], positions[is_gen]
        emb = ours.embed_tokens(ids[0])
        layout, attn_pos = StreamLayout.build(und_index, gen_index, positions, 16, 1_000_000.0)
        meta = TokenMeta(torch.zeros(n, dtype=torch.long), positions, torch.full((n,), -1)).select(attn_pos)
        out_und, out_gen = ours(
            emb[und_index], emb[gen_index], AttentionInputs(layout, AttentionMask(meta, meta))
        )
    out = torch.empty_like(ref)
    out[und_index], out[gen_index] = out_und, out_gen
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_internvit_matches_the_transformers_port():
    config = tiny_config()
    vit = config.vit
    torch.manual_seed(0)
    ours = InternVisionModel(vit, config.force_image_size).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    hf_config = InternVLVisionConfig(
        hidden_size=vit.hidden_size,
        intermediate_size=vit.intermediate_size,
        num_hidden_layers=vit.num_hidden_layers,
        num_attention_heads=vit.num_attention_heads,
        image_size=[config.force_image_size] * 2,
        patch_size=[vit.patch_size] * 2,
        attention_bias=True,
        use_qk_norm=False,
        use_mean_pooling=True,
        norm_type="layer_norm",
        layer_norm_eps=vit.layer_norm_eps,
        hidden_act="gelu",
        use_absolute_position_embeddings=True,
    )
    hf = InternVLVisionModel(hf_config).eval()
    src = ours.state_dict()
    mapped = {
        "embeddings.cls_token": src["embeddings.class_embedding"],
        "embeddings.position_embeddings": src["embeddings.position_embedding"],
        "embeddings.patch_embeddings.projection.weight": src["embeddings.patch_embedding.weight"],
        "embeddings.patch_embeddings.projection.bias": src["embeddings.patch_embedding.bias"],
    }
    for i in range(vit.num_hidden_layers):
        p, q = f"encoder.layers.{i}.", f"encoder.layer.{i}."
        for part, w, b in zip(
            ("q", "k", "v"), src[p + "attn.qkv.weight"].chunk(3), src[p + "attn.qkv.bias"].chunk(3)
        ):
            mapped[q + f"attention.{part}_proj.weight"], mapped[q + f"attention.{part}_proj.bias"] = w, b
        for ours_name, hf_name in (
            ("attn.proj", "attention.projection_layer"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
            ("norm1", "layernorm_before"),
            ("norm2", "layernorm_after"),
        ):
            for suffix in ("weight", "bias"):
                mapped[f"{q}{hf_name}.{suffix}"] = src[f"{p}{ours_name}.{suffix}"]
        mapped[q + "lambda_1"], mapped[q + "lambda_2"] = src[p + "ls1"], src[p + "ls2"]
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    pixels = torch.randn(3, 3, config.force_image_size, config.force_image_size)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(pixels), hf(pixel_values=pixels).last_hidden_state, atol=1e-5, rtol=1e-4
        )


def test_pixel_shuffle_matches_internvl():
    from transformers.models.internvl.modeling_internvl import InternVLModel

    from beingh.model.vision import pixel_shuffle

    features = torch.randn(2, 16, 16, 24)  # a 224 px view: 16 x 16 patches -> 8 x 8 = 64 tokens of 4 x 24
    ours = pixel_shuffle(features, 0.5)
    assert ours.shape == (2, 8, 8, 96)
    torch.testing.assert_close(ours, InternVLModel.pixel_shuffle(None, features, 0.5), atol=0, rtol=0)
