"""Writes docs/results.md's Table 1 section and its line of the Status table from the raw runs
committed under docs/results/runs/table1 (collected with experiments/collect.sh): each row's
seeds, spread and minutes per seed, the per-seed scores, and CWGNC against each baseline on
the seeds both have, with Holm's correction over every test the section shows.

  python experiments/table1_section.py           # rewrites docs/results.md
  python experiments/table1_section.py --check   # exits 1 when the page differs from the runs

tests/test_results_page.py runs the check, so the page says what its runs say.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from cwgnc_jax import stats  # pylint: disable=wrong-import-position
from cwgnc_jax.report import load, tables  # pylint: disable=wrong-import-position

RUNS = REPO / "docs" / "results" / "runs" / "table1"
RESULTS_PAGE = REPO / "docs" / "results.md"
TITLE = "## Table 1 at our scale (in progress)"
NEXT_TITLE = "## The equal-epoch ablation"
STATUS_ROW = "| Table 1 at each row's own protocol"
SEEDS = 10  # per group, the study's aim

ROW_NAMES = {"bertadam": "BertAdam", "adamw": "AdamW", "mixout": "Mixout",
             "mosbach": "Mosbach et al.", "cwgnc": "CWGNC"}
TASK_NAMES = {"cola": "CoLA", "rte": "RTE"}


class Setting(NamedTuple):
  """One group of the table: a row at a task, rate and number of epochs."""
  task: str
  row: str
  learning_rate: float
  epochs: int
  best_of: int  # evaluations kept the best of; 1: the final parameters

  @property
  def protocol(self) -> str:
    best = f", best of {self.best_of}" if self.best_of > 1 else ""
    return f"{ROW_NAMES[self.row]}, {self.epochs} epochs{best}"

  @property
  def place(self) -> str:
    return f"{TASK_NAMES[self.task]}, lr {self.learning_rate:.0e}".replace("e-0", "e-")


# The table's groups in the page's order: each row at its own protocol at the task's rate,
# then the harsh pair (RTE at lr 2e-4, 3 epochs for both).
SETTINGS = [
    *(Setting(task, row, rate, epochs, best_of)
      for task, rate in (("cola", 1e-4), ("rte", 2e-5))
      for row, epochs, best_of in (("bertadam", 3, 1), ("adamw", 3, 1), ("mixout", 20, 60),
                                   ("mosbach", 20, 60), ("cwgnc", 5, 1))),
    Setting("rte", "adamw", 2e-4, 3, 1), Setting("rte", "cwgnc", 2e-4, 3, 1),
]


def setting_of(summary: dict) -> Setting:
  config = summary["config"]
  best_of = config["num_epochs"] * config["evals_per_epoch"] if config["keep_best"] else 1
  return Setting(summary["task"], summary["method"], config["optimizer"]["learning_rate"],
                 config["num_epochs"], best_of)


def read_groups(runs: Path) -> dict[Setting, dict]:
  groups = {}
  for path in sorted(runs.glob("*/summary.json")):
    summary = json.loads(path.read_text())
    groups[setting_of(summary)] = summary
  unknown = sorted(s.place + " " + s.protocol for s in groups if s not in SETTINGS)
  if unknown:
    sys.exit(f"{runs}: groups outside the table's settings: {unknown}")
  return groups


def group_line(setting: Setting, summary: dict | None) -> str:
  if summary is None:
    return f"| {setting.place} | {setting.protocol} | not yet run | | | | | | |"
  n, seeds = summary["finished"], sorted(run["seed"] for run in summary["runs"])  # finished
  minutes = statistics.median(run["seconds"] for run in summary["runs"]) / 60
  return (f"| {setting.place} | {setting.protocol} | {n} of {SEEDS} "
          f"(seed{'s' if n > 1 else ''} {_seed_ranges(seeds)}) | {summary['std']:.1f} | "
          f"{summary['mean']:.1f} | {summary['max']:.1f} | {summary['min']:.1f} | "
          f"{summary['failed_runs']}/{n} | {minutes:.1f} |")


def _seed_ranges(seeds: list[int]) -> str:
  """``[1, 2, 3, 5]`` -> ``'1-3, 5'``."""
  ranges, start = [], seeds[0]
  for previous, seed in zip(seeds, [*seeds[1:], None]):
    if seed != previous + 1:
      ranges.append(f"{start}-{previous}" if previous > start else f"{start}")
      start = seed
  return ", ".join(ranges)


def comparisons(groups: dict[Setting, dict], runs: Path = RUNS) -> list[tables.Compared]:
  """CWGNC against each baseline at its task and rate, as the report compares them
  (``tables.comparisons``: every finished seed of each, once both have
  ``tables.MIN_SEEDS_TO_COMPARE``; a best-of baseline at its best and at its last
  evaluation), so the page and ``python -m cwgnc_jax.report`` give the same p-values."""
  return tables.comparisons([load.Group(runs / summary["group"], summary)
                             for summary in groups.values()])


def reading(compared: tables.Compared) -> str:
  """The baseline of a comparison as the page names it."""
  base = setting_of(compared.base.summary)
  if compared.at_last_evaluation:
    return f"{ROW_NAMES[base.row]}, {base.epochs} epochs, last evaluation"
  return base.protocol


TESTS = ("Brown-Forsythe", "Welch", "Fisher")


def _with_holm(p: float, holm: float) -> str:
  return f"{tables.format_p(p)} ({tables.format_p(holm)})"


def seed_line(setting: Setting, summary: dict, runs: Path) -> str:
  scores = [run["score"] for run in sorted(summary["runs"], key=lambda r: r["seed"])]
  line = f"- {setting.place}, {setting.protocol}: " + " / ".join(f"{x:.2f}" for x in scores)
  if setting.best_of > 1:
    last, _ = tables.last_evaluations(load.Group(runs / summary["group"], summary))
    line += ("; at the last evaluation " + " / ".join(f"{x:.2f}" for x in last) +
             f" (mean {statistics.mean(last):.1f})")
  return line


def section(groups: dict[Setting, dict], runs: Path = RUNS) -> str:
  found = comparisons(groups, runs)
  family = [p for c in found for p in c.result.pvalues]
  holm = list(stats.holm(family)) if family else []
  table = "\n".join([
      "| task, learning rate | row | seeds done | Std | Mean | Max | Min | failed | "
      "median minutes per seed |", "|---|---|---|---|---|---|---|---|---|",
      *(group_line(s, groups.get(s)) for s in SETTINGS)])
  compared = []
  significant = []
  named = []  # (uncorrected p, Holm p, what): every test, to name the closest to significance
  for i, c in enumerate(found):
    p, h = c.result.pvalues, holm[3 * i: 3 * i + 3]
    ours = setting_of(c.ours.summary)
    compared.append(
        f"| {ours.place} | {ours.protocol} vs {reading(c)} | {c.result.n[0]}, {c.result.n[1]} | "
        f"{c.result.std_ratio:.2f} | {_with_holm(p[0], h[0])} | "
        f"{c.result.mean_difference:+.1f} | {_with_holm(p[1], h[1])} | "
        f"{_with_holm(p[2], h[2])} |")
    against = ROW_NAMES[c.base.method] + (" at its last evaluation" if c.at_last_evaluation
                                          else "")
    names = [f"{ours.place}, CWGNC vs {against}, {test}" for test in TESTS]
    r = c.result
    difference = [f"std ratio {r.std_ratio:.2f}, ", f"mean difference {r.mean_difference:+.1f}, ",
                  f"failed {r.failed[0]}/{r.n[0]} vs {r.failed[1]}/{r.n[1]}, "]
    significant += [f"{names[j]} ({difference[j]}Holm p {tables.format_p(h[j])})"
                    for j in range(3) if h[j] < 0.05]
    named += [(p[j], h[j], names[j]) for j in range(3) if p[j] == p[j]]  # NaN: no spread
  if significant:
    verdict = f"**Significant after Holm's correction: {'; '.join(significant)}**"
  else:
    p, h, name = min(named, default=(float("nan"), float("nan"), "no test"))
    verdict = (f"**No comparison is significant** after Holm's correction (the smallest "
               f"uncorrected p, {tables.format_p(p)}: {name}; Holm p {tables.format_p(h)})")
  comparison_table = "\n".join([
      "| task, learning rate | comparison | seeds | std ratio | Brown-Forsythe p (Holm) | "
      "mean difference | Welch p (Holm) | Fisher p on failures (Holm) |",
      "|---|---|---|---|---|---|---|---|", *compared])
  per_seed = "\n".join(seed_line(s, groups[s], runs) for s in SETTINGS if s in groups)
  return f"""{TITLE}

Every row of the paper's Table 1 at its own protocol (`cwgnc_jax.methods`: BertAdam and
AdamW 3 epochs, Mixout and Mosbach et al. 20 epochs keeping the best of 3 evaluations per
epoch, CWGNC 5 epochs), MiniLM-L6, float32, transformers' AdamW form for the bias-corrected
rows (the default), one learning rate per task for every row (RTE 2e-5, CoLA 1e-4), seeds
1-{SEEDS}; and the harsh pair, RTE at lr 2e-4 with AdamW and CWGNC for 3 epochs each. All from
**one pinned commit, 1cb9873** (a worktree: `git worktree add ../t1 1cb9873`), one process
pinned to each core, seed by seed (a pair's seeds alternate, so its two groups grow together):

```bash
GLUE_DIR=../shared/glue taskset -c 1 python -m cwgnc_jax.study --config rte_cwgnc --seeds S-S \\
    --config.model=minilm-l6 --config.optimizer.learning_rate=2e-5 --config.progress=false \\
    --out runs/table1
```

(`<task>_<row>` and the task's rate for the other groups; the harsh pair adds
`--config.num_epochs=3` at rate 2e-4). On main, `python -m cwgnc_jax.study --table1 --tasks
rte,cola --seeds 10 --config.model=minilm-l6 --config.progress=false --out runs/table1` plans
the same group folders (tested), so it resumes these runs; main's training arithmetic is still
the pinned commit's (the optimizers' digests and the suite's bit-for-bit resume tests).

{table}

Scores are the dev set's Matthews correlation (CoLA) or accuracy (RTE), x100; a run fails
when it scores no better than predicting the majority class. Minutes per seed are the median
of the runs' recorded training and evaluation time on one core (a seed paused while tests or
benchmarks were timed counts its pause). A best-of row's
score is the best of its dev evaluations, picked on the same dev set it is scored on (Mosbach
et al.'s protocol, as the paper's Table 1 uses it): an optimistic pick the rows scored at the
end of training do not get, so each best-of row also gives its last evaluation's scores, the
like-for-like reading. Scores per seed, seeds in order:

{per_seed}

CWGNC against each baseline at the same task and rate, every finished seed of each once both
have {tables.MIN_SEEDS_TO_COMPARE} (seeds: CWGNC's, the baseline's); a best-of row twice, at its
best evaluation (its protocol) and at its last (like for like), failures there by the same
threshold (uncorrected p, Holm's over the {len(family)} tests of this table in brackets;
`cwgnc_jax.report.tables.comparisons`, as the report computes them):

{comparison_table}

{verdict}.
Until every row has its {SEEDS} seeds these tests are interim: a row of fewer seeds can still
move, and the family grows as rows are added.
The raw runs: `docs/results/runs/table1/`; `python -m cwgnc_jax.report
docs/results/runs/table1 --out DIR` prints them in the paper's layout with the same tests, and
`python experiments/table1_section.py` writes this section and the Status line from them.

"""


def status_row(groups: dict[Setting, dict]) -> str:
  done = [f"{s.place} {ROW_NAMES[s.row]} ({s.epochs} epochs): {groups[s]['finished']}"
          for s in SETTINGS if s in groups]
  state = "done" if all(groups.get(s, {}).get("finished") == SEEDS for s in SETTINGS) else (
      "in progress")
  return (f"{STATUS_ROW} (RTE and CoLA, seeds 1-{SEEDS}, and the RTE harsh pair; one pinned "
          f"commit) | {state} | seeds done: {'; '.join(done)}; the other groups not yet run; "
          "see the next section |")


def page(text: str, groups: dict[Setting, dict]) -> str:
  """``text`` (docs/results.md) with the section and the Status line written anew."""
  start = text.index(TITLE)
  end = text.index(NEXT_TITLE, start)
  text = text[:start] + section(groups) + text[end:]
  lines = text.split("\n")
  rows = [i for i, line in enumerate(lines) if line.startswith(STATUS_ROW)]
  assert len(rows) == 1, f"{RESULTS_PAGE}: expected one Status line starting {STATUS_ROW!r}"
  lines[rows[0]] = status_row(groups)
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  groups = read_groups(RUNS)
  text = RESULTS_PAGE.read_text()
  written = page(text, groups)
  if argv == ["--check"]:
    if written != text:
      print(f"{RESULTS_PAGE} differs from the runs in {RUNS}: run python "
            "experiments/table1_section.py", file=sys.stderr)
      return 1
    return 0
  RESULTS_PAGE.write_text(written)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
