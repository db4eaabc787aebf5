# Sourced by the experiment scripts. `expand_seeds SEEDS` prints the seeds one per line,
# reading SEEDS as `python -m cwgnc_jax.study --seeds` does: a count N (seeds 1..N), or seeds
# and ranges ("3,5,7-9"; spaces work as commas, "2 4"; one seed alone is "7-7", since "7" is a
# count). A bad SEEDS stops the script with the study's one-line error (exit 2).
expand_seeds() {
  python -c '
import sys
from cwgnc_jax.study import ConfigError, parse_seeds
try:
  print(*parse_seeds(",".join(sys.argv[1].replace(",", " ").split())), sep="\n")
except ConfigError as e:
  print(f"SEEDS: {e}", file=sys.stderr)
  sys.exit(2)
' "$1"
}

# `study_seed CONFIG SEED LR EPOCHS OUT [--config.KEY=VALUE ...]` trains one seed of one
# group as every MiniLM-L6 study script here does (the extra overrides after the shared ones,
# the order the existing group folders were named in).
study_seed() {
  local config="$1" seed="$2" lr="$3" epochs="$4" out="$5"
  shift 5
  python -m cwgnc_jax.study --config "$config" --seeds "$seed-$seed" \
    --config.model=minilm-l6 --config.optimizer.learning_rate="$lr" \
    --config.num_epochs="$epochs" --config.eval_batch_size=64 --config.progress=false \
    "$@" --out "$out"
}

# `study_groups SEEDS LR EPOCHS OUT GROUP...` trains every GROUP ("CONFIG [--config.KEY=VALUE
# ...]") for the first seed, then every GROUP for the next: an interrupted study has (nearly)
# as many seeds per group, and rerunning skips finished seeds and resumes the unfinished one.
study_groups() {
  local seeds lr="$2" epochs="$3" out="$4" seed group config extra
  seeds="$(expand_seeds "$1")"
  shift 4
  for seed in $seeds; do
    for group in "$@"; do
      read -r config extra <<< "$group"
      # shellcheck disable=SC2086  # the group's overrides, one word each
      study_seed "$config" "$seed" "$lr" "$epochs" "$out" $extra
    done
  done
}
