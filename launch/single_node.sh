#!/usr/bin/env bash
# Workstation: all local GPUs (or one CPU process per NPROC) on one node.
#   launch/single_node.sh RECIPE [embedtrain train args]      NPROC=2 to choose the process count
set -euo pipefail
recipe=${1:?usage: launch/single_node.sh RECIPE [args]}
shift
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
# shellcheck source=env.sh
source "$(dirname "$0")/env.sh"
if [ "$NPROC" = 1 ]; then
  exec embedtrain train "$recipe" "$@"
fi
exec torchrun --standalone --nproc_per_node "$NPROC" -m embedtrain train "$recipe" "$@"
