"""The Markdown of a report (``markdown``: Table 1, Table 2, CWGNC against the baselines,
the groups' settings, per RUN_DIR) and ``seeds.csv``, the per-seed numbers behind them.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats as scipy_stats

from cwgnc_jax import metrics, paper, stats
from cwgnc_jax.report.load import (Group, row_order, sweep_title, sweeps, task_header,
                                   task_name, tasks_in)
from cwgnc_jax.tasks import TASKS


def std_text(summary: dict[str, Any]) -> str:
  """A group's std to one decimal, or ``'-'`` below two finished seeds: one score has no
  spread (the summary's 0.0 for it is not a measured one)."""
  return f"{summary['std']:.1f}" if summary["finished"] > 1 else "-"


def cell(summary: dict[str, Any]) -> str:
  """``Std / Mean / Max (failed %, n)`` of a group, one decimal as in the paper."""
  if not summary["finished"]:
    return "-"
  return (f"{std_text(summary)} / {summary['mean']:.1f} / {summary['max']:.1f} "
          f"({summary['failed_percent']:.0f}% failed, n={summary['finished']})")


def _paper_cell(group: Group) -> str:
  """The paper's ``Std / Mean / Max`` of the group's row and task (BERT-large), where the group
  is that row at its protocol (a CWGNC row at the paper's threshold; no GU); else ''."""
  numbers = paper.TABLE1.get(group.method, {}).get(group.task)
  if numbers is None or group.unfreezing != "none" or (
      group.is_cwgnc and group.clip_norm != paper.CLIP_NORM):
    return ""
  return " / ".join(f"{v:.1f}" for v in numbers)


def _numbers(summary: dict[str, Any]) -> list[str]:
  """n, Std, Mean, Max, failed % of a group, one decimal as in the paper."""
  if not summary["finished"]:
    return ["0", "-", "-", "-", "-"]
  return [str(summary["finished"]), std_text(summary), f"{summary['mean']:.1f}",
          f"{summary['max']:.1f}", f"{summary['failed_percent']:.0f}"]


def table1(groups: Sequence[Group]) -> str:
  """The Markdown Table 1 of one setting in the paper's layout: rows = methods; per task, n,
  Std, Mean, Max and failed %, then the paper's Std / Mean / Max (BERT-large) of the row."""
  tasks = tasks_in(groups)
  rows: dict[str, dict[str, Group]] = {}
  for group in sorted(groups, key=row_order):
    rows.setdefault(group.label, {})[group.task] = group
  header = ["approach"]
  for task in tasks:
    header += [f"{task_header(task, groups)}: n", "Std", "Mean", "Max", "failed %",
               f"{paper.MODEL} (paper): Std / Mean / Max"]
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  for label, cells in rows.items():
    values = [label]
    for task in tasks:
      values += ([*_numbers(cells[task].summary), _paper_cell(cells[task])] if task in cells
                 else [""] * 6)
    lines.append("| " + " | ".join(values) + " |")
  return "\n".join(lines)


def table2(members: Sequence[Group]) -> str:
  """The Markdown Table 2 of one task: rows = CWGNC thresholds."""
  lines = ["| threshold c | Std | Mean | Max | Min | failed % | seeds | group |",
           "|---|---|---|---|---|---|---|---|"]
  for g in members:
    s = g.summary
    if s["finished"]:
      values = (f"{std_text(s)} | {s['mean']:.1f} | {s['max']:.1f} | {s['min']:.1f} | "
                f"{s['failed_percent']:.0f}")
    else:
      values = " | ".join("-" * 5)
    lines.append(f"| {g.clip_norm:g} | {values} | {s['finished']} | `{g.path.name}` |")
  return "\n".join(lines)


def sweep_trend(members: Sequence[Group]) -> str | None:
  """Does the score move with the threshold? Spearman's rank correlation of every finished
  seed's score against ``log c`` (a monotone trend, none assumed linear), with its two-sided
  p-value; None below 3 thresholds with scores."""
  pairs = [(np.log(g.clip_norm), score) for g in members for score in _scores(g)]
  if len({c for c, _ in pairs}) < 3:
    return None
  rho, p = scipy_stats.spearmanr(*zip(*pairs))
  p_text = "p < 0.001" if p < 1e-3 else f"p = {p:.3f}"
  return (f"Score against log c over the {len(pairs)} runs: Spearman rho = {rho:+.2f} "
          f"({p_text}; negative: smaller thresholds score higher).")


MIN_SEEDS_TO_COMPARE = 3


def _scores(group: Group) -> np.ndarray:
  return np.array([run["score"] for run in group.summary["runs"] if "score" in run])


def _failures(group: Group) -> int:
  """How many of the group's finished seeds failed, as its summary judges them."""
  return sum(run["failed"] for run in group.summary["runs"] if "score" in run)


def format_p(value: float) -> str:
  """A p-value as the report prints it: three decimals, '<0.001' below, '-' for no test."""
  return "-" if np.isnan(value) else "<0.001" if value < 1e-3 else f"{value:.3f}"


def _comparison_cells(c: stats.Comparison, holm: Sequence[float] | None = None) -> str:
  """The Markdown cells of a comparison; with ``holm``, each p-value's Holm-adjusted value
  beside it."""
  p = [format_p(v) if holm is None else f"{format_p(v)} | {format_p(h)}" for v, h in
       zip(c.pvalues, holm if holm is not None else c.pvalues)]
  ratio = "-" if np.isnan(c.std_ratio) else f"{c.std_ratio:.2f}"
  return (f"{c.n[0]}, {c.n[1]} | {ratio} | {p[0]} | {c.mean_difference:+.1f} | {p[1]} | "
          f"{c.failed[0]}/{c.n[0]} vs {c.failed[1]}/{c.n[1]} | {p[2]}")


def compare_scores(a: Sequence[float], b: Sequence[float], failed_a: int, failed_b: int
                   ) -> str:
  """Scores ``a`` against scores ``b`` (``failed_*`` of them failed; ``stats.compare``), as
  the Markdown cells of ``COMPARISON_COLUMNS``, uncorrected."""
  return _comparison_cells(stats.compare(a, b, failed_a, failed_b))


COMPARISON_COLUMNS = ("seeds | Std ratio | p (equal spread) | mean difference | p (equal means) "
                      "| failed | p (equal failures)")
HOLM_COLUMNS = ("seeds | Std ratio | p (equal spread) | Holm | mean difference | "
                "p (equal means) | Holm | failed | p (equal failures) | Holm")


@dataclasses.dataclass(frozen=True)
class Compared:
  """CWGNC (``ours``) against a baseline of its setting; a best-of baseline also at its last
  evaluation (``at_last_evaluation``)."""
  ours: Group
  base: Group
  result: stats.Comparison
  at_last_evaluation: bool = False

  @property
  def base_label(self) -> str:
    return f"{self.base.label}, read at its last evaluation" if self.at_last_evaluation else (
        self.base.label)


def last_evaluations(group: Group) -> tuple[list[float], int] | None:
  """A best-of group's scores at its last evaluation (the end of training) and how many of
  them fail there (the summary's threshold); None where a result lists no evaluation."""
  results = group.results()
  if any(not results[seed].get("evaluations") for seed in results):
    return None
  scores = [results[seed]["evaluations"][-1]["score"] for seed in sorted(results)]
  threshold = group.summary["failure_threshold"]
  return scores, sum(metrics.is_failed(score, threshold) for score in scores)


def comparisons(groups: Sequence[Group]) -> list[Compared]:
  """CWGNC against each baseline of its setting (``Group.setting``: the same task, rate and
  scale), where both have at least ``MIN_SEEDS_TO_COMPARE`` finished seeds, by task and row
  order. A baseline scored at its best dev evaluation (Mosbach et al.'s protocol, picked on
  the dev set it is scored on) is compared twice: so, and at its last evaluation, like for
  like with CWGNC's score at the end of its training."""
  found = []
  for task in tasks_in(groups):
    plain = sorted((g for g in groups if g.task == task and g.unfreezing == "none"
                    and len(_scores(g)) >= MIN_SEEDS_TO_COMPARE), key=row_order)
    for ours in (g for g in plain if g.is_cwgnc):
      for base in (g for g in plain if not g.is_cwgnc and g.setting == ours.setting):
        found.append(Compared(ours, base, stats.compare(_scores(ours), _scores(base),
                                                        _failures(ours), _failures(base))))
        last = last_evaluations(base) if base.config.get("keep_best") else None
        if last is not None:
          found.append(Compared(ours, base, stats.compare(_scores(ours), last[0],
                                                          _failures(ours), last[1]),
                                at_last_evaluation=True))
  return found


def comparison_table(compared: Sequence[Compared], holm: np.ndarray) -> str:
  """The Markdown table of ``compared``, each p-value with its Holm-adjusted one (``holm``:
  three per comparison, in order)."""
  rows = [f"| {task_name(c.ours.task)} | {c.ours.label} | {c.base_label} | "
          f"{_comparison_cells(c.result, holm[3 * i:3 * i + 3])} |"
          for i, c in enumerate(compared)]
  return "\n".join([f"| task | CWGNC | baseline | {HOLM_COLUMNS} |", "|---" * 13 + "|", *rows])


def settings_list(groups: Sequence[Group]) -> str:
  """One line per group: folder, seeds, and what it trained (model, learning rate, epochs)."""
  lines = []
  for g in sorted(groups, key=lambda g: (tasks_in(groups).index(g.task), row_order(g))):
    c = g.config
    epochs = c.get("num_epochs")
    if g.unfreezing != "none":
      gu = c["unfreezing"]
      epochs = f"{gu.get('epochs_per_iteration')} per GU iteration"
    seeds = [run["seed"] for run in g.summary["runs"]]
    lines.append(
        f"- `{g.path.name}`: {g.label} on {task_name(g.task)}, model "
        f"{c.get('model')}, lr {c['optimizer']['learning_rate']:g}, epochs {epochs}, batch "
        f"{c.get('batch_size')}, train_limit {c.get('train_limit')}; "
        f"{g.summary['finished']}/{len(g.summary['seeds'])} seeds finished {_seed_list(seeds)}; "
        f"majority classifier {_fmt(g.summary.get('majority_score'))}")
  return "\n".join(lines)


def _seed_list(seeds: Sequence[int]) -> str:
  return f"({', '.join(map(str, seeds))})" if seeds else ""


def _fmt(value: float | None) -> str:
  return "-" if value is None else f"{value:.1f}"



SEED_COLUMNS = ("group", "task", "method", "seed", "metric", "score", "majority_score",
                "failed", "skipped_steps", "steps", "train_seconds")


def write_seed_table(groups: Sequence[Group], path: Path) -> None:
  """``path`` (CSV): one row per finished seed of every group, the numbers behind the tables."""
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(SEED_COLUMNS)
    for group in groups:
      # Failed as the summary judges it (under the study's failure rule), as the tables do;
      # a results.json keeps the rule of the run that wrote it. Every result's seed is there.
      judged = {run["seed"]: run["failed"] for run in group.summary["runs"]}
      for seed, results in sorted(group.results().items()):
        seconds = results.get("timings", {}).get("train_seconds")
        writer.writerow([group.path.name, group.task, group.method, seed, results["metric"],
                         f"{results['score']:.4f}", f"{results['majority_score']:.4f}",
                         judged[seed], results["skipped_steps"],
                         results.get("steps", ""),
                         "" if seconds is None else f"{seconds:.0f}"])


def markdown(settings: Sequence[tuple[Path, Sequence[Group]]], command: str | None = None
             ) -> list[str]:
  """report.md's lines down to its figures: per setting (RUN_DIR and its groups) Table 1,
  Table 2 of each threshold sweep, CWGNC against the baselines (Holm's correction over every
  p-value of the page) and the groups' settings; ``command`` is named as the writer."""
  lines = ["# Stability study report", ""]
  if command:
    lines += [f"Written by `{command}`.", ""]
  released = ", ".join(f"{t.name} {t.released_threshold:g}" for t in TASKS.values()
                       if t.released_threshold is not None)
  lines += ["Table 1: per task the number of finished seeds n, the Std (population), Mean and "
            "Max of the dev score (x100) over them, and the percentage of failed runs. A "
            "failed run's dev score is not above the majority classifier's (the paper's rule; "
            "rows marked \"failure rule 'released'\" use the released code's fixed "
            f"thresholds: {released}). A row's score is its final model's, except rows marked "
            "\"best dev evaluation\" (Mosbach et al.'s protocol: the best of the evaluations "
            "during training, picked on the dev set it is scored on, so optimistic against a "
            f"final model's score). Beside each task, the paper's numbers ({paper.SOURCE}): "
            f"**another model and scale** ({paper.MODEL}, 25 runs for CWGNC, the baselines' "
            "counts not stated, no failure rates), for the row at its own protocol and, for "
            f"CWGNC, the paper's threshold c = {paper.CLIP_NORM:g}; not ours to match number "
            "for number.", ""]
  # Holm's correction runs over every p-value of the page: all settings' comparisons.
  compared = [comparisons(groups) for _, groups in settings]
  holm = stats.holm([p for found in compared for c in found for p in c.result.pvalues])
  tests, first = int(np.count_nonzero(~np.isnan(holm))), 0
  for (run_dir, groups), found in zip(settings, compared):
    lines += [f"## Table 1: `{run_dir}`", "", table1(groups), ""]
    for key, members in sweeps(groups).items():
      lines += [f"### Table 2: CWGNC threshold sweep on {sweep_title(key)} (`{run_dir}`)",
                "", table2(members), ""]
      trend = sweep_trend(members)
      if trend:
        lines += [trend, ""]
    if found:
      lines += [f"### CWGNC against the baselines (`{run_dir}`)", "",
                "Each CWGNC group against each baseline of its task at the same learning "
                "rate, model, data and batch (each row at its own protocol); a row scored "
                "at its best dev evaluation is compared twice: so, and read at its last "
                "evaluation (like for like with CWGNC's final model; failures there by the "
                "same threshold). "
                "Std ratio: CWGNC's std over the baseline's. p-values, two-sided: "
                "Brown-Forsythe (equal spread), Welch (equal means), Fisher exact (equal "
                "failure rates); each uncorrected, then Holm's (`stats.holm`) over the family "
                f"of all {tests} tests on this page (a difference is significant at 0.05 only "
                "where Holm's p is below 0.05; '-': no test).", "",
                comparison_table(found, holm[first:first + 3 * len(found)]), ""]
      first += 3 * len(found)
    lines += ["Groups:", "", settings_list(groups), ""]
  lines += ["Every finished seed's result: [seeds.csv](seeds.csv).", ""]
  return lines
