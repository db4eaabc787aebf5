"""Issue 16's re-run: transformers' AdamW (adam_form=transformers) against optax's Adam (the
earlier groups) for AdamW and CWGNC on CoLA at lr 1e-4 and 2e-4, on the seeds both have, and
CWGNC against AdamW within each form, with the report's tests (``report.tables.compare_scores``), as
Markdown rows; each seed's pair of scores in a comment line above its rows.

  python experiments/compare_adam_forms.py [RUNS_DIR]     # default docs/results/runs
"""

import json
import sys
from pathlib import Path

from cwgnc_jax import study
from cwgnc_jax.report import tables


def load(folder: Path, method: str, lr: str, form: str) -> dict[int, tuple[float, bool]]:
  """``{seed: (score, failed)}`` of the 3-epoch, default-threshold group (empty if none)."""
  for path in folder.glob(f"cola_{method}__*/summary.json"):
    name = path.parent.name
    if (f"learning_rate={lr}" in name and "clip_norm" not in name and "num_epochs=3" in name
        and ("adam_form=transformers" in name) == (form == "transformers")):
      return {r["seed"]: (r["score"], r["failed"])
              for r in json.loads(path.read_text())["runs"] if "score" in r}
  return {}


def row(name: str, a: dict, b: dict) -> str:
  scores = [[v[0] for v in runs.values()] for runs in (a, b)]
  failed = [[v[1] for v in runs.values()] for runs in (a, b)]
  cells = [tables.cell({"finished": len(x), **study.aggregate(x, f)})
           for x, f in zip(scores, failed)]
  return (f"| {name} | {cells[0]} | {cells[1]} | "
          f"{tables.compare_scores(*scores, *map(sum, failed))} |")


def main(runs: Path) -> None:
  print(f"| comparison | A | B | {tables.COMPARISON_COLUMNS} |\n" + "|---" * 10 + "|")
  for folder, lr in ((runs / "study", "0.0001"), (runs / "study_lr2e-4", "0.0002")):
    new = {m: load(folder, m, lr, "transformers") for m in ("adamw", "cwgnc")}
    old = {m: load(folder, m, lr, "optax") for m in ("adamw", "cwgnc")}
    for m in ("adamw", "cwgnc"):
      both = sorted(set(new[m]) & set(old[m]))  # the seeds both forms have
      if both:
        pairs = ", ".join(f"{s}: {new[m][s][0]:.2f} ({old[m][s][0]:.2f})" for s in both)
        print(f"<!-- lr {lr} {m} seed: transformers (optax): {pairs} -->")
        print(row(f"lr {lr}, {m}: transformers (A) vs optax (B), same seeds",
                  {s: new[m][s] for s in both}, {s: old[m][s] for s in both}))
    if new["cwgnc"] and new["adamw"]:
      print(row(f"lr {lr}, CWGNC (A) vs AdamW (B), transformers", new["cwgnc"], new["adamw"]))
      seeds = sorted(set(new["cwgnc"]) & set(new["adamw"]) & set(old["cwgnc"])
                     & set(old["adamw"]))
      print(row(f"lr {lr}, CWGNC (A) vs AdamW (B), optax, seeds {seeds}",
                {s: old["cwgnc"][s] for s in seeds}, {s: old["adamw"][s] for s in seeds}))


if __name__ == "__main__":
  main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/runs"))
