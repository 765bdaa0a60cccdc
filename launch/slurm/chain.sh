#!/usr/bin/env bash
# Submit recipes as a chain: each starts when the previous one finished successfully (requeues of a job
# keep its id, so a preempted stage I still gates stage II).
#   launch/slurm/chain.sh [sbatch options --] RECIPE1 RECIPE2 ...
#   e.g. launch/slurm/chain.sh --nodes 2 --gpus-per-node 8 --time 12:00:00 -- \
#          recipes/anchor/llama-3.2-1b/stage1.yaml recipes/anchor/llama-3.2-1b/stage2.yaml
set -euo pipefail
opts=()
if [[ " $* " == *" -- "* ]]; then
  while [ "$1" != "--" ]; do opts+=("$1"); shift; done
  shift
fi
here=$(dirname "$0")
dep=()
for recipe in "$@"; do
  id=$(sbatch --parsable "${opts[@]}" "${dep[@]}" "$here/train.sbatch" "$recipe")
  echo "submitted $recipe as job $id${dep:+ (after ${dep[0]#--dependency=afterok:})}"
  dep=("--dependency=afterok:$id")
done
