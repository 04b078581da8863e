"""The example training scripts pass only real arguments, with the guide's script values, and the tiny
CPU script trains end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from beingh.train.args import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts" / "train"
GUIDE_SCRIPT_VALUES = {
    "learning_rate": "1e-4",
    "weight_decay": "1e-5",
    "warmup_ratio": "0.05",
    "save_steps": "10000",
    "logging_steps": "10",
    "max_num_tokens": "8704",
    "expected_num_tokens": "8192",
    "prefer_buffer_before": "4096",
    "max_buffer_size": "4",
    "num_workers": "12",
    "prefetch_factor": "8",
    "force_image_size": "224",
    "use_mpg": "True",
    "mpg_lambda": "0.1",
    "mpg_num_projections": "32",
    "mpg_refinement_iters": "1",
    "mpg_gate_temperature": "1.0",
    "use_training_time_rtc": "False",
}


def script_flags(name: str) -> dict[str, str]:
    text = (SCRIPTS / name).read_text()
    block = text.split("-m beingh.train", 1)[1].split('"$@"', 1)[0]
    return dict(re.findall(r"--(\w+) (\S+)", block))


@pytest.mark.parametrize(
    ("name", "steps", "start"),
    [("train_libero_example.sh", "60000", "25000"), ("train_cross_emb_example.sh", "120000", "50000")],
)
def test_example_scripts_use_the_guide_values(name, steps, start):
    flags = script_flags(name)
    known = {a.option_strings[0][2:] for a in build_parser()._actions if a.option_strings}
    assert set(flags) <= known, set(flags) - known
    assert flags["max_steps"] == steps and flags["save_steps_start"] == start
    for key, value in GUIDE_SCRIPT_VALUES.items():
        assert flags[key] == value, key
    subprocess.run(["bash", "-n", str(SCRIPTS / name)], check=True)


def test_example_script_requires_model_paths():
    env = {k: v for k, v in os.environ.items() if k not in ("MLLM_PATH", "EXPERT_PATH")}
    result = subprocess.run(
        ["bash", str(SCRIPTS / "train_libero_example.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "set MLLM_PATH" in result.stderr


@pytest.mark.slow
def test_tiny_cpu_script_trains(tmp_path):
    env = {**os.environ, "WORK_DIR": str(tmp_path), "MAX_STEPS": "3", "PYTHONPATH": str(REPO_ROOT)}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    result = subprocess.run(
        ["bash", str(SCRIPTS / "train_tiny_cpu.sh")], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"final checkpoint: {tmp_path / 'run' / '0000003'}" in result.stdout
