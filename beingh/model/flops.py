"""Model FLOPs of one training step on a pack, and device peaks, for MFU (benchmarks, throughput logs).

Counting convention (as PaLM / torchtitan): matmul FLOPs of forward + backward = 3 x forward, with
2 FLOPs per multiply-add, so a weight matrix with P entries applied to N tokens costs 6 * P * N.
Recomputation under activation checkpointing is NOT counted (model FLOPs, not hardware FLOPs).

- Dense: each parameter counts on the tokens that pass through it:
  ViT blocks and patch embedding on the (grid^2 + 1) patch tokens of every view, the connector on the
  `tokens_per_image` shuffled tokens of every view, the VLM ("und") decoder weights on the text and image
  tokens, the expert (`_mot_gen`) decoder weights on the B * (1 + T) state and action tokens, and the
  action head (state/action encoders, velocity decoder, MPG projections) on those same B * (1 + T) tokens.
  Embedding lookups and the unused `lm_head` cost nothing.
- Attention: per layer, forward QK^T and PV cost 2 * 2 * d_attn FLOPs per (query, key) pair, so
  fwd + bwd is 12 * d_attn * pairs. Decoder pairs are the document-causal ones, sum over samples of
  n (n + 1) / 2 (bidirectional segments add a few pairs, ignored); the ViT attends fully over each view.
"""

from __future__ import annotations

from torch import nn

from beingh.batch import PackedBatch
from beingh.model.config import BeingHConfig

PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200 NVL": 835.0,
    "H100": 989.0,
    "H200": 989.0,
    "H800": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
}
"""Dense bf16 tensor-core peak per device (vendor datasheets, no sparsity); a bare family name is its SXM
part. More specific names come first: the first key contained in the device name wins."""


def peak_bf16_tflops(device_name: str) -> float | None:
    """The peak for a `torch.cuda.get_device_name()` string ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe",
    "NVIDIA H200"), or None for an unknown device."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def _count(module: nn.Module, expert: bool | None = None) -> int:
    """Parameter count of `module`; `expert` True/False keeps only the `_mot_gen` / non-`_mot_gen` ones."""
    return sum(
        p.numel() for name, p in module.named_parameters() if expert is None or ("_mot_gen" in name) == expert
    )


def training_flops(model: nn.Module, config: BeingHConfig, batch: PackedBatch) -> float:
    """Model FLOPs of one forward + backward of `model` (a BeingH, possibly on the meta device) on `batch`."""
    n_img = int(batch.pixel_values.shape[0])
    patches = (config.force_image_size // config.vit.patch_size) ** 2 + 1
    gen_tokens = batch.num_samples * (1 + batch.chunk_length)
    und_tokens = batch.num_tokens - gen_tokens
    decoder = model.language_model.model.layers
    heads = sum(
        _count(child)
        for name, child in model.named_children()
        if name not in ("vit_model", "connector", "language_model")
    )
    dense = 6.0 * (
        (_count(model.vit_model.encoder) + _count(model.vit_model.embeddings.patch_embedding))
        * n_img
        * patches
        + _count(model.connector) * n_img * config.tokens_per_image
        + _count(decoder, expert=False) * und_tokens
        + (_count(decoder, expert=True) + heads) * gen_tokens
    )
    causal_pairs = sum(n * (n + 1) / 2 for n in batch.sample_lens)
    d_attn = config.llm.num_attention_heads * config.llm.head_dim
    attention = 12.0 * (
        config.llm.num_hidden_layers * d_attn * causal_pairs
        + config.vit.num_hidden_layers * config.vit.hidden_size * n_img * patches**2
    )
    return dense + attention
