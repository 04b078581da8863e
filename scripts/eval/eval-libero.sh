#!/usr/bin/env bash
# LIBERO evaluation: `beingh serve` on a LIBERO checkpoint (beingh's main environment), and the LIBERO client in
# the LIBERO venv (`bash scripts/eval/setup_libero.sh` creates it; LIBERO's pins conflict with beingh's).
# Edit the variables below (or export them) before running: bash scripts/eval/eval-libero.sh
set -euo pipefail

MODEL_PATH=${MODEL_PATH:-/path/to/Being-H05-2B_libero}   # checkpoint folder
DATASET_NAME=${DATASET_NAME:-libero_posttrain}          # metadata group: experiment_cfg/<name>_metadata.json
TASK_SUITE=${TASK_SUITE:-libero_spatial}                # libero_spatial | libero_object | libero_goal | libero_10 | libero_90
TASKS=${TASKS:-}                                        # comma-separated task ids (default: all)
NUM_TRIALS=${NUM_TRIALS:-50}                            # trials per task (the suite's fixed initial states)
RESOLUTION=${RESOLUTION:-256}                           # camera resolution
PORT=${PORT:-8000}
DEVICE=${DEVICE:-cuda:0}
LIBERO_VENV=${LIBERO_VENV:-$(cd "$(dirname "$0")/../.." && pwd)/.venv-libero}
OUTPUT_DIR=${OUTPUT_DIR:-results/libero/${TASK_SUITE}}

mkdir -p "${OUTPUT_DIR}"
[ -x "${LIBERO_VENV}/bin/beingh" ] || { echo "no LIBERO venv at ${LIBERO_VENV}: bash scripts/eval/setup_libero.sh" >&2; exit 1; }

# The original protocol: libero_nonorm data config, tag libero, no RTC (chunks are executed open loop, 8 of 16).
beingh serve --model_path "${MODEL_PATH}" --data_config_name libero_nonorm --dataset_name "${DATASET_NAME}" \
  --embodiment_tag libero --device "${DEVICE}" --no-enable_rtc --port "${PORT}" &
SERVER_PID=$!
trap 'kill ${SERVER_PID}' EXIT
until curl -sf "http://127.0.0.1:${PORT}/healthz" >/dev/null; do
  kill -0 ${SERVER_PID} || { echo "policy server exited" >&2; exit 1; }
  sleep 2
done

"${LIBERO_VENV}/bin/beingh" eval --env libero --policy "ws://127.0.0.1:${PORT}" --suite "${TASK_SUITE}" \
  ${TASKS:+--tasks "${TASKS}"} --episodes "${NUM_TRIALS}" --resolution "${RESOLUTION}" --execute_steps 8 \
  --seed 41 --output "${OUTPUT_DIR}/results.json" --video_dir "${OUTPUT_DIR}/videos"
