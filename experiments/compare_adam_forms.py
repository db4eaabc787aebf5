"""Issue 16's re-run: transformers' AdamW (adam_form=transformers) against optax's Adam (the
earlier groups) for AdamW and CWGNC on CoLA at lr 1e-4 and 2e-4, on the seeds both have, and
CWGNC against AdamW within each form, with the report's tests (Brown-Forsythe from 3 seeds per
side, Welch from 2, Fisher), as Markdown rows; each seed's pair of scores in a comment line.

  python experiments/compare_adam_forms.py [RUNS_DIR]     # default docs/results/runs
"""
import json
import sys
from pathlib import Path
import numpy as np
from scipy import stats

def load(folder, method, lr, form):
  for s in Path(folder).glob(f"cola_{method}__*/summary.json"):
    name = s.parent.name
    if (f"learning_rate={lr}" in name and ("adam_form=transformers" in name) == (form == "transformers")
        and "clip_norm" not in name and "num_epochs=3" in name):
      return {r["seed"]: (r["score"], r["failed"])
              for r in json.loads(s.read_text())["runs"] if "score" in r}
  return {}

def p(x):
  return "-" if np.isnan(x) else "<0.001" if x < 1e-3 else f"{x:.3f}"

def row(name, a, b):
  sa, sb = np.array([v[0] for v in a.values()]), np.array([v[0] for v in b.values()])
  fa, fb = sum(v[1] for v in a.values()), sum(v[1] for v in b.values())
  with np.errstate(all="ignore"):
    bf = stats.levene(sa, sb, center="median").pvalue if min(len(sa), len(sb)) >= 3 else np.nan
    w = stats.ttest_ind(sa, sb, equal_var=False).pvalue if min(len(sa), len(sb)) >= 2 else np.nan
  fi = stats.fisher_exact([[fa, len(sa) - fa], [fb, len(sb) - fb]]).pvalue
  cell = lambda s, f: f"{np.std(s):.1f} / {np.mean(s):.1f} / {np.max(s):.1f} ({f}/{len(s)} failed)"
  print(f"| {name} | {cell(sa, fa)} | {cell(sb, fb)} | {np.mean(sa) - np.mean(sb):+.1f} | "
        f"{p(bf)} | {p(w)} | {p(fi)} |")

print("| comparison | A: Std / Mean / Max | B: Std / Mean / Max | mean A - B | p (spread, "
      "Brown-Forsythe) | p (means, Welch) | p (failures, Fisher) |\n" + "|---" * 7 + "|")
runs = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/runs")
for folder, lr in ((runs / "study", "0.0001"), (runs / "study_lr2e-4", "0.0002")):
  new = {m: load(folder, m, lr, "transformers") for m in ("adamw", "cwgnc")}
  old = {m: load(folder, m, lr, "optax") for m in ("adamw", "cwgnc")}
  for m in ("adamw", "cwgnc"):
    if new[m]:
      pairs = ", ".join(f"{s}: {new[m][s][0]:.2f} ({old[m][s][0]:.2f})" for s in sorted(new[m]))
      print(f"<!-- lr {lr} {m} seed: transformers (optax): {pairs} -->")
      row(f"lr {lr}, {m}: transformers (A) vs optax (B), same seeds", new[m],
          {s: old[m][s] for s in new[m]})
  if new["cwgnc"] and new["adamw"]:
    row(f"lr {lr}, CWGNC (A) vs AdamW (B), transformers", new["cwgnc"], new["adamw"])
    seeds = sorted(set(new["cwgnc"]) & set(new["adamw"]))
    row(f"lr {lr}, CWGNC (A) vs AdamW (B), optax, seeds {seeds}",
        {s: old["cwgnc"][s] for s in seeds}, {s: old["adamw"][s] for s in seeds})
