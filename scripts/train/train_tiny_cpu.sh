#!/usr/bin/env bash
# Train a tiny random-weight model on the LeRobot fixture datasets, on a laptop CPU, in a few minutes.
# It writes tiny InternVL / Qwen3 folders (random weights, real layout) and a tiny tokenizer, trains
# ~50 steps with the real trainer (FSDP2 on a 1-process gloo group), and prints the checkpoint path.
#
#   bash scripts/train/train_tiny_cpu.sh                  # 1 process
#   NPROC=2 bash scripts/train/train_tiny_cpu.sh          # 2 processes via torchrun
set -euo pipefail

WORK_DIR=${WORK_DIR:-outputs/tiny_cpu}
DATASET_CONFIG=${DATASET_CONFIG:-configs/tests/fixtures_v30.yaml}
MAX_STEPS=${MAX_STEPS:-50}
NPROC=${NPROC:-1}
export PYTHONPATH=${PYTHONPATH:-.}

python - "${WORK_DIR}" <<'PY'
import sys
from pathlib import Path

from beingh.data.tokenizer import build_tiny_tokenizer
from beingh.model.tiny import tiny_config, write_internvl_folder, write_qwen3_folder

work = Path(sys.argv[1])
config = tiny_config()
mllm = write_internvl_folder(work / "tiny_internvl", config)
build_tiny_tokenizer(mllm)
write_qwen3_folder(work / "tiny_qwen3", config)
print(f"tiny model folders in {work}")
PY

ARGS=(
  --mllm_path "${WORK_DIR}/tiny_internvl"
  --expert_path "${WORK_DIR}/tiny_qwen3"
  --dataset_config_file "${DATASET_CONFIG}"
  --output_dir "${WORK_DIR}/run"
  --max_steps "${MAX_STEPS}"
  --learning_rate 1e-3
  --warmup_ratio 0.1
  --save_steps 25
  --save_steps_start 0
  --logging_steps 5
  --force_image_size 56
  --max_num_tokens 1024
  --max_num_tokens_per_sample 1024
  --expected_num_tokens 768
  --prefer_buffer_before 512
  --num_workers 1
  --prefetch_factor 2
  --keep_last_n_checkpoints 2
  --save_merged_metadata True
)
if [[ "${NPROC}" -gt 1 ]]; then
  torchrun --standalone --nproc_per_node="${NPROC}" -m beingh.train "${ARGS[@]}" "$@"
else
  python -m beingh.train "${ARGS[@]}" "$@"
fi
