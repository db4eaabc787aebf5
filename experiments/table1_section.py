"""Writes what the pages say of Table 1 at our scale from the raw runs committed under
docs/results/runs/table1 and, for the harsh pair, docs/results/runs/table1_harsh (collected
with experiments/collect.sh):

- docs/results.md's Table 1 section (each row's seeds, spread and minutes per seed, the
  per-seed scores, and CWGNC against each baseline on every finished seed of each, with Holm's
  correction over every test the section shows) and its line of the Status table;
- the findings in plain words, in the results page's "What the numbers show" and in README.md's
  results section, with the table in the paper's layout beside the paper's numbers.

  python experiments/table1_section.py           # rewrites docs/results.md and README.md
  python experiments/table1_section.py --check   # exits 1 when a page differs from the runs

Writing also draws every seed's score (docs/results/table1_scores.png); the check leaves the
figure alone, as its pixels differ from one matplotlib and its fonts to another.

tests/test_results_page.py runs the check, so the pages say what their runs say.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from cwgnc_jax import paper, stats  # pylint: disable=wrong-import-position
from cwgnc_jax.report import figures, load, tables  # pylint: disable=wrong-import-position

RUNS = REPO / "docs" / "results" / "runs" / "table1"  # the table's ten groups
# The harsh pair is another setting: a folder of its own, so the report prints it apart.
HARSH_RUNS = REPO / "docs" / "results" / "runs" / "table1_harsh"
RESULTS_PAGE = REPO / "docs" / "results.md"
FIGURE_LINK = "results/table1_scores.png"  # from the results page; drawn on writing, not checked
FIGURE = RESULTS_PAGE.parent / FIGURE_LINK
README = REPO / "README.md"
# The written parts of the hand-written pages lie between these two lines.
WRITTEN = "<!-- written by experiments/table1_section.py from the committed Table 1 runs -->"
WRITTEN_END = "<!-- end of what experiments/table1_section.py writes -->"
TITLE = "## Table 1 at our scale"  # " (in progress)" follows until every group is complete
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


RATES = {"cola": 1e-4, "rte": 2e-5}  # one learning rate per task for every row
ROWS = (("bertadam", 3, 1), ("adamw", 3, 1), ("mixout", 20, 60), ("mosbach", 20, 60),
        ("cwgnc", 5, 1))  # each row's own protocol: epochs, evaluations kept the best of
# The table's groups in the page's order: each row at its own protocol at the task's rate,
# then the harsh pair (RTE at lr 2e-4, 3 epochs for both).
TABLE = [Setting(task, row, rate, epochs, best_of)
         for task, rate in RATES.items() for row, epochs, best_of in ROWS]
SETTINGS = [*TABLE, Setting("rte", "adamw", 2e-4, 3, 1), Setting("rte", "cwgnc", 2e-4, 3, 1)]


def setting_of(summary: dict) -> Setting:
  config = summary["config"]
  best_of = config["num_epochs"] * config["evals_per_epoch"] if config["keep_best"] else 1
  return Setting(summary["task"], summary["method"], config["optimizer"]["learning_rate"],
                 config["num_epochs"], best_of)


def read_groups(*folders: Path) -> dict[Setting, load.Group]:
  """The groups below ``folders`` (each summary.json read and checked), by setting."""
  groups = {}
  for folder in folders:
    for group in load.find_groups(folder):
      groups[setting_of(group.summary)] = group
  unknown = sorted(s.place + " " + s.protocol for s in groups if s not in SETTINGS)
  if unknown:
    sys.exit(f"{', '.join(map(str, folders))}: groups outside the table's settings: {unknown}")
  return groups


def seeds_done(groups: dict[Setting, load.Group], setting: Setting) -> int:
  """How many of ``setting``'s seeds have finished (0: not yet run)."""
  return groups[setting].summary["finished"] if setting in groups else 0


def complete(groups: dict[Setting, load.Group], settings: list[Setting]) -> bool:
  """Whether every group of ``settings`` has its ``SEEDS`` seeds."""
  return all(seeds_done(groups, s) == SEEDS for s in settings)


def group_line(setting: Setting, group: load.Group | None) -> str:
  if group is None:
    return f"| {setting.place} | {setting.protocol} | not yet run | | | | | | |"
  summary = group.summary
  n, seeds = summary["finished"], sorted(run["seed"] for run in summary["runs"])  # finished
  minutes = statistics.median(run["seconds"] for run in summary["runs"]) / 60
  return (f"| {setting.place} | {setting.protocol} | {n} of {SEEDS} "
          f"(seed{'s' if n > 1 else ''} {_seed_ranges(seeds)}) | {tables.std_text(summary)} | "
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


def comparisons(groups: dict[Setting, load.Group]) -> list[tables.Compared]:
  """CWGNC against each baseline at its task and rate, as the report compares them
  (``tables.comparisons``: every finished seed of each, once both have
  ``tables.MIN_SEEDS_TO_COMPARE``; a best-of baseline at its best and at its last
  evaluation), so the page and ``python -m cwgnc_jax.report`` give the same p-values."""
  return tables.comparisons(list(groups.values()))


def tested(groups: dict[Setting, load.Group]) -> list[tuple[tables.Compared, list[float]]]:
  """Each comparison with its three Holm-adjusted p-values (spread, means, failures), Holm's
  correction taken over every test of every comparison."""
  found = comparisons(groups)
  holm = list(stats.holm([p for c in found for p in c.result.pvalues])) if found else []
  return [(c, holm[3 * i: 3 * i + 3]) for i, c in enumerate(found)]


def reading(compared: tables.Compared) -> str:
  """The baseline of a comparison as the page names it."""
  base = setting_of(compared.base.summary)
  if compared.at_last_evaluation:
    return f"{ROW_NAMES[base.row]}, {base.epochs} epochs, last evaluation"
  return base.protocol


TESTS = ("Brown-Forsythe", "Welch", "Fisher")


def _with_holm(p: float, holm: float) -> str:
  return f"{tables.format_p(p)} ({tables.format_p(holm)})"


def seed_line(setting: Setting, group: load.Group) -> str:
  scores = [run["score"] for run in sorted(group.summary["runs"], key=lambda r: r["seed"])]
  line = f"- {setting.place}, {setting.protocol}: " + " / ".join(f"{x:.2f}" for x in scores)
  if setting.best_of > 1:
    last, _ = tables.last_evaluations(group)
    line += ("; at the last evaluation " + " / ".join(f"{x:.2f}" for x in last) +
             f" (mean {statistics.mean(last):.1f})")
  return line


def section(groups: dict[Setting, load.Group]) -> str:
  found = tested(groups)
  table = "\n".join([
      "| task, learning rate | row | seeds done | Std | Mean | Max | Min | failed | "
      "median minutes per seed |", "|---|---|---|---|---|---|---|---|---|",
      *(group_line(s, groups.get(s)) for s in SETTINGS)])
  compared = []
  significant = []
  named = []  # (uncorrected p, Holm p, what): every test, to name the closest to significance
  for c, h in found:
    p = c.result.pvalues
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
  per_seed = "\n".join(seed_line(s, groups[s]) for s in SETTINGS if s in groups)
  return f"""{TITLE}{'' if complete(groups, SETTINGS) else ' (in progress)'}

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
`--config.num_epochs=3` at rate 2e-4, its groups then moved to a folder of their own,
`table1_harsh`, as another setting). On main, `python -m cwgnc_jax.study --table1 --tasks
rte,cola --seeds 10 --config.model=minilm-l6 --config.progress=false --out runs/table1` plans
the same group folders (tested), so it resumes these runs; main's training arithmetic is still
the pinned commit's (the optimizers' digests and the suite's bit-for-bit resume tests).

{table}

![Table 1 at our scale: every seed's score]({FIGURE_LINK})

Filled dots: each seed's score (a best-of row's best evaluation); hollow, joined to it: the same
seed's last evaluation; diamonds: mean ± std; dashed: the majority classifier.

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
threshold (uncorrected p, Holm's over the {3 * len(found)} tests of this table in brackets;
`cwgnc_jax.report.tables.comparisons`, as the report computes them):

{comparison_table}

{verdict}.{'' if complete(groups, SETTINGS) else INTERIM}
The raw runs: `docs/results/runs/table1/` and `docs/results/runs/table1_harsh/`; `python -m
cwgnc_jax.report docs/results/runs/table1 docs/results/runs/table1_harsh --out DIR` prints them
in the paper's layout, one table per setting, with the same tests, and
`python experiments/table1_section.py` writes this section, the Status line and the findings
(in "What the numbers show" and in README.md) from them.

"""


INTERIM = f"""
Until every row has its {SEEDS} seeds these tests are interim: a row of fewer seeds can still
move, and the family grows as rows are added."""


def paper_layout(groups: dict[Setting, load.Group]) -> str:
  """Table 1 in the paper's layout, rows by tasks, beside the paper's BERT-large numbers."""
  header = ["row, its protocol", *(s.place for s in TABLE if s.row == "cwgnc"),
            *(f"{TASK_NAMES[task]}, the paper ({paper.MODEL})" for task in RATES)]
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  for row, *_ in ROWS:
    settings = [s for s in TABLE if s.row == row]  # one per task, in RATES' order
    summaries = [groups[s].summary if s in groups else None for s in settings]
    ours = ["not yet run" if x is None else (
        f"{tables.std_text(x)} / {x['mean']:.1f} / {x['max']:.1f} "
        f"({x['failed_runs']}/{x['finished']})")
        for x in summaries]
    theirs = [" / ".join(f"{v:.1f}" for v in paper.TABLE1[row][task]) for task in RATES]
    lines.append(f"| {settings[0].protocol} | " + " | ".join(ours + theirs) + " |")
  return "\n".join(lines)


def _equals(p: float) -> str:
  """``'= 0.005'``, ``'< 0.001'``: a p-value in a sentence."""
  text = tables.format_p(p)
  return f"< {text[1:]}" if text.startswith("<") else f"= {text}"


def _difference(c: tables.Compared, test: int, holm: float) -> str:
  """What test ``test`` (0 spread, 1 means, 2 failures) of ``c`` found, in words, CWGNC
  first; a best-of baseline named with the evaluation it was read at."""
  r, base = c.result, ROW_NAMES[c.base.method]
  at, note = "", ""
  if c.at_last_evaluation:
    at = " at its last evaluation"
  elif c.base.config.get("keep_best"):
    at, note = " at its best dev evaluation", ", a best picked on the dev set it is scored on"
  holm_p = _equals(holm)
  if test == 0:
    said = (f"CWGNC's spread is {'smaller' if r.std_ratio < 1 else 'larger'} than {base}'s{at} "
            f"(std ratio {r.std_ratio:.2f}; Brown-Forsythe, Holm p {holm_p})")
  elif test == 1:
    ours = c.ours.summary["mean"]
    said = (f"CWGNC's mean is {'above' if r.mean_difference > 0 else 'below'} {base}'s{at} "
            f"({ours:.1f} against {ours - r.mean_difference:.1f}; Welch, Holm p {holm_p})")
  else:
    (fa, fb), (na, nb) = r.failed, r.n
    said = (f"CWGNC fails {'less' if fa * nb < fb * na else 'more'} often than {base}{at} "
            f"({fa}/{na} against {fb}/{nb}; Fisher, Holm p {holm_p})")
  return said + note


def _count(n: int, singular: str, plural: str) -> str:
  """``'1 is'``, ``'3 are'``: a count and its verb."""
  return f"{n} {singular if n == 1 else plural}"


def progress(groups: dict[Setting, load.Group]) -> str:
  """How far the table's runs are, in one sentence."""
  done = sum(seeds_done(groups, s) == SEEDS for s in TABLE)
  if done == len(TABLE):
    return f"All {len(TABLE)} cells have their {SEEDS} seeds."
  missing = sum(seeds_done(groups, s) == 0 for s in TABLE)
  begun = len(TABLE) - done - missing
  rest = ([f"{_count(begun, 'has', 'have')} fewer"] if begun else []) + (
      [f"{_count(missing, 'is', 'are')} not yet run"] if missing else [])
  return (f"Interim: {done} of the {len(TABLE)} cells "
          f"{'has its' if done == 1 else 'have their'} {SEEDS} seeds"
          f"{', ' if len(rest) > 1 else ' and '}{' and '.join(rest)}, so these numbers can "
          "still move.")


def findings(groups: dict[Setting, load.Group], section_name: str) -> str:
  """Table 1 at our scale in plain sentences: how far the runs are, the paper's
  claim (a lower std and a higher mean than every baseline) counted against each baseline at
  its protocol, and every difference that survives Holm's correction, for or against CWGNC;
  a best-of baseline's other reading beside it where that one does not. ``section_name``:
  where the tests are shown."""
  found = tested(groups)
  state = progress(groups)
  at_protocol = [c for c, _ in found
                 if not c.at_last_evaluation and setting_of(c.ours.summary) in TABLE]
  lower = sum(c.result.std_ratio < 1 for c in at_protocol)
  higher = sum(c.result.mean_difference > 0 for c in at_protocol)
  so_far = "" if complete(groups, TABLE) else " so far"
  claim = (f"The paper's claim, a lower std and a higher mean than every baseline, holds here "
           f"against {lower} of the {len(at_protocol)} (task, baseline) pairs compared{so_far} "
           f"for the std and {higher} for the mean")
  significant = []
  for c, holm in found:
    for test in (t for t in range(3) if holm[t] < 0.05):
      said = f"On {setting_of(c.ours.summary).place}, {_difference(c, test, holm[test])}"
      other = next((h for d, h in found if d.base is c.base and d is not c), None)
      if other is not None and other[test] >= 0.05:
        said += (f"; at its {'best' if c.at_last_evaluation else 'last'} evaluation, not "
                 f"significant (Holm p {_equals(other[test])})")
      significant.append(said + ".")
  tests = f"Holm's correction over the {3 * len(found)} tests of {section_name}"
  if not significant:
    return f"{state} {claim}. No difference survives {tests}."
  count = ("one difference is" if len(significant) == 1 else
           f"{len(significant)} differences are")
  return f"{state} {claim}. After {tests}, {count} significant. " + " ".join(significant)


def status_row(groups: dict[Setting, load.Group]) -> str:
  """The results page's Status line for the table: how many groups are complete, and the
  seeds of each group that is not."""
  def name(s: Setting) -> str:
    return f"{s.place} {ROW_NAMES[s.row]} ({s.epochs} epochs)"
  done = sum(seeds_done(groups, s) == SEEDS for s in SETTINGS)
  fewer = [f"{name(s)}: {seeds_done(groups, s)}" for s in SETTINGS
           if 0 < seeds_done(groups, s) < SEEDS]
  missing = [name(s) for s in SETTINGS if seeds_done(groups, s) == 0]
  said = [f"**{done} of the {len(SETTINGS)} groups have their {SEEDS} seeds**"]
  said += [f"seeds done in the others: {'; '.join(fewer)}"] if fewer else []
  said += [f"not yet run: {'; '.join(missing)}"] if missing else []
  state = "done" if done == len(SETTINGS) else "in progress"
  return (f"{STATUS_ROW} (RTE and CoLA, seeds 1-{SEEDS}, and the RTE harsh pair; one pinned "
          f"commit) | {state} | {'; '.join(said)}; see the next section |")


def _written(text: str, path: Path, written: str) -> str:
  """``text`` (the page at ``path``) with ``written`` between its WRITTEN and WRITTEN_END
  lines."""
  start, end = text.find(WRITTEN), text.find(WRITTEN_END)
  if text.count(WRITTEN) != 1 or text.count(WRITTEN_END) != 1 or not 0 <= start < end:
    sys.exit(f"{path}: expected one line {WRITTEN!r} and one {WRITTEN_END!r} after it")
  return f"{text[:start]}{WRITTEN}\n{written}\n{text[end:]}"


def results_page(text: str, groups: dict[Setting, load.Group]) -> str:
  """``text`` (docs/results.md) with the section, the Status line and the findings written
  anew."""
  start = text.index(TITLE)
  end = text.index(NEXT_TITLE, start)
  text = text[:start] + section(groups) + text[end:]
  lines = text.split("\n")
  rows = [i for i, line in enumerate(lines) if line.startswith(STATUS_ROW)]
  if len(rows) != 1:
    sys.exit(f"{RESULTS_PAGE}: expected one Status line starting {STATUS_ROW!r}")
  lines[rows[0]] = status_row(groups)
  return _written("\n".join(lines), RESULTS_PAGE,
                  "- **Table 1 at each row's own protocol** (the section above). " +
                  findings(groups, "the Table 1 section"))


def readme(text: str, groups: dict[Setting, load.Group]) -> str:
  """``text`` (README.md) with Table 1 in the paper's layout and the findings written anew."""
  return _written(text, README, paper_layout(groups) + "\n\n" +
                  findings(groups, "docs/results.md's Table 1 section"))


def main(argv: list[str]) -> int:
  groups = read_groups(RUNS, HARSH_RUNS)
  pages = {RESULTS_PAGE: results_page, README: readme}
  texts = {path: path.read_text() for path in pages}
  written = {path: write(texts[path], groups) for path, write in pages.items()}
  stale = [path for path in pages if written[path] != texts[path]]
  if argv == ["--check"]:
    for path in stale:
      print(f"{path} differs from the runs in {RUNS} and {HARSH_RUNS}: run python "
            "experiments/table1_section.py", file=sys.stderr)
    return 1 if stale else 0
  for path in stale:
    path.write_text(written[path])
  table = [groups[s] for s in TABLE if s in groups]
  load.label_groups(table)
  figures.figure_scores(table, FIGURE)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
