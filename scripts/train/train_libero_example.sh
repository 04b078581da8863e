#!/usr/bin/env bash
# Single-embodiment post-training on the four LIBERO suites (reference/TRAINING_GUIDE.md).
#
#   MLLM_PATH=/models/InternVL3_5-2B EXPERT_PATH=/models/Qwen3-0.6B \
#   RESUME_FROM=/models/Being-H05-2B OUTPUT_DIR=/ckpt/libero BEINGH_DATA_ROOT=/data NPROC=4 \
#   bash scripts/train/train_libero_example.sh [extra args, e.g. --max_steps 1000]
#
# Leave RESUME_FROM empty to pretrain from the InternVL backbone (random action expert).
# The trainer writes ${OUTPUT_DIR}/training.log itself (tail -f it); the full console goes to console.log.
# Multi-node: set NNODES, NODE_RANK and MASTER_ADDR on every node (OUTPUT_DIR must be shared).
set -euo pipefail

MLLM_PATH=${MLLM_PATH:?set MLLM_PATH to the InternVL3_5-2B folder}
EXPERT_PATH=${EXPERT_PATH:?set EXPERT_PATH to the Qwen3-0.6B folder}
RESUME_FROM=${RESUME_FROM-}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/libero_posttrain}
DATASET_CONFIG=${DATASET_CONFIG:-configs/posttrain/libero/libero_all.yaml}
NPROC=${NPROC:-4}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29106}

RESUME_ARGS=()
if [[ -n "${RESUME_FROM}" ]]; then
  RESUME_ARGS=(--resume_from "${RESUME_FROM}" --resume_model_only True)
fi

mkdir -p "${OUTPUT_DIR}"
cp "$0" "${OUTPUT_DIR}/"
export PYTHONPATH=${PYTHONPATH:-.}

torchrun --nnodes="${NNODES}" --node_rank="${NODE_RANK}" --nproc_per_node="${NPROC}" \
  --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}" \
  -m beingh.train \
  --mllm_path "${MLLM_PATH}" \
  --expert_path "${EXPERT_PATH}" \
  "${RESUME_ARGS[@]}" \
  --dataset_config_file "${DATASET_CONFIG}" \
  --output_dir "${OUTPUT_DIR}" \
  --max_steps 60000 \
  --learning_rate 1e-4 \
  --weight_decay 1e-5 \
  --warmup_ratio 0.05 \
  --lr_scheduler cosine \
  --save_steps 10000 \
  --save_steps_start 25000 \
  --logging_steps 10 \
  --gradient_accumulation_steps 1 \
  --max_num_tokens 8704 \
  --max_num_tokens_per_sample 8704 \
  --expected_num_tokens 8192 \
  --prefer_buffer_before 4096 \
  --max_buffer_size 4 \
  --num_workers 12 \
  --prefetch_factor 8 \
  --force_image_size 224 \
  --down_sample_ratio 0.5 \
  --use_flow_matching True \
  --use_expert True \
  --layer_module Qwen3MoTDecoderLayer \
  --conv_style being_h0 \
  --action_chunk_length 16 \
  --use_mpg True \
  --mpg_lambda 0.1 \
  --mpg_num_projections 32 \
  --mpg_refinement_iters 1 \
  --mpg_gate_temperature 1.0 \
  --mpg_use_stop_gradient True \
  --use_training_time_rtc False \
  --save_merged_metadata True \
  "$@" 2>&1 | tee -a "${OUTPUT_DIR}/console.log"
