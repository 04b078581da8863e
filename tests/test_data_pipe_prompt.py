"""PromptBuilder (being_h0 token layout, attention modes) and pack_samples / TokenBudgetPacker."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from beingh.data.packing import TokenBudgetPacker, pack_samples
from beingh.data.prompt import ATTN_MODES, PromptBuilder, format_instruction, tokens_per_image
from beingh.data.sample import RobotSample
from beingh.data.tokenizer import IM_END, IM_START, IMG_END, IMG_START, STATE_END, STATE_START, load_tokenizer

T = 4
TPI = 3


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def _sample(instruction="pick up the red block", embodiment_id=2, seed=0) -> RobotSample:
    rng = np.random.default_rng(seed)
    return RobotSample(
        images=[],
        state=rng.standard_normal(200).astype(np.float32),
        action=rng.standard_normal((T, 200)).astype(np.float32),
        action_mask=rng.random((T, 200)) > 0.5,
        instruction=instruction,
        embodiment_id=embodiment_id,
    )


def _pixels(views: int, size: int = 28) -> torch.Tensor:
    return torch.randn(views, 3, size, size)


def test_tokens_per_image_matches_internvl():
    assert tokens_per_image(224, 0.5) == 64
    assert tokens_per_image(448, 0.5) == 256


def test_layout_order_and_counts(tokenizer):
    builder = PromptBuilder(tokenizer, TPI, action_chunk_length=T)
    ids = builder.ids
    out = builder.tokenize(_sample(), _pixels(2))
    seq = out.input_ids.tolist()
    vocab = tokenizer.get_vocab()

    assert out.num_tokens == len(seq) == builder.num_tokens(2, "pick up the red block")
    assert seq[0] == vocab[IM_START] and seq[-1] == vocab[IM_END]
    # One <img> ... </img> block per view, TPI image slots each.
    starts = [i for i, t in enumerate(seq) if t == vocab[IMG_START]]
    ends = [i for i, t in enumerate(seq) if t == vocab[IMG_END]]
    assert len(starts) == len(ends) == 2
    image_positions = out.image_token_indexes.tolist()
    assert image_positions == [p for s in starts for p in range(s + 1, s + 1 + TPI)]
    # State slot between its markers, right after the last image block.
    assert seq[out.state_index - 1] == vocab[STATE_START] and seq[out.state_index + 1] == vocab[STATE_END]
    assert out.state_index - 1 == ends[-1] + 1
    # T action slots right before the final <|im_end|>, after "<|im_start|>assistant\n".
    assert out.action_indexes.tolist() == list(range(len(seq) - 1 - T, len(seq) - 1))
    assistant = tokenizer.decode(seq[out.action_indexes[0] - 3 : out.action_indexes[0]])
    assert assistant.endswith("assistant\n")
    # Every position is exactly one of text / image / state / action.
    covered = sorted(out.text_indexes.tolist() + image_positions + [out.state_index] + out.action_indexes.tolist())
    assert covered == list(range(out.num_tokens))
    text = tokenizer.decode(out.input_ids[out.text_indexes])
    assert "You are Being-H0, a helpful and harmless AI assistant developed by BeingBeyond." in text
    assert "According to the instruction 'pick up the red block', what's the micro-step actions in the next 4 steps?" in text
    assert ids.newline in seq


def test_causal_positions_and_no_segments(tokenizer):
    out = PromptBuilder(tokenizer, TPI, action_chunk_length=T).tokenize(_sample(), _pixels(2))
    assert out.position_ids.tolist() == list(range(out.num_tokens))
    assert (out.segment_ids == -1).all()


@pytest.mark.parametrize("mode", ["full", "actionfull"])
def test_full_modes_share_one_position_per_image_block(tokenizer, mode):
    out = PromptBuilder(tokenizer, TPI, action_chunk_length=T, attn_mode=mode).tokenize(_sample(), _pixels(2))
    causal = PromptBuilder(tokenizer, TPI, action_chunk_length=T).tokenize(_sample(), _pixels(2))
    block = TPI + 2
    first = int(causal.image_token_indexes[0]) - 1  # <img> of view 0
    for view in range(2):
        span = slice(first + view * block, first + (view + 1) * block)
        assert (out.segment_ids[span] == view).all()
        assert (out.position_ids[span] == first + view).all()
    # After the image blocks the counter resumes by +1 per token.
    after = first + 2 * block
    assert out.position_ids[after] == first + 2
    assert out.position_ids[-1] == out.num_tokens - 1 - 2 * (block - 1)
    action_segments = out.segment_ids[out.action_indexes]
    if mode == "actionfull":
        assert (action_segments == 2).all()
    else:
        assert (action_segments == -1).all()
    assert torch.equal(out.input_ids, causal.input_ids)


def test_causal_actionfull(tokenizer):
    out = PromptBuilder(tokenizer, TPI, action_chunk_length=T, attn_mode="causal_actionfull").tokenize(
        _sample(), _pixels(2)
    )
    assert out.position_ids.tolist() == list(range(out.num_tokens))
    assert (out.segment_ids[out.action_indexes] == 0).all()
    mask = torch.ones(out.num_tokens, dtype=torch.bool)
    mask[out.action_indexes] = False
    assert (out.segment_ids[mask] == -1).all()


def test_num_tokens_counts_present_views_only(tokenizer):
    builder = PromptBuilder(tokenizer, TPI, action_chunk_length=T)
    one, three = builder.tokenize(_sample(), _pixels(1)), builder.tokenize(_sample(), _pixels(3))
    assert three.num_tokens - one.num_tokens == 2 * (TPI + 2)
    zero = builder.tokenize(_sample(), _pixels(0))
    assert zero.num_tokens == one.num_tokens - (TPI + 2) and zero.pixel_values.shape[0] == 0


def test_single_image_block_layout_wraps_all_views_in_one_pair(tokenizer):
    """The original's server layout: <img> [V x TPI slots] </img>, positions still consecutive."""
    vocab = tokenizer.get_vocab()
    per_view = PromptBuilder(tokenizer, TPI, action_chunk_length=T).tokenize(_sample(), _pixels(3))
    single = PromptBuilder(tokenizer, TPI, action_chunk_length=T, image_block_layout="single").tokenize(
        _sample(), _pixels(3))
    seq = single.input_ids.tolist()
    start, end = seq.index(vocab[IMG_START]), seq.index(vocab[IMG_END])
    assert seq.count(vocab[IMG_START]) == seq.count(vocab[IMG_END]) == 1
    assert single.image_token_indexes.tolist() == list(range(start + 1, end)) and end - start - 1 == 3 * TPI
    assert single.num_tokens == per_view.num_tokens - 4  # two <img>/</img> pairs fewer
    assert single.position_ids.tolist() == list(range(single.num_tokens))
    text = per_view.input_ids[per_view.image_token_indexes[-1] + 2:]
    assert torch.equal(single.input_ids[end + 1:], text)  # everything after the images is unchanged
    one_view = PromptBuilder(tokenizer, TPI, action_chunk_length=T, image_block_layout="single")
    assert torch.equal(one_view.tokenize(_sample(), _pixels(1)).input_ids,
                       PromptBuilder(tokenizer, TPI, action_chunk_length=T).tokenize(_sample(), _pixels(1)).input_ids)
    with pytest.raises(ValueError, match="image_block_layout"):
        PromptBuilder(tokenizer, TPI, image_block_layout="grid")


def test_templates_and_errors(tokenizer):
    assert format_instruction("short", "open the drawer", 16) == "open the drawer"
    assert format_instruction("Do: {task_description}", "x", 16) == "Do: x"
    # The original's template names the chunk length {k}.
    original = "According to the instruction '{task_description}', what's the micro-step actions in the next {k} steps?"
    assert format_instruction(original, "open it", 16) == (
        "According to the instruction 'open it', what's the micro-step actions in the next 16 steps?"
    )
    with pytest.raises(ValueError, match=r"unknown placeholder 'robot'"):
        format_instruction("{task} with {robot}", "x", 16)
    with pytest.raises(ValueError, match="prompt_template"):
        PromptBuilder(tokenizer, TPI, prompt_template="detail")
    with pytest.raises(ValueError, match="attn_mode"):
        PromptBuilder(tokenizer, TPI, attn_mode="bidirectional")
    with pytest.raises(ValueError, match="conv_style"):
        PromptBuilder(tokenizer, TPI, conv_style="internlm2-chat")
    with pytest.raises(ValueError, match="action chunk"):
        PromptBuilder(tokenizer, TPI, action_chunk_length=8).tokenize(_sample(), _pixels(1))
    assert set(ATTN_MODES) == {"causal", "full", "actionfull", "causal_actionfull"}


def test_pack_samples_offsets_and_unique_segments(tokenizer):
    builder = PromptBuilder(tokenizer, TPI, action_chunk_length=T, attn_mode="actionfull")
    samples = [
        builder.tokenize(_sample("a", embodiment_id=0, seed=0), _pixels(2)),
        builder.tokenize(_sample("push the puck to the goal", embodiment_id=2, seed=1), _pixels(1)),
    ]
    pack = pack_samples(samples)
    a, b = samples
    assert pack.sample_lens == [a.num_tokens, b.num_tokens]
    assert pack.num_tokens == a.num_tokens + b.num_tokens
    assert pack.position_ids[a.num_tokens] == 0
    assert pack.state_indexes.tolist() == [a.state_index, a.num_tokens + b.state_index]
    assert pack.action_indexes.shape == (2, T)
    assert torch.equal(pack.action_indexes[1], b.action_indexes + a.num_tokens)
    assert pack.image_token_indexes.shape[0] == 3 * TPI
    assert torch.equal(pack.pixel_values[2], b.pixel_values[0])
    assert torch.equal(pack.state[1], b.state) and torch.equal(pack.action_mask[0], a.action_mask)
    assert pack.embodiment_ids.tolist() == [0, 2]
    # Segments: sample a has 2 image blocks + 1 action block, b has 1 + 1; ids unique across the pack.
    segments = pack.segment_ids[pack.segment_ids >= 0].unique().tolist()
    assert segments == [0, 1, 2, 3, 4]
    assert (pack.segment_ids[pack.action_indexes[1]] == 4).all()
    assert torch.equal(pack.input_ids[pack.text_indexes][: len(a.text_indexes)], a.input_ids[a.text_indexes])
    assert sorted(
        pack.text_indexes.tolist() + pack.image_token_indexes.tolist() + pack.state_indexes.tolist()
        + pack.action_indexes.flatten().tolist()
    ) == list(range(pack.num_tokens))


@dataclass
class _Item:
    num_tokens: int
    uid: int


class _Source:
    def __init__(self, lengths, offset: int = 0):
        self.lengths = list(lengths)
        self.offset = offset
        self.drawn = 0

    def __call__(self) -> _Item:
        item = _Item(self.lengths[self.drawn % len(self.lengths)], self.offset + self.drawn)
        self.drawn += 1
        return item


def test_packer_never_loses_samples_and_respects_budget():
    rng = np.random.default_rng(0)
    source = _Source(rng.integers(20, 120, size=500).tolist())
    packer = TokenBudgetPacker(max_num_tokens=300, expected_num_tokens=250, prefer_buffer_before=120,
                               max_buffer_size=2, max_num_tokens_per_sample=300)
    seen = []
    for _ in range(60):
        pack = packer.next_pack(source)
        total = sum(i.num_tokens for i in pack)
        assert 0 < total <= 300
        seen += [i.uid for i in pack]
        assert len(packer.buffer) <= 2
    in_buffer = [i.uid for i in packer.buffer]
    assert sorted(seen + in_buffer) == list(range(source.drawn))
    assert len(set(seen)) == len(seen)


def test_packer_closes_at_expected_and_buffers_overflow():
    packer = TokenBudgetPacker(max_num_tokens=100, expected_num_tokens=90, prefer_buffer_before=50,
                               max_buffer_size=2, max_num_tokens_per_sample=100)
    source = _Source([60, 60, 30, 10])
    first = packer.next_pack(source)
    # 60 packed; next 60 overflows into the buffer; 30 fits (90 >= expected) -> close.
    assert [i.uid for i in first] == [0, 2] and [i.uid for i in packer.buffer] == [1]
    second = packer.next_pack(source)
    assert second[0].uid == 1  # the buffered sample comes first


def test_packer_closes_the_pack_when_the_buffer_is_full():
    packer = TokenBudgetPacker(max_num_tokens=100, expected_num_tokens=90, prefer_buffer_before=50,
                               max_buffer_size=1, max_num_tokens_per_sample=100)
    source = _Source([60, 60, 30, 10])
    # 60 packed; 60 overflows and fills the buffer: the pack closes without drawing (nothing is dropped).
    assert [i.uid for i in packer.next_pack(source)] == [0] and [i.uid for i in packer.buffer] == [1]
    assert source.drawn == 2
    assert [i.uid for i in packer.next_pack(source)] == [1, 2] and packer.buffer == []


@pytest.mark.parametrize("max_buffer_size", [1, 2, 4])
def test_packer_buffer_never_exceeds_max_buffer_size(max_buffer_size):
    """Large samples that rarely fit, several mandatory sources: the buffer stays bounded, nothing is lost."""
    rng = np.random.default_rng(max_buffer_size)
    source = _Source(rng.integers(30, 100, size=997).tolist())
    mandatory = [_Source(rng.integers(50, 100, size=101).tolist(), offset=10_000 * (i + 1)) for i in range(3)]
    packer = TokenBudgetPacker(max_num_tokens=120, expected_num_tokens=110, prefer_buffer_before=60,
                               max_buffer_size=max_buffer_size, max_num_tokens_per_sample=100)
    packed = []
    for _ in range(300):
        pack = packer.next_pack(source, mandatory=mandatory)
        assert pack and sum(i.num_tokens for i in pack) <= 120
        assert len(packer.buffer) <= max_buffer_size
        packed += [i.uid for i in pack]
    drawn = list(range(source.drawn)) + [m.offset + k for m in mandatory for k in range(m.drawn)]
    assert sorted(packed + [i.uid for i in packer.buffer]) == sorted(drawn)


def test_packer_skips_oversized_with_count():
    packer = TokenBudgetPacker(max_num_tokens=100, expected_num_tokens=50, prefer_buffer_before=10,
                               max_buffer_size=1, max_num_tokens_per_sample=80)
    pack = packer.next_pack(_Source([90, 40, 40]))
    assert [i.uid for i in pack] == [1, 2] and packer.num_skipped == 1


def test_packer_validates_arguments():
    with pytest.raises(ValueError, match="expected_num_tokens"):
        TokenBudgetPacker(max_num_tokens=100, expected_num_tokens=200)
    with pytest.raises(ValueError, match="max_num_tokens_per_sample"):
        TokenBudgetPacker(max_num_tokens=100, expected_num_tokens=50, max_num_tokens_per_sample=200)
    with pytest.raises(ValueError, match="prefer_buffer_before must be > 0"):
        TokenBudgetPacker(max_num_tokens=100, expected_num_tokens=50, prefer_buffer_before=0,
                          max_num_tokens_per_sample=100)
    with pytest.raises(ValueError, match="max_buffer_size must be >= 1"):
        TokenBudgetPacker(max_num_tokens=100, expected_num_tokens=50, prefer_buffer_before=10,
                          max_buffer_size=0, max_num_tokens_per_sample=100)
