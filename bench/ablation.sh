#!/usr/bin/env bash
# Ablation and learning curves (issue 13): the InfoNCE quickstart (recipes/quickstart/smollm2_wordnet.yaml:
# SmolLM2-135M-Instruct, mean pooling, LoRA r16, tau 0.02, one co-hyponym negative, 60 steps x 16) with one
# setting changed per run, plus the anchor (stage I + II) and compression quickstarts, and the compression
# recipe on requests from the ten-task set (recipes/cpu/compression_mix.yaml; needs data/trainset). Every run logs
# held-out retrieval every 20 steps (the curve), is exported, and is scored by `embedtrain eval --suite`
# on the eight offline-suite tasks. Runs one at a time (two torch processes on 2 cores stall each other).
#   bash bench/ablation.sh WORK [NAME ...]      (default: every run below; finished runs are skipped)
# then: python bench/ablation_report.py --work WORK --out bench/results/ablation_YYYYMMDD
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:?usage: bench/ablation.sh WORK [NAME ...]}
shift
SUITE=${SUITE:-data/suite}
QS=recipes/quickstart/smollm2_wordnet.yaml
TASKS=(EmbedtrainDebianRetrieval EmbedtrainFoldocRetrieval EmbedtrainGcideRetrieval EmbedtrainWordNetReranking
       EmbedtrainLeeSTS EmbedtrainDebianSectionClassification EmbedtrainWordNetClustering EmbedtrainFoldocClustering)
CURVE=(--set eval.every_steps=20)
WALIGN=${WALIGN:-384}  # *_walign: L_align as the squared distance summed over the teacher's 384 dims
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
mkdir -p "$WORK"

score() {  # score NAME RUN_DIR: export the run and score the export on the suite
  local scored="$WORK/$1.export"
  embedtrain export "$2" "$scored"
  embedtrain eval "$scored" --suite "$SUITE" --output "$WORK/$1.eval" --tasks "${TASKS[@]}"
}

infonce() {  # infonce NAME [--set k=v ...]: the quickstart with overrides
  local name=$1
  shift
  embedtrain train "$QS" --set run.output_dir="$WORK/$name" "${CURVE[@]}" "$@"
  score "$name" "$WORK/$name"
}

run_one() {
  case $1 in
    reference) infonce reference ;;
    pool_last) infonce pool_last --set model.pooling=last ;;
    bidirectional)
      [ -f "$WORK/bidirectional/final/embedtrain.json" ] || embedtrain train "$QS" "${CURVE[@]}" \
        --set run.output_dir="$WORK/bidirectional" --set model.attention=bidirectional
      score bidirectional "$WORK/bidirectional" ;;
    full_ft) infonce full_ft --set model.lora.enabled=false --set train.lr=5e-5 ;;
    tau_0.05) infonce tau_0.05 --set objective.infonce.temperature=0.05 ;;
    no_hard_neg) infonce no_hard_neg --set data.max_negatives=0 ;;
    mined_neg)  # the co-hyponyms replaced by negatives mined with the untrained base (mean pooling)
      [ -f "$WORK/mined.jsonl" ] || embedtrain mine recipes/quickstart/data/train.jsonl \
        models/smollm2-135m-instruct "$WORK/mined.jsonl" --range 10-50 --num 3 --max-length 64
      infonce mined_neg --set "data.train=[$WORK/mined.jsonl]" ;;
    anchor_eos|anchor_mean)  # stage I (reconstruction, EOS anchor, shared) then stage II from its weights
      [ -f "$WORK/anchor_stage1/final/embedtrain.json" ] || embedtrain train recipes/quickstart/anchor_stage1.yaml \
        --set run.output_dir="$WORK/anchor_stage1"
      local pooling=last
      [ "$1" = anchor_mean ] && pooling=mean
      embedtrain train recipes/quickstart/anchor_stage2.yaml --set run.output_dir="$WORK/$1" "${CURVE[@]}" \
        --set model.init_from="$WORK/anchor_stage1" --set model.pooling=$pooling  # both explicit: the shipped stage II pools the mean
      score "$1" "$WORK/$1" ;;
    compression|compression_walign)  # the quickstart with L_align weighted 1 (the paper's) or 384
      local weight=1
      [ "$1" = compression_walign ] && weight=$WALIGN
      embedtrain generate recipes/quickstart/compression.yaml --set generate.output_dir="$WORK/generated"
      embedtrain train recipes/quickstart/compression.yaml --set run.output_dir="$WORK/$1" "${CURVE[@]}" \
        --set "data.train=[$WORK/generated]" --set "objective.compression.w_align=$weight"
      score "$1" "$WORK/$1" ;;
    compression_mix|compression_mix_walign|compression_mix_self)  # 900 requests from the ten-task set
      [ -f data/compression_queries/queries.jsonl ] || python recipes/cpu/build_compression_queries.py data/trainset \
        data/compression_queries
      local weight=1 generated="$WORK/generated_mix" teacher=()
      [ "$1" = compression_mix_walign ] && weight=$WALIGN  # the shipped recipe
      if [ "$1" = compression_mix_self ]; then  # the paper's kind of teacher: the same backbone, untrained
        generated="$WORK/generated_mix_self"
        teacher=(--set teacher.path=models/smollm2-135m-instruct --set teacher.kind=hf --set teacher.pooling=mean
                 --set teacher.attention=causal)
      fi
      embedtrain generate recipes/cpu/compression_mix.yaml --set generate.output_dir="$generated" "${teacher[@]}"
      embedtrain train recipes/cpu/compression_mix.yaml --set run.output_dir="$WORK/$1" \
        --set "data.train=[$generated]" "${teacher[@]}" --set "objective.compression.w_align=$weight"
      score "$1" "$WORK/$1" ;;
    *) echo "unknown run $1" >&2; return 2 ;;
  esac
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(reference bidirectional full_ft tau_0.05 no_hard_neg mined_neg anchor_eos anchor_mean
                                 compression pool_last compression_walign compression_mix compression_mix_walign
                                 compression_mix_self)
for name in "${names[@]}"; do
  if [ -f "$WORK/$name.eval/scores.json" ]; then echo "ablation: $name done, skipped"; continue; fi
  echo "ablation: $name starts $(date -u +%H:%M:%S)"
  start=$SECONDS
  run_one "$name" > "$WORK/$name.log" 2>&1 || { echo "ablation: $name FAILED (see $WORK/$name.log)"; continue; }
  echo "ablation: $name done in $((SECONDS - start)) s"
done
