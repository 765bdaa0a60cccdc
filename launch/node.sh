#!/usr/bin/env bash
# One node of a multi-node run WITHOUT ssh: run this on every node with its own NODE_RANK.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 [MASTER_PORT=29500] [NPROC=8] launch/node.sh RECIPE [embedtrain args]
# Uses the deepspeed launcher's per-node mode (--no_ssh); LAUNCHER=torchrun uses torchrun instead.
# Every node must see the same recipe, data and model paths (shared filesystem or copies).
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
MASTER_PORT=${MASTER_PORT:-29500}
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
recipe=${1:?usage: launch/node.sh RECIPE [embedtrain train args]}
shift
# shellcheck source=env.sh
source "$(dirname "$0")/env.sh"
if [ "${LAUNCHER:-deepspeed}" = "torchrun" ]; then
  exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m embedtrain train "$recipe" "$@"
fi
# The deepspeed launcher takes the world's shape from a hostfile even without ssh; in --no_ssh mode
# the names are only labels (node_rank indexes the lines), so a generated one with NPROC slots per
# node serves unless HOSTFILE names a real one.
if [ -z "${HOSTFILE:-}" ]; then
  HOSTFILE=$(mktemp "${TMPDIR:-/tmp}/embedtrain-hostfile.XXXXXX")
  for ((i = 0; i < NNODES; i++)); do echo "node$i slots=$NPROC"; done > "$HOSTFILE"
fi
exec deepspeed --no_ssh --hostfile "$HOSTFILE" --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --module embedtrain train "$recipe" "$@"
