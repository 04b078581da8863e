"""Packed-sequence attention: the document mask and its two backends (dense SDPA, FlexAttention).

Rule (reference/upstream_model.md §1.5): query q may attend key k iff both are in the same sample AND
(k comes no later than q in the pack OR both lie in the same bidirectional segment, segment_id >= 0).
Queries and keys are described by `TokenMeta` so the same rule serves the full packed pass, the prefix
pass and the cached action steps (keys = cached prefix + the action tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

FLEX_MIN_TOKENS = 1024
"""With backend "auto" on CUDA, sequences at least this long use compiled FlexAttention; shorter ones
(inference prompts of a few hundred tokens, cached action steps) use dense SDPA, which needs no compile."""


@dataclass
class TokenMeta:
    """Per-token facts the mask needs, for tokens in attention order."""

    sample_ids: torch.Tensor  # (N,) which packed sample
    pack_index: torch.Tensor  # (N,) position in the packed sequence (the causal order)
    segment_ids: torch.Tensor  # (N,) bidirectional segment id, -1 for causal tokens

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])

    def select(self, index: torch.Tensor) -> TokenMeta:
        return TokenMeta(self.sample_ids[index], self.pack_index[index], self.segment_ids[index])

    @staticmethod
    def cat(parts: list[TokenMeta]) -> TokenMeta:
        return TokenMeta(
            torch.cat([p.sample_ids for p in parts]),
            torch.cat([p.pack_index for p in parts]),
            torch.cat([p.segment_ids for p in parts]),
        )


def sample_ids_from_lens(sample_lens: list[int], device: torch.device) -> torch.Tensor:
    lens = torch.tensor(sample_lens, dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(sample_lens), device=device), lens)


def dense_mask(q: TokenMeta, k: TokenMeta) -> torch.Tensor:
    """(Nq, Nk) bool, True where attention is allowed."""
    same_sample = q.sample_ids[:, None] == k.sample_ids[None, :]
    causal = k.pack_index[None, :] <= q.pack_index[:, None]
    same_segment = (q.segment_ids[:, None] == k.segment_ids[None, :]) & (q.segment_ids[:, None] >= 0)
    return same_sample & (causal | same_segment)


@cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


FLEX_BLOCK = 128
"""Flex sequences are padded to a multiple of this, so varying pack lengths compile to few shapes."""


def _padded(meta: TokenMeta, pad_sample_id: int) -> TokenMeta:
    """Append padding tokens of a sample id no real token has: padded queries see nothing (flex returns 0
    for them and they are sliced off), padded keys are seen by no real query."""
    pad = -len(meta) % FLEX_BLOCK
    fill = meta.sample_ids.new_full((pad,), pad_sample_id)
    return TokenMeta.cat([meta, TokenMeta(fill, fill, fill)])


def _flex_block_mask(q: TokenMeta, k: TokenMeta):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        same_sample = q.sample_ids[q_idx] == k.sample_ids[kv_idx]
        causal = k.pack_index[kv_idx] <= q.pack_index[q_idx]
        same_segment = (q.segment_ids[q_idx] == k.segment_ids[kv_idx]) & (q.segment_ids[q_idx] >= 0)
        return same_sample & (causal | same_segment)

    device = q.sample_ids.device
    return create_block_mask(
        mask_mod, B=None, H=None, Q_LEN=len(q), KV_LEN=len(k), device=device, _compile=device.type == "cuda"
    )


class AttentionMask:
    """The mask for one attention call shape, built once and shared by all layers."""

    def __init__(self, q: TokenMeta, k: TokenMeta, backend: str = "auto"):
        self.q, self.k = q, k
        device = q.sample_ids.device
        if backend == "auto":
            long_enough = len(q) >= FLEX_MIN_TOKENS and len(q) == len(k)
            backend = "flex" if device.type == "cuda" and long_enough else "sdpa"
        self.backend = backend
        self._dense = dense_mask(q, k) if backend == "sdpa" else None
        self._block = _flex_block_mask(_padded(q, -1), _padded(k, -2)) if backend == "flex" else None

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query (Nq, Hq, d), key/value (Nk, Hkv, d) -> (Nq, Hq * d). GQA when Hq > Hkv."""
        q, k, v = (t.to(value.dtype).transpose(0, 1).unsqueeze(0) for t in (query, key, value))
        if self.backend == "flex":
            from torch.nn.attention.flex_attention import flex_attention

            fn = _compiled_flex() if q.device.type == "cuda" else flex_attention
            q, k, v = (F.pad(t, (0, 0, 0, -t.shape[2] % FLEX_BLOCK)) for t in (q, k, v))
            out = fn(q, k, v, block_mask=self._block, enable_gqa=True)[:, :, : query.shape[0]]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._dense, enable_gqa=True)
        return out[0].transpose(0, 1).reshape(query.shape[0], -1)


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3 rotary tables (fp32) for the given positions: each (N, 1, head_dim), broadcast over heads."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = position_ids.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (N, H, d) rotated by per-token cos/sin (N, 1, d), in x's dtype (HF Qwen3 `rotate_half` form)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
