#!/usr/bin/env bash
# What a session with the GPU machine runs there (the `device` tool, from the repo root, with
# `carry: [".whl"]` made by bench/device_kit.sh): install the carried wheels, the CUDA attention tests,
# then the speed bench; arguments go to bench/train_speed.py (e.g. --workloads stage1).
# Everything lands in $OUT (the device tool's folder that comes back).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed: run bench/device_kit.sh here and carry .whl"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi -L
python3 -c "import torch, deepspeed, transformers, peft; print('torch', torch.__version__, 'deepspeed', \
deepspeed.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
if [ "${SKIP_ATTENTION_TEST:-0}" != 1 ]; then
    python3 -m pytest -q -rs -p no:cacheprovider tests/test_attention_cuda.py 2>&1 | tee "$OUT/attention_test.txt"
fi
python3 bench/train_speed.py --out-dir "$OUT" "$@" 2>&1 | tee "$OUT/train_speed.log"
