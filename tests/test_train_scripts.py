"""The example training scripts pass only real arguments, with the guide's script values, and the tiny
CPU script trains end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beingh.train.args import str2bool

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


FAKE_TORCHRUN = """#!/usr/bin/env bash
# Records what the script hands `-m beingh.train`: the parsed arguments as JSON (no training).
while [[ "$1" != "-m" ]]; do shift; done
shift 2
exec "{python}" -c 'import json, sys
from beingh.train.args import build_parser
print("PARSED " + json.dumps(vars(build_parser().parse_args(sys.argv[1:]))))' "$@"
"""


def run_with_fake_torchrun(tmp_path: Path, name: str, *extra: str, **env_vars: str) -> dict:
    """Run an example script with `torchrun` replaced by a parser; returns the parsed arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "torchrun"
    fake.write_text(FAKE_TORCHRUN.format(python=sys.executable))
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "MLLM_PATH": "/models/InternVL3_5-2B",
        "EXPERT_PATH": "/models/Qwen3-0.6B",
        "OUTPUT_DIR": str(tmp_path / "out"),
        **env_vars,
    }
    result = subprocess.run(
        ["bash", str(SCRIPTS / name), *extra], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("PARSED "))
    return {key.split(".", 1)[1]: value for key, value in json.loads(line[len("PARSED ") :]).items()}


def _typed(text: str, like: object) -> object:
    return str2bool(text) if isinstance(like, bool) else type(like)(text)


@pytest.mark.parametrize(
    ("name", "steps", "start"),
    [("train_libero_example.sh", 60000, 25000), ("train_cross_emb_example.sh", 120000, 50000)],
)
def test_example_scripts_pass_the_guide_values(tmp_path, name, steps, start):
    parsed = run_with_fake_torchrun(tmp_path, name)
    assert parsed["max_steps"] == steps and parsed["save_steps_start"] == start
    for key, value in GUIDE_SCRIPT_VALUES.items():
        assert parsed[key] == _typed(value, parsed[key]), key
    assert parsed["resume_from"] == "" and parsed["mllm_path"] == "/models/InternVL3_5-2B"
    assert (tmp_path / "out" / name).is_file()  # the script keeps a copy of itself next to the run


def test_example_script_env_vars_and_extra_arguments(tmp_path):
    parsed = run_with_fake_torchrun(
        tmp_path, "train_libero_example.sh", "--max_steps", "1000", RESUME_FROM="/models/Being-H05-2B"
    )
    assert parsed["resume_from"] == "/models/Being-H05-2B" and parsed["resume_model_only"] is True
    assert parsed["max_steps"] == 1000


def test_example_script_requires_model_paths():
    env = {k: v for k, v in os.environ.items() if k not in ("MLLM_PATH", "EXPERT_PATH")}
    result = subprocess.run(
        ["bash", str(SCRIPTS / "train_libero_example.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "set MLLM_PATH" in result.stderr


@pytest.mark.slow
def test_tiny_cpu_script_trains(tmp_path):
    """Through `torchrun --nproc_per_node=2 -m beingh.train` (gloo), as a user would run it."""
    env = {
        **os.environ,
        "WORK_DIR": str(tmp_path),
        "MAX_STEPS": "3",
        "NPROC": "2",
        "PYTHONPATH": str(REPO_ROOT),
    }
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    result = subprocess.run(
        ["bash", str(SCRIPTS / "train_tiny_cpu.sh"), "--num_workers", "0"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"final checkpoint: {tmp_path / 'run' / '0000003'}" in result.stdout
