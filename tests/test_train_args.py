"""Training arguments: every argument of TRAINING_GUIDE.md with the same name and default; errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from beingh.train.args import ArgumentError, build_parser, parse_args, str2bool

GUIDE_ARGUMENTS = Path(__file__).resolve().parent / "fixtures" / "training_guide_arguments.json"


def guide_arguments() -> dict[str, str | None]:
    """{argument: default as written in the training guide's tables, or None where it gives none}.

    The names and defaults were extracted once from TRAINING_GUIDE.md's argument tables.
    """
    return json.loads(GUIDE_ARGUMENTS.read_text())


def _as_python(text: str, like: object) -> object:
    if isinstance(like, bool):
        return str2bool(text)
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    return text


@pytest.fixture()
def minimal(tmp_path: Path) -> list[str]:
    yaml_file = tmp_path / "data.yaml"
    yaml_file.write_text("g: {}\n")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt / "tokenizer.json").write_text("{}")
    return [
        "--dataset_config_file", str(yaml_file), "--output_dir", str(tmp_path / "out"),
        "--resume_from", str(ckpt), "--resume_model_only", "True", "--max_steps", "10",
    ]  # fmt: skip


def test_guide_tables_parsed():
    args = guide_arguments()
    assert len(args) >= 40
    assert args["learning_rate"] == "1e-4" and args["max_steps"] is None and args["mllm_path"] is None


def test_every_guide_argument_has_the_guide_default(minimal):
    parsed = parse_args(minimal)
    values = {name: value for group in parsed.to_dict().values() for name, value in group.items()}
    explicit = {"dataset_config_file", "output_dir", "resume_from", "resume_model_only", "max_steps"}
    for name, default in guide_arguments().items():
        assert name in values, f"--{name} from the guide is not an argument"
        if default is None or name in explicit:
            continue
        assert values[name] == _as_python(default, values[name]), (
            f"--{name}: {values[name]!r} != guide {default}"
        )
    assert parsed.training.max_grad_norm == 1.0
    assert parsed.logging_dir == parsed.output_dir / "tensorboard"


def test_help_lists_groups_with_descriptions():
    parser = build_parser()
    text = parser.format_help()
    for title in ("Required / paths", "Training", "Model", "Data", "Sequence", "Freeze", "MPG", "RTC"):
        assert f"\n{title}:" in text
    assert "Sliced Wasserstein projections" in text
    assert "(required)" in text
    undocumented = [a.dest for a in parser._actions if a.option_strings and len(a.help or "") < 8]
    assert not undocumented, undocumented
    group_of = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    assert group_of["mpg.mpg_lambda"] == "MPG" and group_of["freeze.freeze_llm"] == "Freeze"


def test_arguments_beyond_the_guide(minimal):
    """The issue's extra arguments exist with useful defaults."""
    parsed = parse_args(minimal)
    assert parsed.training.save_merged_metadata is False and parsed.training.save_model_only is False
    assert parsed.paths.logging_dir == "" and parsed.training.seed == 42
    assert parsed.model.grad_checkpoint is False and parsed.model.num_inference_timesteps == 4
    assert parsed.training.keep_last_n_checkpoints == 0
    custom = parse_args([*minimal, "--logging_dir", "/tmp/tb", "--seed", "7", "--grad_checkpoint"])
    assert str(custom.logging_dir) == "/tmp/tb" and custom.training.seed == 7 and custom.model.grad_checkpoint


def test_attn_modes_have_one_source_of_truth(minimal):
    from beingh import batch
    from beingh.data import prompt

    assert prompt.ATTN_MODES is batch.ATTN_MODES
    for mode in batch.ATTN_MODES:
        assert parse_args([*minimal, "--attn_mode", mode]).sequence.attn_mode == mode


def test_boolean_spellings(minimal):
    assert parse_args([*minimal, "--freeze_vit"]).freeze.freeze_vit is True
    assert parse_args([*minimal, "--freeze_vit", "True"]).freeze.freeze_vit is True
    assert parse_args([*minimal, "--use_mpg", "False"]).mpg.use_mpg is False
    with pytest.raises(SystemExit):
        parse_args([*minimal, "--use_mpg", "maybe"])


def test_unknown_argument_is_rejected(minimal, capsys):
    with pytest.raises(SystemExit):
        parse_args([*minimal, "--learning_rat", "1e-3"])
    assert "unrecognized arguments: --learning_rat" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--expected_num_tokens", "9000", "--max_num_tokens", "8704"], "exceeds --max_num_tokens"),
        (["--save_steps", "0"], "--save_steps must be > 0"),
        (["--max_steps", "0"], "--max_steps must be > 0"),
        (["--warmup_ratio", "1.5"], "--warmup_ratio"),
        (["--use_training_time_rtc", "True"], "--simulated_delay >= 1"),
        (["--use_flow_matching", "False"], "not supported"),
        (["--resume_model_only", "False"], "--resume_model_only True"),
        (["--mllm_path", "/nonexistent/internvl"], "--mllm_path: folder not found"),
        (["--attn_mode", "bidirectional"], "--attn_mode must be one of"),
        (["--mpg_gate_temperature", "0"], "--mpg_gate_temperature must be > 0"),
        (["--mpg_refinement_iters", "-1"], "--mpg_refinement_iters"),
        (["--beta2", "1.0"], "--beta2 must be in [0, 1)"),
        (["--simulated_delay", "16"], "must be < --action_chunk_length"),
        (["--prefer_buffer_before", "0"], "--prefer_buffer_before must be > 0"),
        (["--max_buffer_size", "0"], "--max_buffer_size must be > 0"),
        (["--max_consecutive_nonfinite_steps", "0"], "--max_consecutive_nonfinite_steps must be > 0"),
    ],
)
def test_contradictions_are_clear_errors(minimal, extra, message):
    with pytest.raises(ArgumentError, match=re.escape(message)):
        parse_args([*minimal, *extra])


def test_down_sample_ratio_must_match_the_weights_folder(minimal, tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "config.json").write_text('{"downsample_ratio": 0.5}')
    assert parse_args(minimal).data.down_sample_ratio == 0.5
    with pytest.raises(ArgumentError, match=re.escape("--down_sample_ratio 0.25 does not match downsample_ratio 0.5")):
        parse_args([*minimal, "--down_sample_ratio", "0.25"])


def test_new_training_options(minimal):
    parsed = parse_args(minimal)
    assert parsed.training.loss_normalization == "pack" and parsed.training.max_consecutive_nonfinite_steps == 5
    assert parsed.mpg.mpg_semantics is None
    chosen = parse_args([*minimal, "--loss_normalization", "global", "--mpg_semantics", "original"])
    assert chosen.training.loss_normalization == "global" and chosen.mpg.mpg_semantics == "original"
    for bad in (["--mpg_semantics", "buggy"], ["--loss_normalization", "token"]):
        with pytest.raises(SystemExit):
            parse_args([*minimal, *bad])


def test_model_source_and_data_file_are_required(minimal, tmp_path):
    without_model = minimal[:4] + minimal[8:]
    with pytest.raises(ArgumentError, match="--mllm_path"):
        parse_args(without_model)
    with pytest.raises(ArgumentError, match="dataset_config_file: file not found"):
        parse_args(["--dataset_config_file", str(tmp_path / "none.yaml"), *minimal[2:]])


def test_resume_and_tokenizer_contradictions(minimal, tmp_path):
    without_resume = [*minimal[:4], *minimal[6:]]
    mllm = tmp_path / "internvl"
    mllm.mkdir()
    (mllm / "config.json").write_text("{}")
    expert = ["--expert_path", str(mllm)]
    with pytest.raises(ArgumentError, match="no tokenizer files"):
        parse_args([*without_resume, "--mllm_path", str(mllm), *expert, "--resume_model_only", "False"])
    (mllm / "tokenizer.json").write_text("{}")
    with pytest.raises(ArgumentError, match="--resume_model_only True needs --resume_from"):
        parse_args([*without_resume, "--mllm_path", str(mllm), *expert])


def test_cli_reports_errors_without_traceback(minimal, capsys):
    from beingh.train.cli import main

    assert main([*minimal, "--save_steps", "-1"]) == 2
    assert "beingh train: error: --save_steps must be > 0" in capsys.readouterr().err
