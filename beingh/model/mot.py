"""Qwen3 Mixture-of-Transformers decoder: a VLM ("und") stream and an action-expert ("gen") stream.

Each stream keeps its own width, norms, projections and SwiGLU MLP (the expert's weights carry the
`_mot_gen` suffix, as in the release checkpoint). The streams meet in ONE joint attention per layer in the
shared head space (VLM heads, head_dim, RoPE theta). Tokens are kept stream-contiguous (und rows, then gen
rows); per layer, Q/K/V are gathered once into pack order for the attention and the output is gathered
back (`StreamLayout`), instead of the original's scatter into zero buffers (upstream_model.md §8.2).
A stream with no rows (the cached action steps carry no und tokens) skips its norms, projections and MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from beingh.model.attention import AttentionMask, TokenMeta, apply_rope, rope_cos_sin
from beingh.model.config import ExpertConfig, LLMConfig


class RMSNorm(nn.Module):
    """Qwen3 RMSNorm: normalise in fp32, scale in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rows(fn, x: torch.Tensor) -> torch.Tensor:
    """fn(x), or x itself when it has no rows: a decision on shapes only, never on values."""
    return fn(x) if x.shape[0] else x


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class StreamLayout:
    """Maps stream-ordered rows (und then gen) to attention (pack) order and back, plus their RoPE tables."""

    num_und: int
    to_attn: torch.Tensor | None  # rows of cat(und, gen) listed in attention order; None: already in it
    to_stream: torch.Tensor | None  # inverse permutation
    cos: torch.Tensor  # (N, 1, head_dim) in stream order
    sin: torch.Tensor

    @staticmethod
    def build(
        und_index: torch.Tensor,
        gen_index: torch.Tensor,
        position_ids: torch.Tensor,
        head_dim: int,
        theta: float,
    ) -> tuple[StreamLayout, torch.Tensor]:
        """Returns the layout and the pack positions of the rows in attention order."""
        stream_pos = torch.cat([und_index, gen_index])
        to_attn = torch.argsort(stream_pos)
        to_stream = torch.empty_like(to_attn)
        to_stream[to_attn] = torch.arange(to_attn.numel(), device=to_attn.device)
        cos, sin = rope_cos_sin(position_ids[stream_pos], head_dim, theta)
        layout = StreamLayout(int(und_index.numel()), to_attn, to_stream, cos, sin)
        return layout, stream_pos[to_attn]

    @staticmethod
    def gen_in_attention_order(position_ids: torch.Tensor, head_dim: int, theta: float) -> StreamLayout:
        """Layout of a gen-only pass whose rows are already in attention order (the cached action steps):
        no per-layer gathers. `position_ids` are the rows' RoPE positions."""
        cos, sin = rope_cos_sin(position_ids, head_dim, theta)
        return StreamLayout(0, None, None, cos, sin)


class LayerKV:
    """One decoder layer's keys/values of a prefix pass (in attention order). Until `frozen`, a pass stores
    its keys/values here; after, a pass attends to these plus its own. Each layer gets its own object (not
    an index into a shared list), so a compiled layer does not specialise on its layer number: all layers
    share one compiled graph."""

    def __init__(self) -> None:
        self.key: torch.Tensor | None = None
        self.value: torch.Tensor | None = None
        self.frozen = False

    def update(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.frozen:
            self.key, self.value = key, value
            return key, value
        return torch.cat([self.key, key]), torch.cat([self.value, value])


class KVCache:
    """Per-layer keys/values of a prefix pass; `meta` describes the cached keys for the attention mask."""

    def __init__(self, num_layers: int):
        self.layers = [LayerKV() for _ in range(num_layers)]
        self.meta: TokenMeta | None = None

    def freeze(self) -> None:
        """From now on, passes attend to the cache + themselves and leave the cache unchanged."""
        for layer in self.layers:
            layer.frozen = True


@dataclass
class AttentionInputs:
    """What every layer's attention needs besides the hidden states (built once per pass; for the cached
    action steps, once per `sample_actions` call and shared by all Euler steps)."""

    layout: StreamLayout
    mask: AttentionMask
    cache: KVCache | None = None


class MoTAttention(nn.Module):
    def __init__(self, llm: LLMConfig, expert: ExpertConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            llm.num_attention_heads,
            llm.num_key_value_heads,
            llm.head_dim,
        )
        self.rope_theta = llm.rope_theta
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(llm.hidden_size, q_dim, bias=False)
        self.k_proj = nn.Linear(llm.hidden_size, kv_dim, bias=False)
        self.v_proj = nn.Linear(llm.hidden_size, kv_dim, bias=False)
        self.o_proj = nn.Linear(q_dim, llm.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, llm.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, llm.rms_norm_eps)
        self.q_proj_mot_gen = nn.Linear(expert.hidden_size, q_dim, bias=False)
        self.k_proj_mot_gen = nn.Linear(expert.hidden_size, kv_dim, bias=False)
        self.v_proj_mot_gen = nn.Linear(expert.hidden_size, kv_dim, bias=False)
        self.o_proj_mot_gen = nn.Linear(q_dim, expert.hidden_size, bias=False)
        self.q_norm_mot_gen = RMSNorm(self.head_dim, expert.rms_norm_eps)
        self.k_norm_mot_gen = RMSNorm(self.head_dim, expert.rms_norm_eps)

    def _joint(
        self,
        x_und: torch.Tensor,
        x_gen: torch.Tensor,
        projs: tuple[nn.Linear, nn.Linear],
        heads: int,
        norms: tuple[RMSNorm | None, RMSNorm | None] = (None, None),
    ) -> torch.Tensor:
        """Both streams projected (and QK-normed) into the shared head space: (N_und + N_gen, heads, d)."""
        parts = []
        for x, proj, norm in zip((x_und, x_gen), projs, norms):
            if x.shape[0]:
                out = proj(x).view(x.shape[0], heads, self.head_dim)
                parts.append(norm(out) if norm is not None else out)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def forward(
        self, x_und: torch.Tensor, x_gen: torch.Tensor, inputs: AttentionInputs, kv: LayerKV | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = inputs.layout
        q_norms, k_norms = (self.q_norm, self.q_norm_mot_gen), (self.k_norm, self.k_norm_mot_gen)
        q = self._joint(x_und, x_gen, (self.q_proj, self.q_proj_mot_gen), self.num_heads, q_norms)
        k = self._joint(x_und, x_gen, (self.k_proj, self.k_proj_mot_gen), self.num_kv_heads, k_norms)
        v = self._joint(x_und, x_gen, (self.v_proj, self.v_proj_mot_gen), self.num_kv_heads)
        q, k = apply_rope(q, layout.cos, layout.sin), apply_rope(k, layout.cos, layout.sin)
        if layout.to_attn is not None:
            q, k, v = q[layout.to_attn], k[layout.to_attn], v[layout.to_attn]
        if kv is not None:
            k, v = kv.update(k, v)
        out = inputs.mask.attend(q, k, v)
        if layout.to_stream is not None:
            out = out[layout.to_stream]
        und, gen = out[: layout.num_und], out[layout.num_und :]
        return _rows(self.o_proj, und), _rows(self.o_proj_mot_gen, gen)


class MoTDecoderLayer(nn.Module):
    def __init__(self, llm: LLMConfig, expert: ExpertConfig):
        super().__init__()
        self.self_attn = MoTAttention(llm, expert)
        self.mlp = SwiGLU(llm.hidden_size, llm.intermediate_size)
        self.mlp_mot_gen = SwiGLU(expert.hidden_size, expert.intermediate_size)
        self.input_layernorm = RMSNorm(llm.hidden_size, llm.rms_norm_eps)
        self.input_layernorm_mot_gen = RMSNorm(expert.hidden_size, expert.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(llm.hidden_size, llm.rms_norm_eps)
        self.post_attention_layernorm_mot_gen = RMSNorm(expert.hidden_size, expert.rms_norm_eps)

    def forward(
        self, h_und: torch.Tensor, h_gen: torch.Tensor, inputs: AttentionInputs, kv: LayerKV | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a_und, a_gen = self.self_attn(
            _rows(self.input_layernorm, h_und), _rows(self.input_layernorm_mot_gen, h_gen), inputs, kv
        )
        if h_und.shape[0]:
            h_und = h_und + a_und
            h_und = h_und + self.mlp(self.post_attention_layernorm(h_und))
        if h_gen.shape[0]:
            h_gen = h_gen + a_gen
            h_gen = h_gen + self.mlp_mot_gen(self.post_attention_layernorm_mot_gen(h_gen))
        return h_und, h_gen


class MoTModel(nn.Module):
    """`language_model.model`: embeddings, the MoT layers and the two final norms."""

    def __init__(self, llm: LLMConfig, expert: ExpertConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(llm.vocab_size, llm.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(llm, expert) for _ in range(llm.num_hidden_layers))
        self.norm = RMSNorm(llm.hidden_size, llm.rms_norm_eps)
        self.norm_mot_gen = RMSNorm(expert.hidden_size, expert.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(
        self, h_und: torch.Tensor, h_gen: torch.Tensor, inputs: AttentionInputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs all layers; returns the final-normed (und, gen) hidden states."""
        caches = inputs.cache.layers if inputs.cache is not None else [None] * len(self.layers)
        for layer, kv in zip(self.layers, caches):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h_und, h_gen = checkpoint(layer, h_und, h_gen, inputs, kv, use_reentrant=False)
            else:
                h_und, h_gen = layer(h_und, h_gen, inputs, kv)
        return _rows(self.norm, h_und), _rows(self.norm_mot_gen, h_gen)


class MoTForCausalLM(nn.Module):
    """`language_model`: the decoder plus the untied `lm_head` (kept for the release weight format and for
    text-loss extensions; VLA packs carry no text labels, so the action loss never calls it)."""

    def __init__(self, llm: LLMConfig, expert: ExpertConfig):
        super().__init__()
        self.model = MoTModel(llm, expert)
        self.lm_head = nn.Linear(llm.hidden_size, llm.vocab_size, bias=False)
