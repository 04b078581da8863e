#!/usr/bin/env bash
# LIBERO evaluation: start `beingh serve` on a LIBERO checkpoint, then run the LIBERO client against it.
# Needs LIBERO (pip install hf-libero, plus its scene assets) in the client's environment.
# Edit the variables below (or export them) before running: bash scripts/eval/eval-libero.sh
set -euo pipefail

MODEL_PATH=${MODEL_PATH:-/path/to/Being-H05-2B_libero}   # checkpoint folder
DATASET_NAME=${DATASET_NAME:-libero_posttrain}          # metadata group: experiment_cfg/<name>_metadata.json
TASK_SUITE=${TASK_SUITE:-libero_spatial}                # libero_spatial | libero_object | libero_goal | libero_10 | libero_90
NUM_TRIALS=${NUM_TRIALS:-50}                            # trials per task
PORT=${PORT:-8000}
DEVICE=${DEVICE:-cuda:0}
OUTPUT_DIR=${OUTPUT_DIR:-results/libero/${TASK_SUITE}}

export MUJOCO_GL=${MUJOCO_GL:-egl}
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
mkdir -p "${OUTPUT_DIR}"

# The original protocol: libero_nonorm data config, tag libero, no RTC (chunks are executed open loop, 8 of 16).
beingh serve --model_path "${MODEL_PATH}" --data_config_name libero_nonorm --dataset_name "${DATASET_NAME}" \
  --embodiment_tag libero --device "${DEVICE}" --no-enable-rtc --port "${PORT}" &
SERVER_PID=$!
trap 'kill ${SERVER_PID}' EXIT
until curl -sf "http://127.0.0.1:${PORT}/healthz" >/dev/null; do
  kill -0 ${SERVER_PID} || { echo "policy server exited" >&2; exit 1; }
  sleep 2
done

beingh eval --env libero --policy "ws://127.0.0.1:${PORT}" --task_suite "${TASK_SUITE}" \
  --num_trials "${NUM_TRIALS}" --execute_steps 8 --seed 41 --output "${OUTPUT_DIR}/results.json"
