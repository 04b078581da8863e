"""Packing tokenized samples into one sequence (`PackedBatch`) under a token budget.

Unlike the reference packer (reference/upstream_data.md §8.1, §10.13) no sample is ever dropped for
not fitting: it waits in the overflow buffer or opens the next pack. Packs are not padded to
`max_num_tokens` here; padding for fixed compiled shapes is the model's business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import torch

from beingh.batch import PackedBatch
from beingh.data.prompt import TokenizedSample

logger = logging.getLogger(__name__)


def pack_samples(samples: Sequence[TokenizedSample]) -> PackedBatch:
    """Concatenate samples into one pack: indexes are offset, bidirectional segment ids made pack-unique."""
    if not samples:
        raise ValueError("pack_samples needs at least one sample")
    offsets, segment_offsets = [], []
    offset = segment_offset = 0
    for s in samples:
        offsets.append(offset)
        segment_offsets.append(segment_offset)
        offset += s.num_tokens
        segment_offset += int(s.segment_ids.max().item()) + 1
    segment_ids = [
        torch.where(s.segment_ids >= 0, s.segment_ids + so, s.segment_ids)
        for s, so in zip(samples, segment_offsets)
    ]
    return PackedBatch(
        input_ids=torch.cat([s.input_ids for s in samples]),
        position_ids=torch.cat([s.position_ids for s in samples]),
        sample_lens=[s.num_tokens for s in samples],
        segment_ids=torch.cat(segment_ids),
        text_indexes=torch.cat([s.text_indexes + o for s, o in zip(samples, offsets)]),
        pixel_values=torch.cat([s.pixel_values for s in samples]),
        image_token_indexes=torch.cat([s.image_token_indexes + o for s, o in zip(samples, offsets)]),
        state=torch.stack([s.state for s in samples]),
        state_indexes=torch.tensor([s.state_index + o for s, o in zip(samples, offsets)], dtype=torch.int64),
        action=torch.stack([s.action for s in samples]),
        action_mask=torch.stack([s.action_mask for s in samples]),
        action_indexes=torch.stack([s.action_indexes + o for s, o in zip(samples, offsets)]),
        embodiment_ids=torch.tensor([s.embodiment_id for s in samples], dtype=torch.int64),
    )


class HasNumTokens(Protocol):
    num_tokens: int


Item = TypeVar("Item", bound=HasNumTokens)


class TokenBudgetPacker:
    """Decides which samples go into each pack (reference §8.1, without its data loss).

    A pack is closed once it holds >= `expected_num_tokens`, never exceeding `max_num_tokens`. A drawn
    sample that does not fit waits in the overflow buffer; while the pack is shorter than
    `prefer_buffer_before`, buffered samples are used first. The buffer never holds more than
    `max_buffer_size` samples: once it is full, the pack is closed instead of drawing another sample (the
    reference closed it one draw later and dropped that sample), and the next pack starts from the buffer.
    Samples longer than `max_num_tokens_per_sample` are skipped and counted in `num_skipped`.

    Items are anything with `num_tokens`; `buffer` is public so a caller can save and restore it.
    """

    def __init__(
        self,
        max_num_tokens: int = 8704,
        expected_num_tokens: int = 8192,
        prefer_buffer_before: int = 4096,
        max_buffer_size: int = 4,
        max_num_tokens_per_sample: int = 8704,
    ):
        if not 0 < expected_num_tokens <= max_num_tokens:
            raise ValueError(
                f"expected_num_tokens ({expected_num_tokens}) must be in (0, max_num_tokens={max_num_tokens}]"
            )
        if not 0 < max_num_tokens_per_sample <= max_num_tokens:
            raise ValueError(
                f"max_num_tokens_per_sample ({max_num_tokens_per_sample}) must be in "
                f"(0, max_num_tokens={max_num_tokens}]"
            )
        if max_buffer_size < 1:
            raise ValueError(f"max_buffer_size must be >= 1 (a sample that does not fit waits there), got {max_buffer_size}")
        if prefer_buffer_before <= 0:
            raise ValueError(
                f"prefer_buffer_before must be > 0, got {prefer_buffer_before}: the buffer would never be drained"
            )
        self.max_num_tokens = max_num_tokens
        self.expected_num_tokens = expected_num_tokens
        self.prefer_buffer_before = prefer_buffer_before
        self.max_buffer_size = max_buffer_size
        self.max_num_tokens_per_sample = max_num_tokens_per_sample
        self.buffer: list = []
        self.num_skipped = 0

    def _draw_fitting(self, draw: Callable[[], Item]) -> Item:
        while True:
            item = draw()
            if item.num_tokens <= self.max_num_tokens_per_sample:
                return item
            self.num_skipped += 1
            logger.warning(
                "skipping a sample of %d tokens > max_num_tokens_per_sample=%d (%d skipped so far)",
                item.num_tokens,
                self.max_num_tokens_per_sample,
                self.num_skipped,
            )

    def next_pack(self, draw: Callable[[], Item], mandatory: Sequence[Callable[[], Item]] = ()) -> list[Item]:
        """Items of the next pack. `draw` gives the next sample; each `mandatory` source gives one per pack
        (while the buffer has room for it should it not fit; the first always fits the empty pack)."""
        pack: list[Item] = []
        total = 0
        for draw_mandatory in mandatory:
            if pack and len(self.buffer) >= self.max_buffer_size:
                break
            item = self._draw_fitting(draw_mandatory)
            if total + item.num_tokens > self.max_num_tokens:
                self.buffer.insert(0, item)
                continue
            pack.append(item)
            total += item.num_tokens
        use_buffer = True
        while True:
            from_buffer = use_buffer and bool(self.buffer) and total < self.prefer_buffer_before
            if not from_buffer and len(self.buffer) >= self.max_buffer_size:
                return pack
            item = self.buffer.pop(0) if from_buffer else self._draw_fitting(draw)
            if total + item.num_tokens > self.max_num_tokens:
                if from_buffer:  # keep its place; the rest of this pack comes from fresh samples
                    self.buffer.insert(0, item)
                    use_buffer = False
                else:
                    self.buffer.append(item)
                continue
            pack.append(item)
            total += item.num_tokens
            if total >= self.expected_num_tokens:
                return pack
