"""The packed-batch format: the one contract between `beingh.data` (producer) and `beingh.model` (consumer).

A pack concatenates several samples into one token sequence. Each sample is laid out as in
reference/upstream_data.md §7: system/user text, one `<img>...</img>` block per view, a state token
between `<|state_start|>`/`<|state_end|>`, the instruction, the assistant header, the action tokens and
a closing `<|im_end|>`. Text and image positions are "understanding" tokens (VLM weights); state and
action positions are "generation" tokens (action-expert weights). Attention never crosses samples.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from beingh.layout import UNIFIED_DIM

__all__ = ["ATTN_MODES", "UNIFIED_DIM", "PackedBatch"]

ATTN_MODES = ("causal", "full", "actionfull", "causal_actionfull")
"""Attention layouts a pack can carry (`--attn_mode`). The prompt builder turns a mode into `segment_ids`:
`full` modes make each image block (with `<img>`/`</img>`) one bidirectional segment, `actionfull` modes
make each sample's action block one; causal everywhere else. The model reads only `segment_ids`."""


@dataclass
class PackedBatch:
    """One pack of `B` samples and `L` tokens.

    Index tensors hold positions in `[0, L)`. Every sample has exactly one state token and
    `T` action tokens (`T` = action chunk length).
    """

    input_ids: torch.Tensor
    """(L,) int64 token id per position; 0 where the position holds an image, state or action token."""
    position_ids: torch.Tensor
    """(L,) int64 RoPE position, restarting at 0 in every sample."""
    sample_lens: list[int]
    """Token count of each sample, in pack order; `sum(sample_lens) == L`."""
    segment_ids: torch.Tensor
    """(L,) int64: -1 for causally-attending tokens; otherwise the id (unique in the pack) of the
    bidirectional segment the token belongs to (image blocks in `full` mode, the action block in the
    action-full modes)."""
    text_indexes: torch.Tensor
    """(N_text,) int64 positions of text tokens."""
    pixel_values: torch.Tensor
    """(N_img, 3, S, S) float32 normalized images, in pack order."""
    image_token_indexes: torch.Tensor
    """(N_img * tokens_per_image,) int64 positions of image tokens, image after image."""
    state: torch.Tensor
    """(B, 200) float32 normalized unified state."""
    state_indexes: torch.Tensor
    """(B,) int64 position of each sample's state token."""
    action: torch.Tensor
    """(B, T, 200) float32 normalized unified action chunk (training targets; zeros at inference)."""
    action_mask: torch.Tensor
    """(B, T, 200) bool: True on the unified dims the embodiment uses, at the chunk steps that are
    inside the episode."""
    action_indexes: torch.Tensor
    """(B, T) int64 positions of each sample's action tokens."""
    embodiment_ids: torch.Tensor
    """(B,) int64 embodiment id of each sample."""

    @property
    def num_samples(self) -> int:
        return int(self.state.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def chunk_length(self) -> int:
        return int(self.action.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def pin_memory(self) -> PackedBatch:
        pinned = {
            f.name: getattr(self, f.name).pin_memory()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **pinned)
