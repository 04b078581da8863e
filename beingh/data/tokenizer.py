"""Tokenizer loading and the special tokens of the being_h0 token layout (reference/upstream_data.md §7).

The tokenizer always comes from a folder on disk (the model folder or a checkpoint); nothing is fetched.
`build_tiny_tokenizer` writes a small self-contained tokenizer for tests and the CPU demo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMG_START = "<img>"
IMG_END = "</img>"
STATE_START = "<|state_start|>"
STATE_END = "<|state_end|>"
ADDED_SPECIAL_TOKENS = (STATE_START, STATE_END)
REQUIRED_SPECIAL_TOKENS = (IM_START, IM_END, IMG_START, IMG_END, *ADDED_SPECIAL_TOKENS)


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the structural tokens the prompt builder places by hand."""

    im_start: int
    im_end: int
    img_start: int
    img_end: int
    state_start: int
    state_end: int
    newline: int


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add the state markers (and any missing chat/image markers); returns how many tokens were added."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in REQUIRED_SPECIAL_TOKENS if t not in vocab]
    return tokenizer.add_tokens(missing, special_tokens=True) if missing else 0


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> SpecialTokenIds:
    """Look up the structural token ids; raises if the tokenizer lacks one or splits the newline."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in REQUIRED_SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}; call add_special_tokens() first")
    newline = tokenizer.encode("\n", add_special_tokens=False)
    if len(newline) != 1:
        raise ValueError(f"tokenizer must encode '\\n' as one token, got {newline}")
    return SpecialTokenIds(
        im_start=vocab[IM_START],
        im_end=vocab[IM_END],
        img_start=vocab[IMG_START],
        img_end=vocab[IMG_END],
        state_start=vocab[STATE_START],
        state_end=vocab[STATE_END],
        newline=newline[0],
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer saved in a model folder and make sure the being_h0 special tokens exist."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {path}")
    # A model folder's config.json (e.g. InternVL's `internvl_chat`) is not a tokenizer config; silence
    # transformers' model-type mismatch warning while it looks there for the tokenizer class.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"no loadable tokenizer in {path}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    add_special_tokens(tokenizer)
    return tokenizer


LEGACY_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
"""Class names transformers 5 writes that transformers 4 cannot resolve -> the name both versions load."""


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    """`save_pretrained`, then make `tokenizer_config.json` loadable by transformers 4 as well as 5.

    transformers 5 writes `tokenizer_class: TokenizersBackend` (a class transformers 4 lacks) and lists
    added special tokens under `extra_special_tokens` (transformers 4 expects a mapping there); both
    versions read the class `PreTrainedTokenizerFast` and the list `additional_special_tokens`.
    """
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    name = config.get("tokenizer_class")
    config["tokenizer_class"] = LEGACY_TOKENIZER_CLASSES.get(name, name)
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        del config["extra_special_tokens"]
        known = list(config.get("additional_special_tokens") or [])
        config["additional_special_tokens"] = known + [t for t in extra if t not in known]
    for key in ("is_local", "local_files_only"):  # where this copy was loaded from, not tokenizer settings
        config.pop(key, None)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def build_tiny_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a small built-in corpus, with the being_h0 special tokens.

    Used by tests and the CPU demo where no real model folder exists. Saved to `out_dir` when given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [
        "You are Being-H0, a helpful and harmless AI assistant developed by BeingBeyond.",
        "According to the instruction 'pick up the red block', what's the micro-step actions in the next 16 steps?",
        "system\nuser\nassistant\n reach push pick place open close drawer door button press the a an to of",
        "put the bowl on the plate, push the puck to the goal, reach the target, turn on the stove",
        "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:'!?-_()[]{}<>/\\|\"",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [IM_START, IM_END, IMG_START, IMG_END, *ADDED_SPECIAL_TOKENS, "<|endoftext|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token="<|endoftext|>",
        additional_special_tokens=[IM_START, IMG_START, IMG_END, *ADDED_SPECIAL_TOKENS],
    )
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_tokenizer(fast, out_dir)
    return fast
