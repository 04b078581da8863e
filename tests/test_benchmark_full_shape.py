"""The full-shape smoke benchmark's code path at the tiny shape: sharded bf16 folders in the released
layout are written shard by shard, built like training, acted with and trained one step."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from test_model_flops import load_benchmark

from beingh.model.loading import build_model
from beingh.model.tiny import tiny_config, write_internvl_folder, write_qwen3_folder


def test_sharded_folders_have_a_complete_index_and_load_with_tied_embeddings(tmp_path):
    config = tiny_config()
    mllm = write_internvl_folder(tmp_path / "internvl", config, dtype=torch.bfloat16, max_shard_bytes=40_000,
                                 tie_word_embeddings=True)
    expert = write_qwen3_folder(tmp_path / "qwen3", config, dtype=torch.bfloat16, max_shard_bytes=40_000,
                                tie_word_embeddings=True)
    for folder in (mllm, expert):
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = sorted(folder.glob("model-*-of-*.safetensors"))
        assert len(shards) > 1 and not (folder / "model.safetensors").exists()
        assert sorted(set(index["weight_map"].values())) == [s.name for s in shards]
        stored, total = {}, 0
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    tensor = f.get_tensor(key)
                    assert tensor.dtype == torch.bfloat16 and key not in stored
                    stored[key] = shard.name
                    total += tensor.numel() * tensor.element_size()
        assert stored == index["weight_map"] and index["metadata"]["total_size"] == total
        assert not any(key.endswith("lm_head.weight") for key in stored)
        assert json.loads((folder / "config.json").read_text()).get("tie_word_embeddings", True)
    model = build_model(mllm, expert, {"force_image_size": 56}, dtype=torch.bfloat16)
    lm = model.language_model
    assert next(model.parameters()).dtype == torch.bfloat16
    assert torch.equal(lm.lm_head.weight, lm.model.embed_tokens.weight)  # tied in the folder
    with safe_open(str(mllm / json.loads((mllm / "model.safetensors.index.json").read_text())["weight_map"][
            "language_model.model.layers.1.mlp.up_proj.weight"]), framework="pt") as f:
        expected = f.get_tensor("language_model.model.layers.1.mlp.up_proj.weight")
    assert torch.equal(lm.model.layers[1].mlp.up_proj.weight, expected)


def test_full_shape_smoke_runs_tiny_on_cpu(capsys):
    module = load_benchmark("full_shape_smoke")
    assert module.main(["--tiny", "--step", "backward", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shape"] == "tiny" and result["dtype"] == "torch.bfloat16"
    assert result["write_folders"]["internvl_shards"] > 1 and result["write_folders"]["qwen3_shards"] > 1
    assert result["parameters"]["total"] == sum(v for k, v in result["parameters"].items() if k != "total")
    assert result["get_action"]["finite"] and result["get_action"]["mpg_passes"] == 2
    step = result["train_step"]
    assert step["kind"] == "forward+backward" and step["gradient_checkpointing"] and step["finite_grads"]
    assert step["params_with_grad"] > 0 and result["peak_rss_gb"] > 0
