"""The data -> model contract: packs built by the real prompt builder and packer, in every attention mode,
drive the model exactly like the synthetic packs the other model tests use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from beingh.batch import ATTN_MODES, PackedBatch
from beingh.data.packing import pack_samples
from beingh.data.prompt import PromptBuilder
from beingh.data.sample import RobotSample
from beingh.data.tokenizer import load_tokenizer
from beingh.model.beingh import BeingH
from beingh.model.tiny import synthetic_packed_batch, tiny_config

VIEWS = [2, 1]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def _sample(seed: int) -> RobotSample:
    rng = np.random.default_rng(seed)
    mask = np.zeros((16, 200), dtype=bool)
    mask[:, :7] = True
    return RobotSample(
        images=[],
        state=rng.standard_normal(200).astype(np.float32),
        action=rng.standard_normal((16, 200)).astype(np.float32),
        action_mask=mask,
        instruction=f"task {seed}",
        embodiment_id=0,
    )


def _attention_structure(batch: PackedBatch) -> tuple:
    """What the mask depends on, independent of the text: per image view and per sample, whether the block
    is one bidirectional segment, how many RoPE positions an image block spans, and whether any text token
    (the `<img>`/`</img>` delimiters in full modes) joins a segment."""
    image_segments = batch.segment_ids[batch.image_token_indexes].view(sum(VIEWS), -1)
    image_positions = batch.position_ids[batch.image_token_indexes].view(sum(VIEWS), -1)
    action_segments = batch.segment_ids[batch.action_indexes]
    return (
        [bool((row >= 0).all()) and row.unique().numel() == 1 for row in image_segments],
        [row.unique().numel() for row in image_positions],
        [bool((row >= 0).all()) and row.unique().numel() == 1 for row in action_segments],
        bool((batch.segment_ids[batch.text_indexes] >= 0).any()),
    )


@pytest.mark.parametrize("attn_mode", ATTN_MODES)
def test_real_packs_drive_the_model(tokenizer, attn_mode):
    config = tiny_config(attn_mode=attn_mode, llm={"vocab_size": len(tokenizer)})
    builder = PromptBuilder(
        tokenizer, config.tokens_per_image, config.action_chunk_length, attn_mode=attn_mode
    )
    size = config.force_image_size
    tokenized = [
        builder.tokenize(
            _sample(i), torch.randn(views, 3, size, size, generator=torch.Generator().manual_seed(i))
        )
        for i, views in enumerate(VIEWS)
    ]
    batch = pack_samples(tokenized)
    real, synthetic = (
        _attention_structure(batch),
        _attention_structure(synthetic_packed_batch(config, VIEWS, attn_mode=attn_mode)),
    )
    assert real == synthetic

    torch.manual_seed(0)
    model = BeingH(config).eval()
    assert torch.isfinite(model.train()(batch).loss)
    model.eval()
    noise = torch.randn(2, 16, 200, generator=torch.Generator().manual_seed(0))
    cached = model.sample_actions(batch, noise=noise, use_cache=True)
    torch.testing.assert_close(
        cached, model.sample_actions(batch, noise=noise, use_cache=False), atol=1e-5, rtol=1e-5
    )
    alone = model.sample_actions(pack_samples(tokenized[:1]), noise=noise[:1])
    torch.testing.assert_close(cached[:1], alone, atol=2e-5, rtol=1e-4)


def test_model_package_never_imports_data_or_train():
    """DESIGN.md: `model` never imports `data` or `train`; the shared names live in `beingh.batch`."""
    code = (
        "import sys, beingh.model.beingh, beingh.model.loading, beingh.model.tiny, beingh.model.flops; "
        "print(sorted(m for m in sys.modules if m.startswith(('beingh.data', 'beingh.train'))))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
