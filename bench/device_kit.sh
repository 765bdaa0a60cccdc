#!/usr/bin/env bash
# Wheels the GPU machine lacks, for bench/train_speed.py and tests/test_attention_cuda.py there
# (its image has torch 2.11, transformers, peft, but not deepspeed). Run here, in the repo root; the
# wheels land in .whl/ (git-ignored) and travel with `carry: [".whl"]`. On the machine, first:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# Versions are this repo's CPU-tested ones, so the GPU runs the same library code as CI.
set -euo pipefail
PY=${PY:-.venv/bin/python}
mkdir -p .whl
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# DeepSpeed is published as a source archive: build a pure-Python wheel (no compiled ops; ours uses
# torch's AdamW), no build isolation so it builds against the torch already installed here.
if ! ls .whl/deepspeed-*.whl >/dev/null 2>&1; then
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(ver deepspeed)"
fi
pure=(hjson annotated-types typing-inspection transformers peft huggingface-hub)
for name in "${pure[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl "$name==$(ver "$name")"
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "pydantic==$(ver pydantic)" "pydantic-core==$(ver pydantic_core)" "tokenizers==$(ver tokenizers)"
du -sh .whl && ls .whl
