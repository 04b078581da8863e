"""The shared tokenizer helpers and the `beingh` command dispatcher."""

from __future__ import annotations

import pytest

from beingh.cli import COMMANDS, main
from beingh.data.tokenizer import (
    REQUIRED_SPECIAL_TOKENS,
    add_special_tokens,
    build_tiny_tokenizer,
    load_tokenizer,
    save_tokenizer,
    special_token_ids,
)


def test_tiny_tokenizer_has_the_layout_tokens_and_a_single_newline(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    ids = special_token_ids(tokenizer)
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in REQUIRED_SPECIAL_TOKENS] == [
        ids.im_start, ids.im_end, ids.img_start, ids.img_end, ids.state_start, ids.state_end
    ]
    assert tokenizer.encode("\n", add_special_tokens=False) == [ids.newline]
    assert add_special_tokens(tokenizer) == 0


def test_missing_state_tokens_are_added_once():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = Tokenizer(models.WordLevel({"<|im_start|>": 0, "<|im_end|>": 1, "<img>": 2, "</img>": 3,
                                       "\n": 4, "[UNK]": 5}, unk_token="[UNK]"))
    base.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base, unk_token="[UNK]")
    with pytest.raises(ValueError, match="state_start"):
        special_token_ids(tokenizer)
    assert add_special_tokens(tokenizer) == 2
    assert add_special_tokens(tokenizer) == 0
    assert special_token_ids(tokenizer).state_end == len(tokenizer) - 1


def test_load_tokenizer_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no loadable tokenizer"):
        load_tokenizer(tmp_path)


def test_saved_tokenizer_config_loads_in_transformers_4_and_5(tmp_path):
    """transformers 5 writes `tokenizer_class: TokenizersBackend` and a list `extra_special_tokens`, which
    transformers 4 cannot read; `save_tokenizer` writes the class and key both versions load."""
    import json

    from transformers import AutoTokenizer

    built = build_tiny_tokenizer(tmp_path / "tiny")
    save_tokenizer(load_tokenizer(tmp_path / "tiny"), tmp_path / "saved")
    for folder in (tmp_path / "tiny", tmp_path / "saved"):
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
        assert not isinstance(config.get("extra_special_tokens"), list)
        assert config["additional_special_tokens"] == ["<|im_start|>", "<img>", "</img>", "<|state_start|>",
                                                       "<|state_end|>"]
        assert "is_local" not in config and "local_files_only" not in config
        reloaded = AutoTokenizer.from_pretrained(str(folder))
        text = "<|im_start|>user\n<img></img><|state_start|><|state_end|> reach the target<|im_end|>"
        assert reloaded.encode(text, add_special_tokens=False) == built.encode(text, add_special_tokens=False)
        assert len(reloaded) == len(built)


def test_tiny_tokenizer_round_trips_through_disk(tmp_path):
    built = build_tiny_tokenizer(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "According to the instruction 'reach the target'"
    assert loaded.encode(text, add_special_tokens=False) == built.encode(text, add_special_tokens=False)


def test_cli_lists_commands_and_rejects_unknown_ones(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_every_command_resolves_to_a_callable():
    import importlib

    for target, _ in COMMANDS.values():
        module_name, func_name = target.split(":")
        assert callable(getattr(importlib.import_module(module_name), func_name))


@pytest.mark.parametrize("command", [
    [], ["--help"], *[[name, "--help"] for name in COMMANDS],
    ["demo", "collect", "--help"], ["demo", "run", "--help"],
    *[["eval", "--env", env, "--help"] for env in ("metaworld", "libero", "robocasa")],
])
def test_every_help_exits_zero(command, capsys):
    """`--help` of the dispatcher, every command and every subcommand prints usage and exits 0."""
    try:
        code = main(command)
    except SystemExit as exit_:
        code = exit_.code
    assert code in (0, None)
    assert "usage" in capsys.readouterr().out.lower()
