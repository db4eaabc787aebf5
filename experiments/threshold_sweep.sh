#!/usr/bin/env bash
# The threshold sweep of Table 2 on MiniLM-L6 (docs/results.md): CWGNC on one task with the
# clipping threshold c taken from THRESHOLDS (the released sweep is 0.01 0.05 0.1 0.5 1 5 1e5;
# c = 0.05 is the main study's cwgnc row, run by experiments/study.sh). SEEDS as in
# experiments/seeds.sh (a count N, or "2 4", "3-5"; one seed: "7-7"). Each seed goes through
# all thresholds before the next seed starts, so an interrupted sweep has (nearly) as many
# seeds per threshold; rerunning skips finished seeds and resumes the unfinished one.
#   GLUE_DIR=../shared/glue bash experiments/threshold_sweep.sh TASK LEARNING_RATE EPOCHS \
#     SEEDS "0.01 0.1 0.5 1 5"
set -euo pipefail
cd "$(dirname "$0")/.."
task="$1" lr="$2" epochs="$3" seeds="$4" thresholds="$5"
source experiments/seeds.sh
groups=()
for c in $thresholds; do
  groups+=("${task}_cwgnc --config.optimizer.clip_norm=$c")
done
study_groups "$seeds" "$lr" "$epochs" runs/study "${groups[@]}"
