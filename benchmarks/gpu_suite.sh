#!/usr/bin/env bash
# GPU figures at the full 2B shape (random bf16 weights), one JSON per run in benchmarks/results/:
#
#   bash benchmarks/gpu_suite.sh                      # one H100/H200: about 8 minutes
#   bash benchmarks/gpu_suite.sh --tiny               # the same stages on the CPU, tiny model (~1 minute)
#   bash benchmarks/gpu_suite.sh --stages policy_latency --results_dir /tmp/out   # redo one stage
#
# Stages: model_step, train_no_ckpt, train_ckpt, policy_latency, precision (see benchmarks/gpu_suite.py).
# Uses the `python3` on PATH (or $PYTHON); the repository needs no install, only torch and its deps.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" benchmarks/gpu_suite.py "$@"
