"""Predicted training memory per GPU at the guide's settings, from parameter counts and measured activations.

Model state (FSDP2, fp32 master weights, sharded over N GPUs): fp32 parameters, fp32 gradients of every
parameter the action loss reaches (all but the untied `lm_head`, which AdamW then never touches) and
AdamW's two fp32 moments of those. Activations (not sharded): the bytes autograd saves for backward,
measured with saved-tensor hooks on ONE full-width bf16 decoder layer over one sample's tokens and ONE
ViT layer over one image, on the CPU (parameters excluded), scaled by samples, views and layers. With
activation checkpointing only each layer's input is kept, plus one layer's activations for the
recompute. The peak lies between `forward_end` (state without gradients + all activations) and
`with_all_grads` (gradients fill in as backward frees activations, so the real peak is lower); unsharded
bf16 parameters and gradients of the unit in flight, allocator slack, the CUDA context and NCCL/cuBLAS
workspaces come on top (a few GiB). Compare with `train_throughput`'s measured peak. Prints one JSON
object.

    python benchmarks/memory_estimate.py           # 2B shape, 8192-token packs of 2-view samples
    python benchmarks/memory_estimate.py --tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beingh.model.attention import AttentionMask, TokenMeta  # noqa: E402
from beingh.model.beingh import BeingH  # noqa: E402
from beingh.model.config import BeingHConfig  # noqa: E402
from beingh.model.mot import AttentionInputs, MoTDecoderLayer, StreamLayout  # noqa: E402
from beingh.model.tiny import LIBERO_TEXT_LENS, synthetic_packed_batch, tiny_config  # noqa: E402
from beingh.model.vision import InternVisionEncoderLayer  # noqa: E402

GIB = 2**30


def saved_activation_bytes(module: torch.nn.Module, fn) -> int:
    """Bytes of the distinct storages autograd saves while `fn` runs, `module`'s parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def decoder_layer_bytes(config: BeingHConfig, num_und: int, num_gen: int) -> int:
    """Saved activations of one decoder layer over one sample (und rows, then gen rows), SDPA mask aside."""
    layer = MoTDecoderLayer(config.llm, config.expert).to(torch.bfloat16)
    n = num_und + num_gen
    pos = torch.arange(n)
    layout, attn_pos = StreamLayout.build(pos[:num_und], pos[num_und:], pos, config.llm.head_dim,
                                          config.llm.rope_theta)
    meta = TokenMeta(torch.zeros(n, dtype=torch.long), pos, torch.full((n,), -1)).select(attn_pos)
    mask = AttentionMask(meta, meta, "sdpa")
    h_und = torch.randn(num_und, config.llm.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    h_gen = torch.randn(num_gen, config.expert.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    total = saved_activation_bytes(layer, lambda: layer(h_und, h_gen, AttentionInputs(layout, mask)))
    return total - mask._dense.numel()  # FlexAttention (the GPU default for packs) keeps no dense mask


def vit_layer_bytes(config: BeingHConfig) -> int:
    layer = InternVisionEncoderLayer(config.vit, 0.0).to(torch.bfloat16)
    patches = (config.force_image_size // config.vit.patch_size) ** 2 + 1
    x = torch.randn(1, patches, config.vit.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    return saved_activation_bytes(layer, lambda: layer(x))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config")
    parser.add_argument("--tokens", type=int, default=8192, help="target tokens per pack (guide: 8192)")
    parser.add_argument("--views", type=int, default=2, help="camera views per sample")
    args = parser.parse_args(argv)

    torch.set_num_threads(min(2, torch.get_num_threads()))
    overrides = {"use_mpg": True, "mpg_lambda": 0.1}
    config = tiny_config(**overrides) if args.tiny else BeingHConfig(**overrides)
    sample = synthetic_packed_batch(config, [args.views], text_lens=LIBERO_TEXT_LENS)
    samples = max(1, args.tokens // sample.num_tokens)
    num_gen = 1 + config.action_chunk_length
    num_und = sample.num_tokens - num_gen

    with torch.device("meta"):
        model = BeingH(config)
    params = sum(p.numel() for p in model.parameters())
    no_grad = sum(p.numel() for p in model.language_model.lm_head.parameters())
    state = {"params": 4 * params / GIB, "grads": 4 * (params - no_grad) / GIB,
             "optimizer": 8 * (params - no_grad) / GIB}
    layers, vit_layers = config.llm.num_hidden_layers, config.vit.num_hidden_layers
    images = samples * args.views
    decoder = decoder_layer_bytes(config, num_und, num_gen) * samples / GIB
    vit = vit_layer_bytes(config) * images / GIB
    full = decoder * layers + vit * vit_layers
    patches = (config.force_image_size // config.vit.patch_size) ** 2 + 1
    inputs = 2 * (samples * (num_und * config.llm.hidden_size + num_gen * config.expert.hidden_size) * layers
                  + images * patches * config.vit.hidden_size * vit_layers) / GIB
    checkpointed = inputs + max(decoder, vit)
    state_total = sum(state.values())
    result = {
        "benchmark": "memory_estimate",
        "config": {
            "model": "tiny" if args.tiny else "beingh-2B (InternViT-300M + Qwen3-1.7B-shaped LLM + 0.6B expert)",
            "parameters": params,
            "parameters_without_grad": no_grad,
            "pack_tokens": samples * sample.num_tokens,
            "samples_per_pack": samples,
            "views_per_sample": args.views,
        },
        "state_gib": state,
        "activations_gib": {
            "per_decoder_layer": decoder,
            "per_vit_layer": vit,
            "no_checkpointing": full,
            "checkpointing": checkpointed,
        },
        "predicted_peak_gib": {
            f"{gpus}gpu_{mode}": {
                "forward_end": (state_total - state["grads"]) / gpus + acts,
                "with_all_grads": state_total / gpus + acts,
            }
            for gpus in (1, 4, 8)
            for mode, acts in (("no_ckpt", full), ("ckpt", checkpointed))
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
