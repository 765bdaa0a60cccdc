#!/usr/bin/env bash
# Multi-node run from ONE command over ssh/pdsh (the deepspeed launcher's normal mode).
#   launch/hostfile.sh HOSTFILE RECIPE [embedtrain args]
# HOSTFILE lines: "node1 slots=8" (slots = GPUs). Needs pdsh on this node, passwordless ssh to every
# node (this one included: pdsh starts every rank over ssh), and the same paths on every node.
# MASTER_PORT (default 29500) is used; the master address is the first host's `hostname -I`.
set -euo pipefail
hostfile=${1:?usage: launch/hostfile.sh HOSTFILE RECIPE [args]}
recipe=${2:?usage: launch/hostfile.sh HOSTFILE RECIPE [args]}
shift 2
[ -f "$hostfile" ] || { echo "launch/hostfile.sh: no hostfile at $hostfile" >&2; exit 2; }
command -v pdsh > /dev/null || { echo "launch/hostfile.sh: pdsh is not installed (the deepspeed launcher starts \
the nodes with it); install it, or run launch/node.sh on every node instead" >&2; exit 2; }
# shellcheck source=env.sh
source "$(dirname "$0")/env.sh"
# Remote shells get only what deepspeed exports: PYTHON* and the lines of its environment file. Ours is
# a temporary file that keeps a user's own ~/.deepspeed_env and ./.deepspeed_env lines (deepspeed
# would read those) and adds the launch environment; ./.deepspeed_env itself is left untouched.
name=${DS_ENV_FILE:-.deepspeed_env}
envfile=$(mktemp "${TMPDIR:-/tmp}/embedtrain-dsenv.XXXXXX")
for f in "$HOME/$name" "./$name"; do
  if [ -f "$f" ]; then grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$f" >> "$envfile" || true; fi
done
env | grep -E '^(NCCL_|TORCH_NCCL_|TORCH_DISTRIBUTED_|GLOO_|EMBEDTRAIN_|OMP_NUM_THREADS=|HF_HUB_OFFLINE=|HF_HOME=|TOKENIZERS_PARALLELISM=)' \
  >> "$envfile" || true
export DS_ENV_FILE=$envfile
exec deepspeed --hostfile "$hostfile" --master_port "${MASTER_PORT:-29500}" --module embedtrain train "$recipe" "$@"
