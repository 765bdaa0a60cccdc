#!/usr/bin/env bash
# Matryoshka quality (issue 16): the InfoNCE quickstart (recipes/quickstart/smollm2_wordnet.yaml, SmolLM2-135M,
# hidden 576) trained as shipped and with objective.infonce.matryoshka_dims [576, 288, 144, 72]; each export
# scored by `embedtrain eval --suite` on the eight offline-suite tasks at the full 576 dimensions and at
# 144 (1/4) and 72 (1/8). Runs one at a time (two torch processes on 2 cores stall each other).
#   bash bench/matryoshka.sh WORK          (finished steps are skipped)
# then: python bench/matryoshka_report.py --work WORK --out bench/results/matryoshka_YYYYMMDD
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:?usage: bench/matryoshka.sh WORK}
SUITE=${SUITE:-data/suite}
QS=recipes/quickstart/smollm2_wordnet.yaml
TASKS=(EmbedtrainDebianRetrieval EmbedtrainFoldocRetrieval EmbedtrainGcideRetrieval EmbedtrainWordNetReranking
       EmbedtrainLeeSTS EmbedtrainDebianSectionClassification EmbedtrainWordNetClustering EmbedtrainFoldocClustering)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
mkdir -p "$WORK"

for name in plain matryoshka; do
  sets=(--set run.output_dir="$WORK/$name" --set run.progress_bar=false)
  [ "$name" = matryoshka ] && sets+=(--set "objective.infonce.matryoshka_dims=[576,288,144,72]")
  [ -f "$WORK/$name/final/embedtrain.json" ] || embedtrain train "$QS" "${sets[@]}"
  [ -f "$WORK/$name.export/embedtrain.json" ] || embedtrain export "$WORK/$name" "$WORK/$name.export"
  for dim in 576 144 72; do
    [ -f "$WORK/$name.eval$dim/scores.json" ] || embedtrain eval "$WORK/$name.export" --suite "$SUITE" \
      --output "$WORK/$name.eval$dim" --dim "$dim" --tasks "${TASKS[@]}"
  done
done
