#!/usr/bin/env bash
# The stability study on MiniLM-L6 (docs/results.md): AdamW with bias correction, BertAdam
# (no bias correction) and CWGNC (c = 0.05) on one task, the same learning rate and epochs
# for all three. SEEDS as in experiments/seeds.sh (a count N for seeds 1..N, or "2 4 6",
# "3-5"; one seed: "7-7"): two copies of this script with disjoint lists share one study
# folder, e.g. one process per CPU core. Each seed goes through the three methods before the
# next seed starts, so an interrupted study has (nearly) as many seeds per method; rerunning
# skips finished seeds and resumes the unfinished one from its checkpoint. OUT (default
# runs/study) is the study folder: one per setting, since cwgnc_jax.report makes one Table 1
# per folder.
#   GLUE_DIR=../shared/glue bash experiments/study.sh TASK LEARNING_RATE EPOCHS SEEDS [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
task="$1" lr="$2" epochs="$3" seeds="$4" out="${5:-runs/study}"
source experiments/seeds.sh
study_groups "$seeds" "$lr" "$epochs" "$out" "${task}_adamw" "${task}_bertadam" "${task}_cwgnc"
