# Environment for every launcher script, in one place (sourced). Override any value before launching.
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}            # models and data load from local paths only
# NCCL: fail fast instead of hanging when a rank disappears; pick the network interface on clusters
# whose default route is not the fast fabric (e.g. NCCL_SOCKET_IFNAME=ib0 or eth0).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
[ -n "${NCCL_SOCKET_IFNAME:-}" ] && export NCCL_SOCKET_IFNAME
[ -n "${NCCL_IB_DISABLE:-}" ] && export NCCL_IB_DISABLE
# gloo (CPU runs) picks its interface from GLOO_SOCKET_IFNAME the same way.
[ -n "${GLOO_SOCKET_IFNAME:-}" ] && export GLOO_SOCKET_IFNAME
true
