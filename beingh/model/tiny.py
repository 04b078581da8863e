"""Tiny configurations, and weight folders in the real formats (any shape), for tests, the CPU demo and the
full-shape smoke benchmark.

`write_internvl_folder` / `write_qwen3_folder` write config.json + safetensors (one file, or shards with an
index) with random weights under the ORIGINAL key names, so `build_model`/`init_expert` run exactly as on
real folders. Tokenizers are not written here (the model package does not import `beingh.data`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from beingh.batch import ATTN_MODES, PackedBatch
from beingh.model.config import BeingHConfig, ExpertConfig, LLMConfig, VisionConfig


def tiny_config(**overrides) -> BeingHConfig:
    """A few-thousand-parameter model with the real structure (56 px views -> 4 tokens per view)."""
    base = BeingHConfig(
        llm=LLMConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=512,
            max_position_embeddings=4096,
        ),
        expert=ExpertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
        vit=VisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56
        ),
        force_image_size=56,
    )
    return base.with_overrides(overrides)


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    if name.endswith("weight") and len(shape) == 1:  # norm scales
        return (1.0 + 0.1 * torch.randn(shape, generator=gen)).to(dtype)
    return (0.05 * torch.randn(shape, generator=gen)).to(dtype)


def _shard_plan(shapes: dict[str, tuple[int, ...]], itemsize: int, max_shard_bytes: int | None) -> list[list[str]]:
    """Tensor names per file, in order, each file at most `max_shard_bytes` (a larger tensor gets its own)."""
    if max_shard_bytes is None:
        return [list(shapes)]
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_weight_folder(
    path: str | Path,
    shapes: dict[str, tuple[int, ...]],
    config_json: dict,
    seed: int,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int | None = None,
) -> Path:
    """config.json and random weights in the Hugging Face layout: one `model.safetensors`, or with
    `max_shard_bytes` the shards `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`.

    Tensors are generated shard by shard (peak memory: one shard), in a fixed order from one seeded
    generator, so the values do not depend on the sharding.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shards = _shard_plan(shapes, torch.empty(0, dtype=dtype).element_size(), max_shard_bytes)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        file = "model.safetensors" if max_shard_bytes is None else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: _random_tensor(name, shapes[name], gen, dtype) for name in names}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(names, file))
        del tensors
    if max_shard_bytes is not None:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    return out


def _qwen3_shapes(llm: LLMConfig, hidden: int, intermediate: int, prefix: str) -> dict[str, tuple[int, ...]]:
    q, kv = llm.num_attention_heads * llm.head_dim, llm.num_key_value_heads * llm.head_dim
    shapes = {f"{prefix}embed_tokens.weight": (llm.vocab_size, hidden), f"{prefix}norm.weight": (hidden,)}
    for i in range(llm.num_hidden_layers):
        p = f"{prefix}layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (q, hidden),
                p + "self_attn.k_proj.weight": (kv, hidden),
                p + "self_attn.v_proj.weight": (kv, hidden),
                p + "self_attn.o_proj.weight": (hidden, q),
                p + "self_attn.q_norm.weight": (llm.head_dim,),
                p + "self_attn.k_norm.weight": (llm.head_dim,),
                p + "mlp.gate_proj.weight": (intermediate, hidden),
                p + "mlp.up_proj.weight": (intermediate, hidden),
                p + "mlp.down_proj.weight": (hidden, intermediate),
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
            }
        )
    return shapes


def _qwen3_config(
    llm: LLMConfig, hidden: int, intermediate: int, layers: int, eps: float, tied: bool, dtype: torch.dtype
) -> dict:
    """A Qwen3 config.json as the released Qwen3 folders write it (head geometry from `llm`)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        **asdict(llm),
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "rms_norm_eps": eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "max_window_layers": layers,
        "rope_scaling": None,
        "sliding_window": None,
        "use_sliding_window": False,
        "use_cache": True,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "tie_word_embeddings": tied,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def write_internvl_folder(
    path: str | Path,
    config: BeingHConfig | None = None,
    image_size: int = 112,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int | None = None,
    tie_word_embeddings: bool = False,
) -> Path:
    """An InternVL3.5-format folder (InternVLChatModel config.json, `vision_model.*`, `mlp1.*`,
    `language_model.*` weights) for `config`'s LLM/ViT shapes, its ViT position table stored at
    `image_size` (so loading exercises the bicubic resize to `force_image_size`). With
    `tie_word_embeddings` there is no `language_model.lm_head.weight` (as Qwen3-1.7B ties it)."""
    config = config or tiny_config()
    llm, vit = config.llm, config.vit
    vit_cfg = replace(vit, image_size=image_size)
    d, grid = vit.hidden_size, image_size // vit.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, d),
        "vision_model.embeddings.position_embedding": (1, grid * grid + 1, d),
        "vision_model.embeddings.patch_embedding.weight": (
            d,
            vit.num_channels,
            vit.patch_size,
            vit.patch_size,
        ),
        "vision_model.embeddings.patch_embedding.bias": (d,),
    }
    for i in range(vit.num_hidden_layers):
        p = f"vision_model.encoder.layers.{i}."
        shapes.update(
            {
                p + "ls1": (d,),
                p + "ls2": (d,),
                p + "attn.qkv.weight": (3 * d, d),
                p + "attn.qkv.bias": (3 * d,),
                p + "attn.proj.weight": (d, d),
                p + "attn.proj.bias": (d,),
                p + "mlp.fc1.weight": (vit.intermediate_size, d),
                p + "mlp.fc1.bias": (vit.intermediate_size,),
                p + "mlp.fc2.weight": (d, vit.intermediate_size),
                p + "mlp.fc2.bias": (d,),
                p + "norm1.weight": (d,),
                p + "norm1.bias": (d,),
                p + "norm2.weight": (d,),
                p + "norm2.bias": (d,),
            }
        )
    width = d * int(1 / config.downsample_ratio) ** 2
    shapes.update(
        {
            "mlp1.0.weight": (width,),
            "mlp1.0.bias": (width,),
            "mlp1.1.weight": (llm.hidden_size, width),
            "mlp1.1.bias": (llm.hidden_size,),
            "mlp1.3.weight": (llm.hidden_size, llm.hidden_size),
            "mlp1.3.bias": (llm.hidden_size,),
        }
    )
    if not tie_word_embeddings:
        shapes["language_model.lm_head.weight"] = (llm.vocab_size, llm.hidden_size)
    shapes.update(_qwen3_shapes(llm, llm.hidden_size, llm.intermediate_size, "language_model.model."))
    llm_config = _qwen3_config(
        llm, llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers, llm.rms_norm_eps,
        tie_word_embeddings, dtype,
    )  # fmt: skip
    vision_config = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        **asdict(vit_cfg),
        "hidden_act": "gelu",
        "norm_type": "layer_norm",
        "qk_normalization": False,
        "use_flash_attn": True,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    meta = {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "downsample_ratio": config.downsample_ratio,
        "select_layer": config.select_layer,
        "force_image_size": image_size,
        "dynamic_image_size": True,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "ps_version": "v2",
        "template": "internvl2_5",
        "use_thumbnail": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "llm_config": llm_config,
        "vision_config": vision_config,
    }
    return write_weight_folder(path, shapes, meta, seed, dtype, max_shard_bytes)


def write_qwen3_folder(
    path: str | Path,
    config: BeingHConfig | None = None,
    seed: int = 1,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int | None = None,
    tie_word_embeddings: bool = False,
) -> Path:
    """A Qwen3 folder with `config.expert`'s width and depth and the LLM's head geometry (like Qwen3-0.6B
    next to Qwen3-1.7B), so every weight fits the `_mot_gen` twins. With `tie_word_embeddings` there is
    no `lm_head.weight` (as Qwen3-0.6B ties it)."""
    config = config or tiny_config()
    llm, expert = config.llm, config.expert
    shapes = _qwen3_shapes(llm, expert.hidden_size, expert.intermediate_size, "model.")
    if not tie_word_embeddings:
        shapes["lm_head.weight"] = (llm.vocab_size, expert.hidden_size)
    cfg = _qwen3_config(
        llm, expert.hidden_size, expert.intermediate_size, expert.num_hidden_layers, expert.rms_norm_eps,
        tie_word_embeddings, dtype,
    )  # fmt: skip
    return write_weight_folder(path, shapes, cfg, seed, dtype, max_shard_bytes)


LIBERO_TEXT_LENS = (45, 24)
"""Text tokens of a LIBERO-like being_h0 prompt before the views and after the state token (with two
224 px views: ~221 tokens per sample, 37 samples per 8192-token pack). For benchmarks."""


def synthetic_packed_batch(
    config: BeingHConfig,
    num_views: list[int],
    text_lens: tuple[int, int] = (6, 4),
    active_dims: int = 8,
    seed: int = 0,
    attn_mode: str = "causal",
) -> PackedBatch:
    """A valid pack with one sample per entry of `num_views`, laid out as the being_h0 prompt
    (text, `<img>` + image tokens + `</img>` per view, `<|state_start|>` state `<|state_end|>`, text,
    T action tokens, `<|im_end|>`), with random ids/images/states and smooth random action targets on the
    first `active_dims` unified dims. `attn_mode` sets segments and positions as the prompt builder does
    (`full` modes: each image block is one bidirectional segment at one RoPE position; `actionfull` modes:
    each action block is one segment). For tests and benchmarks (no tokenizer involved)."""
    if attn_mode not in ATTN_MODES:
        raise ValueError(f"attn_mode must be one of {ATTN_MODES}, got {attn_mode!r}")
    full_images, full_actions = "causal" not in attn_mode, "actionfull" in attn_mode
    gen = torch.Generator().manual_seed(seed)
    t, u, tpi, size = (
        config.action_chunk_length,
        config.unified_dim,
        config.tokens_per_image,
        config.force_image_size,
    )
    ids, pos, seg, text_idx, img_idx, state_idx, action_idx, lens = [], [], [], [], [], [], [], []
    kinds = {"text": text_idx, "image": img_idx, "state": state_idx, "action": action_idx}
    next_segment = 0
    position = 0

    def add(parts: list[tuple[str, int]], bidirectional: bool = False) -> None:
        """Append a block of (kind, count) runs; a bidirectional block is one segment (and, for images,
        one RoPE position)."""
        nonlocal next_segment, position
        segment = next_segment if bidirectional else -1
        next_segment += bidirectional
        one_position = bidirectional and any(kind == "image" for kind, _ in parts)
        for kind, count in parts:
            for _ in range(count):
                kinds[kind].append(len(ids))
                text = kind == "text"
                ids.append(int(torch.randint(10, config.llm.vocab_size, (1,), generator=gen)) if text else 0)
                seg.append(segment)
                pos.append(position)
                position += not one_position
        position += one_position

    for views in num_views:
        sample_start, position = len(ids), 0
        add([("text", text_lens[0])])
        for _ in range(views):
            add([("text", 1), ("image", tpi), ("text", 1)], bidirectional=full_images)
        add([("text", 1), ("state", 1), ("text", 1 + text_lens[1])])
        add([("action", t)], bidirectional=full_actions)
        add([("text", 1)])
        lens.append(len(ids) - sample_start)
    b = len(num_views)
    n_img = sum(num_views)
    steps = torch.linspace(0, 1, t)[None, :, None]
    action = torch.zeros(b, t, u)
    action[..., :active_dims] = torch.sin(3 * steps + torch.rand(b, 1, active_dims, generator=gen) * 6)
    mask = torch.zeros(b, t, u, dtype=torch.bool)
    mask[..., :active_dims] = True
    state = torch.zeros(b, u)
    state[:, :active_dims] = torch.randn(b, active_dims, generator=gen)
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        position_ids=torch.tensor(pos, dtype=torch.long),
        sample_lens=lens,
        segment_ids=torch.tensor(seg, dtype=torch.long),
        text_indexes=torch.tensor(text_idx, dtype=torch.long),
        pixel_values=torch.randn(n_img, 3, size, size, generator=gen),
        image_token_indexes=torch.tensor(img_idx, dtype=torch.long),
        state=state,
        state_indexes=torch.tensor(state_idx, dtype=torch.long),
        action=action,
        action_mask=mask,
        action_indexes=torch.tensor(action_idx, dtype=torch.long).view(b, t),
        embodiment_ids=torch.zeros(b, dtype=torch.long),
    )
