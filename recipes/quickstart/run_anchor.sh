#!/usr/bin/env bash
# Quickstart of the two-stage Anchor Embedding pipeline on CPU: stage I (reconstruction), then
# stage II (InfoNCE + LoRA) starting from stage I's weights. Extra arguments go to both stages.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=models/smollm2-135m-instruct
if [ ! -f "$MODEL/model.safetensors" ]; then
  embedtrain convert-gguf "$MODEL"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
embedtrain train recipes/quickstart/anchor_stage1.yaml "$@"
embedtrain train recipes/quickstart/anchor_stage2.yaml "$@"
