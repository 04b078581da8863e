#!/usr/bin/env bash
# LIBERO end to end on a CPU: scripted demos -> tiny Being-H trained from random weights -> `beingh serve`
# -> LIBERO client -> success rate, with the wall time of every stage (README "LIBERO").
#
#   bash scripts/eval/setup_libero.sh                                    # once: the LIBERO venv
#   bash scripts/eval/libero_cpu_e2e.sh                                  # camera + proprioception (libero_nonorm)
#   DATA_CONFIG=libero_privileged WORKDIR=runs/libero_priv bash scripts/eval/libero_cpu_e2e.sh
#   DATA_DIRS="runs/libero_e2e/data" ...                                 # reuse collected demos (space-separated)
#
# beingh's main venv (python on PATH, or MAIN_PYTHON) trains and serves; the LIBERO venv collects and evaluates.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "${REPO}"
LIBERO_VENV=${LIBERO_VENV:-${REPO}/.venv-libero}
MAIN_PYTHON=${MAIN_PYTHON:-python}
WORKDIR=${WORKDIR:-runs/libero_e2e}
DATA_CONFIG=${DATA_CONFIG:-libero_nonorm}       # libero_privileged: + bowl and plate positions as state
COLLECT_TASKS=${COLLECT_TASKS:-0,1,2,3}
EPISODES=${EPISODES:-10}                        # expert demos per task
DATA_DIRS=${DATA_DIRS:-}                        # existing demo datasets instead of collecting
EVAL_TASKS=${EVAL_TASKS:-0,1,2,3}
EVAL_EPISODES=${EVAL_EPISODES:-10}              # per task, the suite's fixed initial states 0..N-1
CAMERA_SIZE=${CAMERA_SIZE:-128}                 # rendered camera resolution (collection and evaluation)
IMAGE_SIZE=${IMAGE_SIZE:-56}                    # model input (56 px -> 4 tokens per view)
STEPS=${STEPS:-4000}
HIDDEN=${HIDDEN:-128}
PORT=${PORT:-8765}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=${REPO}
mkdir -p "${WORKDIR}"
declare -A SECONDS_OF

stage() {  # stage NAME COMMAND...: run and time one stage
  local name=$1 start
  shift
  start=$(date +%s)
  echo "== ${name}: $*"
  "$@"
  SECONDS_OF[${name}]=$(( $(date +%s) - start ))
}

if [ -z "${DATA_DIRS}" ]; then
  DATA_DIRS="${WORKDIR}/data"
  if [ ! -d "${DATA_DIRS}" ]; then
    stage collect "${LIBERO_VENV}/bin/beingh" demo collect --env libero --suite libero_spatial \
      --tasks "${COLLECT_TASKS}" --episodes "${EPISODES}" --out "${DATA_DIRS}" --image_size "${CAMERA_SIZE}"
  fi
fi

"${MAIN_PYTHON}" - "${WORKDIR}" "${IMAGE_SIZE}" "${HIDDEN}" "${DATA_CONFIG}" ${DATA_DIRS} <<'PY'
import sys
from pathlib import Path

import yaml

from beingh.data.tokenizer import build_tiny_tokenizer
from beingh.model.tiny import tiny_config, write_tiny_internvl_folder, write_tiny_qwen3_folder

work, image_size, hidden, data_config, *datasets = sys.argv[1:]
work, image_size, hidden = Path(work), int(image_size), int(hidden)
config = tiny_config(llm={"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2},
                     expert={"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2},
                     vit={"hidden_size": 64, "intermediate_size": 128}, force_image_size=image_size)
build_tiny_tokenizer(write_tiny_internvl_folder(work / "models/tiny_internvl", config, image_size=image_size))
write_tiny_qwen3_folder(work / "models/tiny_qwen3", config, seed=1)
(work / "dataset.yaml").write_text(yaml.safe_dump({"libero_demo": {
    "dataset_names": [str(Path(d).resolve()) for d in datasets], "data_config_names": data_config,
    "embodiment_tags": "libero", "sampling_strategy": "step", "weight": 1.0}}, sort_keys=False))
PY

stage train "${MAIN_PYTHON}" -m beingh.train --dataset_config_file "${WORKDIR}/dataset.yaml" \
  --output_dir "${WORKDIR}/train" --mllm_path "${WORKDIR}/models/tiny_internvl" \
  --expert_path "${WORKDIR}/models/tiny_qwen3" --max_steps "${STEPS}" --learning_rate 1e-3 --warmup_ratio 0.03 \
  --save_steps "${STEPS}" --save_steps_start 0 --logging_steps $(( STEPS / 50 > 0 ? STEPS / 50 : 1 )) \
  --force_image_size "${IMAGE_SIZE}" --max_num_tokens 1024 --max_num_tokens_per_sample 1024 \
  --expected_num_tokens 1024 --prefer_buffer_before 512 --num_inference_timesteps 4 --prompt_template short \
  --use_mpg False --num_workers 1 --prefetch_factor 2 --seed 0 --weight_decay 0.0
CHECKPOINT=$(ls -d "${WORKDIR}"/train/[0-9]* | sort | tail -1)

"${MAIN_PYTHON}" -m beingh.cli serve --model_path "${CHECKPOINT}" --data_config_name "${DATA_CONFIG}" \
  --dataset_name libero_demo --embodiment_tag libero --instruction_template short --device cpu \
  --no-enable_rtc --host 127.0.0.1 --port "${PORT}" > "${WORKDIR}/serve.log" 2>&1 &
SERVER_PID=$!
trap 'kill ${SERVER_PID} 2>/dev/null || true' EXIT
until "${LIBERO_VENV}/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', ${PORT}), 1)" 2>/dev/null; do
  kill -0 "${SERVER_PID}" 2>/dev/null || { echo "beingh serve exited, see ${WORKDIR}/serve.log" >&2; exit 1; }
  sleep 2
done

stage eval "${LIBERO_VENV}/bin/beingh" eval --env libero --policy "ws://127.0.0.1:${PORT}" \
  --suite libero_spatial --tasks "${EVAL_TASKS}" --episodes "${EVAL_EPISODES}" --resolution "${CAMERA_SIZE}" \
  --output "${WORKDIR}/eval/results.json" --video_dir "${WORKDIR}/eval/videos"

echo "== wall time per stage (s):"
for name in collect train eval; do
  [ -n "${SECONDS_OF[${name}]:-}" ] && echo "  ${name}: ${SECONDS_OF[${name}]}"
done
echo "results: ${WORKDIR}/eval/results.json"
