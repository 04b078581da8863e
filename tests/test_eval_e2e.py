"""End to end: collect MetaWorld demos, train a tiny model with `beingh train`, evaluate it closed loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("metaworld")


@pytest.mark.slow
def test_demo_run_end_to_end(tmp_path):
    from beingh.eval.demo import main

    workdir = tmp_path / "demo"
    code = main(["run", "--workdir", str(workdir), "--tasks", "reach-v3", "--episodes", "5", "--steps", "4",
                 "--eval_episodes", "1", "--max_steps", "24", "--image_size", "56", "--max_num_tokens", "512",
                 "--num_workers", "0"])
    assert code == 0
    results = json.loads((workdir / "eval" / "results.json").read_text())
    assert results["tasks"]["reach-v3"]["episodes"] == 1
    assert results["episodes"][0]["seed"] >= 10_000  # evaluation seeds never overlap training seeds (0..)
    assert results["episodes"][0]["steps"] == 24 or results["episodes"][0]["success"]
    execute_steps = results["config"]["execute_steps"]
    assert results["episodes"][0]["policy_calls"] == -(-results["episodes"][0]["steps"] // execute_steps)
    assert (workdir / "train" / "loss_curve.png").is_file()
    assert (workdir / "eval" / "action_chunk.png").is_file()
    assert list((workdir / "eval" / "videos").glob("*.mp4"))
    assert (Path(results["checkpoint"]) / "model.safetensors").is_file()
    assert results["timings"]["total_s"] > 0
