#!/usr/bin/env bash
# Gradual unfreezing on MiniLM-L6 for Figs. 1, 2, 4 and 5 (docs/results.md): GU and GU with
# restart (configs/<task>_gu.py, <task>_gu_restart.py: AdamW with bias correction, 3 epochs
# per iteration, L + 1 = 7 iterations) at the main study's learning rate, so that
# GU-restart's last iteration is the study's AdamW run. SEEDS as in experiments/seeds.sh
# (a count N, or "2 4", "3-5"; one seed: "7-7"). Each seed runs both modes before the next
# seed starts; rerunning skips finished seeds and resumes the unfinished one. OUT (default
# runs/study_gu) is kept apart from the Table 1 folders.
#   GLUE_DIR=../shared/glue bash experiments/gradual_unfreezing.sh TASK LEARNING_RATE \
#     SEEDS [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
task="$1" lr="$2" seeds="$3" out="${4:-runs/study_gu}"
source experiments/seeds.sh
seeds="$(expand_seeds "$seeds")"
for seed in $seeds; do
  for mode in gu gu_restart; do
    python -m cwgnc_jax.study --config "${task}_${mode}" --seeds "$seed-$seed" \
      --config.model=minilm-l6 --config.optimizer.learning_rate="$lr" \
      --config.eval_batch_size=64 --config.progress=false --out "$out"
  done
done
