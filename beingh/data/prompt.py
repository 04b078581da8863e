"""The being_h0 token layout of one sample (reference/upstream_data.md §7, upstream_model.md §1.2, §1.5).

```
<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n
<img> [tokens_per_image image slots] </img>            one block PER VIEW (training and inference alike)
<|state_start|> [state slot] <|state_end|>
{instruction}<|im_end|>\n<|im_start|>assistant\n
[T action slots]
<|im_end|>
```

`image_block_layout="single"` puts ONE `<img>`...`</img>` pair around all views instead: the original's
inference server did so (reference/upstream_model.md §9.2.6) although it trained per view; use it only to
reproduce that server's outputs exactly.

The layout of a sample depends only on its number of views and its instruction, so it is computed once
per (views, instruction) and reused; the system/user prefix is tokenized once per builder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from beingh.batch import ATTN_MODES
from beingh.data.sample import RobotSample
from beingh.data.tokenizer import special_token_ids

SYSTEM_MESSAGES = {
    "being_h0": "You are Being-H0, a helpful and harmless AI assistant developed by BeingBeyond.",
}
"""System message per `conv_style`; being_h0 is the only style the VLA layout uses."""

PROMPT_TEMPLATES = {
    "long": "According to the instruction '{task}', what's the micro-step actions in the next {T} steps?",
    "short": "{task}",
}
IMAGE_BLOCK_LAYOUTS = ("per_view", "single")
VIT_PATCH_SIZE = 14
_LAYOUT_CACHE_SIZE = 4096


def tokens_per_image(image_size: int, down_sample_ratio: float = 0.5, patch_size: int = VIT_PATCH_SIZE) -> int:
    """Image tokens per view after the ViT and pixel shuffle: 64 at 224 px, 256 at 448 px."""
    return int((image_size // patch_size) ** 2 * down_sample_ratio**2)


def format_instruction(template: str, task: str, chunk_length: int) -> str:
    """Apply a prompt template: "long", "short", or a custom string with `{task}`/`{task_description}`.

    `{T}` and `{k}` (the original's templates' name) are the chunk length.
    """
    fmt = PROMPT_TEMPLATES.get(template, template)
    if "{task}" not in fmt and "{task_description}" not in fmt:
        raise ValueError(
            f"prompt_template {template!r}: expected one of {sorted(PROMPT_TEMPLATES)} or a format string "
            "containing '{task}' or '{task_description}'"
        )
    try:
        return fmt.format(task=task, task_description=task, T=chunk_length, k=chunk_length)
    except (KeyError, IndexError) as err:
        raise ValueError(
            f"prompt_template {template!r} has an unknown placeholder {err}; known: "
            "{task}, {task_description}, {T}, {k}"
        ) from err


@dataclass
class TokenizedSample:
    """One sample laid out as tokens, ready for `pack_samples`. Index tensors are positions in [0, num_tokens).

    The layout tensors (ids, positions, segments, indexes) are shared by all samples with the same view
    count and instruction: treat them as read-only.
    """

    input_ids: torch.Tensor
    """(L,) int64 token ids; 0 at image, state and action slots."""
    position_ids: torch.Tensor
    """(L,) int64 RoPE positions starting at 0."""
    segment_ids: torch.Tensor
    """(L,) int64: -1 for causal tokens, else a sample-local id (0, 1, ...) of a bidirectional segment."""
    text_indexes: torch.Tensor
    """(N_text,) int64 positions holding text ids (including <img>, </img>, state markers)."""
    image_token_indexes: torch.Tensor
    """(V * tokens_per_image,) int64 image slot positions, view after view."""
    state_index: int
    """Position of the state slot."""
    action_indexes: torch.Tensor
    """(T,) int64 action slot positions."""
    pixel_values: torch.Tensor
    """(V, 3, S, S) float32 normalized views."""
    state: torch.Tensor
    """(200,) float32."""
    action: torch.Tensor
    """(T, 200) float32."""
    action_mask: torch.Tensor
    """(T, 200) bool."""
    embodiment_id: int
    num_tokens: int
    """Exact sequence length L (only the views actually present are counted)."""


@dataclass(frozen=True)
class _Layout:
    """The token structure shared by every sample with the same view count and instruction."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    text_indexes: torch.Tensor
    image_token_indexes: torch.Tensor
    state_index: int
    action_indexes: torch.Tensor


class PromptBuilder:
    """Turns a `RobotSample` (+ its transformed views) into a `TokenizedSample` in the being_h0 layout.

    attn_mode: `causal` (positions 0..L-1, no bidirectional segment), `full` (each image block incl.
    <img>/</img> is one bidirectional segment sharing one RoPE position), `actionfull` (full + the action
    block bidirectional), `causal_actionfull` (causal + bidirectional action block).
    image_block_layout: `per_view` (training's layout) or `single` (one block around all views).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        tokens_per_image: int,
        action_chunk_length: int = 16,
        prompt_template: str = "long",
        attn_mode: str = "causal",
        conv_style: str = "being_h0",
        image_block_layout: str = "per_view",
    ):
        if attn_mode not in ATTN_MODES:
            raise ValueError(f"attn_mode {attn_mode!r}: expected one of {ATTN_MODES}")
        if image_block_layout not in IMAGE_BLOCK_LAYOUTS:
            raise ValueError(f"image_block_layout {image_block_layout!r}: expected one of {IMAGE_BLOCK_LAYOUTS}")
        if conv_style not in SYSTEM_MESSAGES:
            raise ValueError(f"conv_style {conv_style!r}: expected one of {sorted(SYSTEM_MESSAGES)}")
        if tokens_per_image <= 0 or action_chunk_length <= 0:
            raise ValueError(
                f"tokens_per_image ({tokens_per_image}) and action_chunk_length ({action_chunk_length}) must be > 0"
            )
        format_instruction(prompt_template, "", action_chunk_length)
        self.tokenizer = tokenizer
        self.tokens_per_image = tokens_per_image
        self.action_chunk_length = action_chunk_length
        self.prompt_template = prompt_template
        self.attn_mode = attn_mode
        self.image_block_layout = image_block_layout
        self.ids = special_token_ids(tokenizer)
        self._prefix = (
            [self.ids.im_start, *self._encode("system\n" + SYSTEM_MESSAGES[conv_style]), self.ids.im_end]
            + [self.ids.newline, self.ids.im_start, *self._encode("user\n")]
        )
        self._assistant = [self.ids.im_start, *self._encode("assistant\n")]
        self._layouts: dict[tuple[int, str], _Layout] = {}

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def tokenize(self, sample: RobotSample, pixel_values: torch.Tensor) -> TokenizedSample:
        """Lay out `sample`; `pixel_values` is (V, 3, S, S), one transformed image per view."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (V, 3, S, S), got {tuple(pixel_values.shape)}")
        action = torch.as_tensor(np.asarray(sample.action, dtype=np.float32))
        if action.shape[0] != self.action_chunk_length:
            raise ValueError(
                f"sample action chunk has {action.shape[0]} steps, PromptBuilder expects {self.action_chunk_length}"
            )
        layout = self._layout(int(pixel_values.shape[0]), sample.instruction)
        return TokenizedSample(
            input_ids=layout.input_ids,
            position_ids=layout.position_ids,
            segment_ids=layout.segment_ids,
            text_indexes=layout.text_indexes,
            image_token_indexes=layout.image_token_indexes,
            state_index=layout.state_index,
            action_indexes=layout.action_indexes,
            pixel_values=pixel_values.float(),
            state=torch.as_tensor(np.asarray(sample.state, dtype=np.float32)),
            action=action,
            action_mask=torch.as_tensor(np.asarray(sample.action_mask, dtype=bool)),
            embodiment_id=int(sample.embodiment_id),
            num_tokens=int(layout.input_ids.shape[0]),
        )

    def num_tokens(self, num_views: int, instruction: str) -> int:
        """Exact sequence length of a sample, without building it."""
        return int(self._layout(num_views, instruction).input_ids.shape[0])

    def _layout(self, num_views: int, instruction: str) -> _Layout:
        key = (num_views, instruction)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= _LAYOUT_CACHE_SIZE:
                self._layouts.pop(next(iter(self._layouts)))
            layout = self._layouts[key] = self._build_layout(num_views, instruction)
        return layout

    def _build_layout(self, num_views: int, instruction: str) -> _Layout:
        """Walk the layout once, recording per token: id, kind, position and bidirectional segment."""
        ids: list[int] = []
        kinds: list[int] = []  # 0 text, 1 image, 2 state, 3 action
        positions: list[int] = []
        segments: list[int] = []
        full_images = "causal" not in self.attn_mode
        full_actions = "actionfull" in self.attn_mode
        counter = 0
        num_segments = 0

        def emit(tokens: list[int], token_kinds: list[int], bidirectional: bool = False, one_position: bool = False):
            nonlocal counter, num_segments
            ids.extend(tokens)
            kinds.extend(token_kinds)
            segments.extend([num_segments if bidirectional else -1] * len(tokens))
            num_segments += int(bidirectional)
            if one_position:
                positions.extend([counter] * len(tokens))
                counter += 1
            else:
                positions.extend(range(counter, counter + len(tokens)))
                counter += len(tokens)

        emit(self._prefix, [0] * len(self._prefix))
        views_per_block, num_blocks = (num_views, min(num_views, 1)) if self.image_block_layout == "single" else (1, num_views)
        slots = self.tokens_per_image * views_per_block
        image_block = [self.ids.img_start, *([0] * slots), self.ids.img_end]
        image_kinds = [0, *([1] * slots), 0]
        for _ in range(num_blocks):
            emit(image_block, image_kinds, bidirectional=full_images, one_position=full_images)
        emit([self.ids.state_start, 0, self.ids.state_end], [0, 2, 0])
        text = format_instruction(self.prompt_template, instruction, self.action_chunk_length)
        text_ids = [*self._encode(text), self.ids.im_end, self.ids.newline, *self._assistant]
        emit(text_ids, [0] * len(text_ids))
        emit([0] * self.action_chunk_length, [3] * self.action_chunk_length, bidirectional=full_actions)
        emit([self.ids.im_end], [0])

        kind = torch.tensor(kinds, dtype=torch.int64)
        return _Layout(
            input_ids=torch.tensor(ids, dtype=torch.int64),
            position_ids=torch.tensor(positions, dtype=torch.int64),
            segment_ids=torch.tensor(segments, dtype=torch.int64),
            text_indexes=torch.nonzero(kind == 0).flatten(),
            image_token_indexes=torch.nonzero(kind == 1).flatten(),
            state_index=int(torch.nonzero(kind == 2).item()),
            action_indexes=torch.nonzero(kind == 3).flatten(),
        )
