"""Shared test fixtures: paths to the in-repo data fixtures (tests/fixtures) and a tiny tokenizer folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
LEROBOT_FIXTURES = FIXTURES / "lerobot"
TINY_CHECKPOINT = FIXTURES / "beingh05_tiny_checkpoint"

# Tests use tiny tensors on 2 cores shared with other processes: intra-op worker threads then spin against
# each other and the other processes (measured 10-30x slower model tests under load), for no gain.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lerobot_fixtures() -> Path:
    if not LEROBOT_FIXTURES.is_dir():
        pytest.fail(f"LeRobot fixtures not found at {LEROBOT_FIXTURES} (they are part of the repository: tests/fixtures)")
    return LEROBOT_FIXTURES


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from beingh.data.tokenizer import build_tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(out)
    return out
