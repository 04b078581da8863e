#!/usr/bin/env bash
# RoboCasa evaluation: start `beingh serve` on a RoboCasa checkpoint, then run the RoboCasa client against it.
# Needs robosuite + robocasa (and its kitchen assets) in the client's environment.
# Edit the variables below (or export them) before running: bash scripts/eval/eval-robocasa.sh
set -euo pipefail

MODEL_PATH=${MODEL_PATH:-/path/to/Being-H05-2B_robocasa}   # checkpoint folder
DATASET_NAME=${DATASET_NAME:-robocasa_human_posttrain}      # metadata group: experiment_cfg/<name>_metadata.json
TASKS=${TASKS:-}                                            # comma-separated; empty = the 24 single-stage tasks
NUM_TRIALS=${NUM_TRIALS:-50}
PORT=${PORT:-8001}
DEVICE=${DEVICE:-cuda:0}
OUTPUT_DIR=${OUTPUT_DIR:-results/robocasa}

export MUJOCO_GL=${MUJOCO_GL:-egl}
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
mkdir -p "${OUTPUT_DIR}"

beingh serve --model_path "${MODEL_PATH}" --data_config_name robocasa_human --dataset_name "${DATASET_NAME}" \
  --embodiment_tag robocasa --device "${DEVICE}" --no-enable-rtc --port "${PORT}" &
SERVER_PID=$!
trap 'kill ${SERVER_PID}' EXIT
until curl -sf "http://127.0.0.1:${PORT}/healthz" >/dev/null; do
  kill -0 ${SERVER_PID} || { echo "policy server exited" >&2; exit 1; }
  sleep 2
done

beingh eval --env robocasa --policy "ws://127.0.0.1:${PORT}" ${TASKS:+--tasks "${TASKS}"} \
  --num_trials "${NUM_TRIALS}" --execute_steps 8 --max_steps 720 --output "${OUTPUT_DIR}/results.json"
