#!/usr/bin/env bash
# Multi-node run from ONE command over ssh/pdsh (the deepspeed launcher's normal mode).
#   launch/hostfile.sh HOSTFILE RECIPE [embedtrain args]
# HOSTFILE lines: "node1 slots=8" (slots = GPUs). Passwordless ssh between nodes is required, and the
# same paths on every node. MASTER_PORT (default 29500) and EMBEDTRAIN_* variables are forwarded via
# the .deepspeed_env file deepspeed reads from the working directory.
set -euo pipefail
hostfile=${1:?usage: launch/hostfile.sh HOSTFILE RECIPE [args]}
recipe=${2:?usage: launch/hostfile.sh HOSTFILE RECIPE [args]}
shift 2
# shellcheck source=env.sh
source "$(dirname "$0")/env.sh"
env | grep -E '^(NCCL_|EMBEDTRAIN_|OMP_NUM_THREADS|HF_HUB_OFFLINE|TOKENIZERS_PARALLELISM)' > .deepspeed_env || true
exec deepspeed --hostfile "$hostfile" --master_port "${MASTER_PORT:-29500}" --module embedtrain train "$recipe" "$@"
