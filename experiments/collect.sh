#!/usr/bin/env bash
# Copies into DEST (default docs/results/runs) what the results keep of the finished runs
# under RUNS_DIR: each run folder holding results.json gives its results.json, config.json and
# grad_norms.npz (if any), each study group with a finished seed its summary.json. Checkpoints,
# metrics.jsonl and TensorBoard logs stay behind (large, and the report reads none of them);
# unfinished seeds, and groups with none finished yet, are skipped. Paths below RUNS_DIR are kept, so `cp -r DEST/* runs/` restores a study.
#   bash experiments/collect.sh runs [docs/results/runs]
set -euo pipefail
dest="$(realpath -m "${2:-$(dirname "$0")/../docs/results/runs}")"
cd "$1"
{
  find . -name summary.json | while read -r summary; do
    if compgen -G "$(dirname "$summary")/*/results.json" > /dev/null; then echo "$summary"; fi
  done
  find . -name results.json | while read -r results; do
    run="$(dirname "$results")"
    for file in results.json config.json grad_norms.npz; do
      if [ -f "$run/$file" ]; then echo "$run/$file"; fi  # not &&: a last miss would fail the loop
    done
  done
} | sort | while read -r file; do
  mkdir -p "$dest/$(dirname "$file")"
  cp -p "$file" "$dest/$file"
done
