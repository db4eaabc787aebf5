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
