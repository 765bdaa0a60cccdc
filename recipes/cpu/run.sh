#!/usr/bin/env bash
# The longer CPU recipe end to end (about 50 minutes on 2 cores, plus ~2 minutes of downloads once):
# model conversion, offline suite and training set (both from Debian packages), training with
# evaluation every 30 steps, export, and the eight-task offline suite on the exported folder.
#   bash recipes/cpu/run.sh [--set key=value ...]     (arguments go to `embedtrain train`)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=models/smollm2-135m-instruct
[ -f "$MODEL/model.safetensors" ] || embedtrain convert-gguf "$MODEL"
[ -f data/suite/suite.json ] || embedtrain build-eval-suite data/suite --work-dir data/work
[ -f data/trainset/manifest.json ] || embedtrain build-train-set data/trainset --work data/work
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
embedtrain train recipes/cpu/smollm2_mix.yaml "$@"
embedtrain export runs/cpu-mix runs/cpu-mix/export
embedtrain eval runs/cpu-mix/export --suite data/suite --output runs/cpu-mix/export-eval --tasks \
  EmbedtrainDebianRetrieval EmbedtrainFoldocRetrieval EmbedtrainGcideRetrieval EmbedtrainWordNetReranking \
  EmbedtrainLeeSTS EmbedtrainDebianSectionClassification EmbedtrainWordNetClustering EmbedtrainFoldocClustering
