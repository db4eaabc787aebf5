#!/usr/bin/env bash
# Issue 16's re-run: AdamW and CWGNC on CoLA at lr 1e-4 (OUT_MAIN) and 2e-4 (OUT_HARSH) with
# transformers' AdamW (optimizer.adam_form=transformers, the default since 6804ffd), beside
# the groups trained with optax's Adam (no adam_form key in their config.json). The form is
# passed explicitly so the new groups get their own folders next to the old ones. Each seed
# goes through the four groups before the next starts, so a stopped run leaves (nearly)
# equal seed counts; rerunning skips finished seeds and resumes a started one.
#   GLUE_DIR=../shared/glue bash experiments/adam_form_rerun.sh SEEDS [OUT_MAIN] [OUT_HARSH]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="$1" out_main="${2:-runs/study}" out_harsh="${3:-runs/study_lr2e-4}"
source experiments/seeds.sh
seeds="$(expand_seeds "$seeds")"
for seed in $seeds; do
  for lr in 1e-4 2e-4; do
    out="$out_main"; [ "$lr" = 2e-4 ] && out="$out_harsh"
    for method in adamw cwgnc; do
      python -m cwgnc_jax.study --config "cola_${method}" --seeds "$seed-$seed" \
        --config.model=minilm-l6 --config.optimizer.learning_rate="$lr" \
        --config.optimizer.adam_form=transformers --config.num_epochs=3 \
        --config.eval_batch_size=64 --config.progress=false --out "$out"
    done
  done
done
