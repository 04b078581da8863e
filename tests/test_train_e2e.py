"""End to end on the LeRobot fixture datasets through the real data loader: `beingh train` runs,
writes loadable checkpoints with metadata, and a crashed run resumed from its last checkpoint
reproduces the uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from beingh.model.beingh import BeingH
from beingh.model.tiny import tiny_config, write_internvl_folder, write_qwen3_folder
from beingh.train.args import parse_args
from beingh.train.build import TrainData, build_data
from beingh.train.cli import main
from beingh.train.trainer import train

REPO_ROOT = Path(__file__).resolve().parents[1]
YAML = REPO_ROOT / "configs" / "tests" / "fixtures_v30.yaml"


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> tuple[Path, Path]:
    from beingh.data.tokenizer import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny_models")
    mllm = write_internvl_folder(root / "internvl", tiny_config())
    build_tiny_tokenizer(mllm)
    return mllm, write_qwen3_folder(root / "qwen3", tiny_config())


def _argv(model_folders, out: Path, steps: int, *extra: str, yaml: Path = YAML) -> list[str]:
    mllm, expert = model_folders
    return [
        "--mllm_path", str(mllm), "--expert_path", str(expert), "--dataset_config_file", str(yaml),
        "--output_dir", str(out), "--max_steps", str(steps), "--save_steps", "2", "--save_steps_start", "0",
        "--logging_steps", "1", "--force_image_size", "56", "--num_workers", "0", "--max_num_tokens", "768",
        "--max_num_tokens_per_sample", "768", "--expected_num_tokens", "512", "--prefer_buffer_before", "256",
        *extra,
    ]  # fmt: skip


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


class CrashingPacks:
    """The real loader, failing after `crash_after` packs (a killed run)."""

    def __init__(self, loader, crash_after: int):
        self.loader, self.crash_after = loader, crash_after

    def __iter__(self):
        for i, pack in enumerate(self.loader):
            if i == self.crash_after:
                raise RuntimeError("simulated crash")
            yield pack

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


def crashing_data(args, tokenizer, info) -> TrainData:
    data = build_data(args, tokenizer, info)
    return TrainData(CrashingPacks(data.packs, crash_after=3), data.write_metadata)


def test_cli_trains_on_fixture_data(model_folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(model_folders, out, 2)) == 0
    assert f"final checkpoint: {out / '0000002'}" in capsys.readouterr().out
    ckpt = out / "0000002"
    metadata = json.loads((ckpt / "experiment_cfg" / "fixtures_v30_metadata.json").read_text())
    assert set(metadata) == {"fixtures_v30"}  # --save_merged_metadata False: the statistics training used
    model = BeingH.from_pretrained(ckpt)
    assert model.config.force_image_size == 56
    assert all(torch.isfinite(torch.tensor(v)) for v in _losses(out))


def test_crash_and_resume_on_fixture_data(model_folders, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(parse_args(_argv(model_folders, straight, 4)))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(parse_args(_argv(model_folders, resumed, 4)), data_factory=crashing_data)
    train(parse_args(_argv(model_folders, resumed, 4, "--resume_from", str(resumed / "0000002"))))
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5)
    a = BeingH.from_pretrained(straight / "0000004").state_dict()
    b = BeingH.from_pretrained(resumed / "0000004").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_missing_dataset_is_a_clear_error(model_folders, tmp_path, capsys):
    yaml = tmp_path / "missing.yaml"
    yaml.write_text(
        "broken:\n  dataset_names: [/nonexistent/lerobot_dataset]\n  data_config_names: metaworld\n"
        "  embodiment_tags: metaworld\n"
    )
    assert main(_argv(model_folders, tmp_path / "out", 2, yaml=yaml)) == 2
    err = capsys.readouterr().err
    assert "beingh train: error:" in err and "/nonexistent/lerobot_dataset" in err


def test_save_merged_metadata_is_honoured(model_folders, tmp_path, capsys):
    """True writes every variant; False writes one entry, and refuses groups trained on several statistics."""
    out = tmp_path / "merged"
    assert main(_argv(model_folders, out, 1, "--save_merged_metadata", "True")) == 0
    metadata = json.loads((out / "0000001" / "experiment_cfg" / "fixtures_v30_metadata.json").read_text())
    assert set(metadata["fixtures_v30_variants"]) == {"../../tests/fixtures/lerobot/v30_av1",
                                                      "../../tests/fixtures/lerobot/v30_h264", "metaworld"}
    per_task = tmp_path / "per_task.yaml"
    per_task.write_text(YAML.read_text().replace("  weight: 1", "  weight: 1\n  stats_level: task"))
    per_task.write_text(per_task.read_text().replace("../../tests/fixtures", str(REPO_ROOT / "tests" / "fixtures")))
    assert main(_argv(model_folders, tmp_path / "refused", 1, yaml=per_task)) == 2
    err = capsys.readouterr().err
    assert "--save_merged_metadata False: group 'fixtures_v30' normalizes its datasets with 2 different" in err
    assert "pass --save_merged_metadata True" in err
