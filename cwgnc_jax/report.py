"""Tables and figures of stability studies: ``python -m cwgnc_jax.report RUN_DIR ...``.

  python -m cwgnc_jax.report RUN_DIR [RUN_DIR ...] [--out DIR]

Each RUN_DIR is a study folder (``--out`` of ``cwgnc_jax.study``: one group folder per config,
each with ``summary.json`` and ``seed_<s>/`` run directories) or a single group folder. One
RUN_DIR is one setting (model, learning rates, epochs): it gets its own tables. Writes
``report.md`` and PNG figures to ``--out`` (default: the first RUN_DIR):

  * Table 1 (the paper's layout): rows are methods, and per task the number of seeds n, the
    Std, Mean and Max of the dev score (x100) over them and the failed-run percentage, then the
    paper's BERT-large ``Std / Mean / Max`` of the row (``paper.TABLE1``: another model and
    scale). CWGNC rows name their threshold; groups that would share a cell (e.g. two
    learning rates of one method) get their differing overrides in the row name.
  * Table 2 (the paper's layout): CWGNC's threshold sweep on a task, one row per threshold,
    when a RUN_DIR holds CWGNC groups of at least two thresholds on that task at one learning
    rate and number of epochs; from three thresholds on, with the rank correlation of score and
    log c (``sweep_trend``).
  * CWGNC against each baseline of its task (``comparisons``): are the differences in
    spread, mean and failures larger than the seeds' noise? Two-sided p-values
    (``stats.compare``), each beside its Holm-adjusted value over every test on the page
    (``stats.holm``).
  * ``scores.png``: every seed's score and each group's mean +- std against the majority
    classifier (the spread Table 1 summarizes).
  * ``fig1_gradual_unfreezing.png``: dev score after each GU iteration (mean +- std over
    seeds) for GU and GU restart, and full fine-tuning with the same optimizer (Fig. 1);
    needs groups trained with ``unfreezing.mode`` 'gu' / 'gu_restart' (their results.json
    ``unfreezing.iterations``).
  * ``fig2_4_5_gu_drift.png``: per layer, the maximum RMS difference and the minimum cosine
    similarity against the pretrained model and the previous iteration, for the first 4 GU
    iterations (Figs. 2, 4, 5); same data source.
  * ``drift_by_method.png``: the same two quantities per layer at the end of training, for
    every Table 1 group (mean +- std over seeds), from each evaluation's ``drift``.
  * ``table2_thresholds.png``: Table 2 as a figure: score against CWGNC's threshold c (each
    seed, mean +- std), and how often each seed's run clipped (``grad_norms.npz``).
  * ``fig3_gradient_norms.png``: the pre-clip gradient norm of every tensor of one encoder
    layer (the second from the top, as the paper's layer 22 of 24) over training, in a
    failed run and a successful run of one group (``grad_norms.npz``).

A figure without data is skipped, and ``report.md`` says why. ``seeds.csv`` beside it holds
the raw per-seed results behind the tables (one row per finished seed of every group).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats as scipy_stats

from cwgnc_jax import config as config_lib
from cwgnc_jax import diagnostics, files, methods, metrics, paper, paths, stats, tasks

GU_NAMES = {"gu": "GU", "gu_restart": "GU (restart)"}
# Overrides that say where the data is, not what is computed: never part of a row name.
_LOCATION_KEYS = ("glue_dir", "cache_dir", "task")


# -- Loading. ------------------------------------------------------------------------------

# What the report reads of the files cwgnc_jax.study and train.py write, by key: its types.
# A summary.json's aggregates (and majority score) are numbers once a seed has finished.
SUMMARY_FIELDS = {"task": str, "method": str, "config": dict, "overrides": dict, "seeds": list,
                  "finished": int, "runs": list}
SUMMARY_AGGREGATES = ("std", "mean", "max", "min", "failed_percent", "majority_score")
SUMMARY_RUN_FIELDS = {"seed": int, "score": files.NUMBER, "failed": bool}
DRIFT_FIELDS = {"max_rms": files.NUMBER, "min_cos": files.NUMBER}
_REWRITE_SUMMARY = "rerun the study command that wrote it, which rewrites it"
_MOVE_LOG = "move it away (the figures it feeds are then skipped) or rerun that seed"
_REWRITE_RESULTS = ("restore it, or move its seed folder away and rerun the study, which "
                    "trains that seed again")


def read_summary(path: Path) -> dict[str, Any]:
  """A group's summary.json, checked to hold what the report reads."""
  summary = files.read_json(path, _REWRITE_SUMMARY)
  files.check_fields(summary, SUMMARY_FIELDS, path, "", _REWRITE_SUMMARY)
  for i, run in enumerate(summary["runs"]):
    files.check_fields(run, SUMMARY_RUN_FIELDS, path, f"runs[{i}]", _REWRITE_SUMMARY)
  if summary["finished"]:
    files.check_fields(summary, dict.fromkeys(SUMMARY_AGGREGATES, files.NUMBER), path, "",
                       _REWRITE_SUMMARY)
  files.check_fields(summary["config"], {"optimizer": dict}, path, "config", _REWRITE_SUMMARY)
  files.check_fields(summary["config"]["optimizer"], {"learning_rate": files.NUMBER}, path,
                     "config.optimizer", _REWRITE_SUMMARY)
  clip_norm = summary["config"]["optimizer"].get("clip_norm")
  if clip_norm is not None:
    files.check_value(clip_norm, files.NUMBER, path, "config.optimizer.clip_norm",
                      _REWRITE_SUMMARY)
  return summary


def _check_drift(drift: Any, path: Path, where: str) -> None:
  """Per layer, the max RMS difference and min cosine (``diagnostics.layer_drift``)."""
  files.check_value(drift, dict, path, where, _REWRITE_RESULTS)
  for layer, values in drift.items():
    files.check_fields(values, DRIFT_FIELDS, path, f"{where}[{layer!r}]", _REWRITE_RESULTS)


def read_results(path: Path) -> dict[str, Any]:
  """A seed's results.json, checked to hold what the report reads (scores; each
  evaluation's drift and each GU iteration's score and drift where present)."""
  results = files.read_results(path, _REWRITE_RESULTS)
  optional = {"timings": dict, "evaluations": list, "unfreezing": dict}
  files.check_fields(results, {k: v for k, v in optional.items() if results.get(k) is not None},
                     path, "", _REWRITE_RESULTS)
  for i, evaluation in enumerate(results.get("evaluations") or []):
    files.check_value(evaluation, dict, path, f"evaluations[{i}]", _REWRITE_RESULTS)
    if evaluation.get("drift"):
      _check_drift(evaluation["drift"], path, f"evaluations[{i}].drift")
  iterations = (results.get("unfreezing") or {}).get("iterations") or []
  files.check_value(iterations, list, path, "unfreezing.iterations", _REWRITE_RESULTS)
  for i, iteration in enumerate(iterations):
    where = f"unfreezing.iterations[{i}]"
    files.check_fields(iteration, {"score": files.NUMBER, "drift_from_pretrained": dict,
                                   "drift_from_previous": dict}, path, where, _REWRITE_RESULTS)
    for source in ("drift_from_pretrained", "drift_from_previous"):
      _check_drift(iteration[source], path, f"{where}.{source}")
  return results


@dataclasses.dataclass
class Group:
  """A group folder: its summary and (on demand) its seeds' results and gradient norms."""
  path: Path
  summary: dict[str, Any]
  label: str = ""
  _results: dict[int, dict[str, Any]] | None = dataclasses.field(default=None, init=False,
                                                                 repr=False, compare=False)

  @property
  def task(self) -> str:
    return self.summary["task"]

  @property
  def method(self) -> str:
    return self.summary["method"]

  @functools.cached_property
  def config(self) -> dict[str, Any]:
    """The group's run identity; keys removed since it was written are dropped, so groups of
    any age compare alike."""
    return config_lib.without_removed_keys(self.summary["config"])

  @property
  def unfreezing(self) -> str:
    return self.config.get("unfreezing", {}).get("mode", "none")

  @property
  def clip_norm(self) -> float | None:
    return self.config["optimizer"].get("clip_norm")

  @property
  def is_cwgnc(self) -> bool:
    return methods.is_cwgnc(self.method)

  @property
  def adam_form(self) -> str | None:
    """'transformers' or 'optax' for bias-corrected Adam (runs made before the key existed
    used optax's), None for BertAdam."""
    optimizer = self.config["optimizer"]
    return optimizer.get("adam_form", "optax") if optimizer.get("bias_correction") else None

  @property
  def failure_rule(self) -> str:
    return self.summary.get("failure_rule", "majority")

  def seed_dir(self, seed: int) -> Path:
    return files.seed_dir(self.path, seed)

  def results(self) -> dict[int, dict[str, Any]]:
    """The results.json of every finished seed, by seed (read and checked once)."""
    if self._results is None:
      self._results = {}
      for run in self.summary["runs"]:
        path = self.seed_dir(run["seed"]) / files.RESULTS_FILE
        if path.exists():
          self._results[run["seed"]] = read_results(path)
    return self._results


def find_groups(run_dir: str | Path) -> list[Group]:
  """The group folders (holding summary.json) at or below ``run_dir``, by path."""
  run_dir = Path(run_dir)
  if not run_dir.is_dir():
    raise FileNotFoundError(f"{run_dir} is not a folder")
  found = sorted({p.parent for p in run_dir.rglob(files.SUMMARY_FILE)})
  return [Group(path, read_summary(path / files.SUMMARY_FILE)) for path in found]


def _base_label(group: Group) -> str:
  """The method's name, then what sets the group apart from the method's default row: GU
  mode, CWGNC threshold, optax's Adam, best-of-evaluations, the released failure rule."""
  known = group.method in methods.METHODS
  label = methods.METHODS[group.method].display_name if known else group.method
  if group.unfreezing != "none":
    label = f"{GU_NAMES.get(group.unfreezing, group.unfreezing)}, {label}"
  if group.clip_norm is not None and group.is_cwgnc:
    label = f"{label} (c = {group.clip_norm:g})"
  if group.adam_form == "optax":
    label = f"{label}, optax Adam"
  if group.config.get("keep_best"):
    label = f"{label}, best dev evaluation"
  if group.failure_rule != "majority":
    label = f"{label}, failure rule {group.failure_rule!r}"
  return label


def _row_order(group: Group) -> tuple:
  order = list(methods.METHODS)
  method = order.index(group.method) if group.method in order else len(order)
  return (group.unfreezing != "none", group.unfreezing, method, group.clip_norm or 0.0,
          group.adam_form != "optax",
          group.config["optimizer"]["learning_rate"], group.config.get("num_epochs") or 0,
          group.label)


def _config_value(config: dict[str, Any], dotted: str) -> Any:
  for part in dotted.split("."):
    config = config.get(part) if isinstance(config, dict) else None
  return config


def label_groups(groups: Sequence[Group]) -> None:
  """Sets each group's row name: its method (GU mode, CWGNC threshold), and, when two groups
  of one task would share that name, the config values in which the groups of that name
  differ (on every task, so that the rows stay aligned across tasks)."""
  by_label: dict[str, list[Group]] = {}
  for group in groups:
    group.label = _base_label(group)
    by_label.setdefault(group.label, []).append(group)
  for label, members in by_label.items():
    tasks = [g.task for g in members]
    if len(set(tasks)) == len(tasks):
      continue
    keys = sorted({key for g in members for key in g.summary["overrides"]}
                  - set(_LOCATION_KEYS))
    differing = [key for key in keys
                 if len({json.dumps(_config_value(g.config, key)) for g in members}) > 1]
    for g in members:
      values = ", ".join(f"{key}={_config_value(g.config, key)}" for key in differing)
      g.label = f"{label} [{values}]"


# -- Tables. -------------------------------------------------------------------------------

def task_name(task: str) -> str:
  """The task's display name (``tasks.Task.name``); a task no longer registered, as stored."""
  return tasks.TASKS[task].name if task in tasks.TASKS else task


def _tasks(groups: Sequence[Group]) -> list[str]:
  """The groups' tasks in the registry's order, then any unregistered ones."""
  present = {g.task for g in groups}
  return [t for t in tasks.TASKS if t in present] + sorted(present - set(tasks.TASKS))


def _task_header(task: str, groups: Sequence[Group]) -> str:
  used = {g.summary.get("metric") for g in groups if g.task == task} - {None}
  metric = metrics.METRICS.get(next(iter(used)), "") if len(used) == 1 else ""
  return f"{task_name(task)} ({metric})" if metric else task_name(task)


def cell(summary: dict[str, Any]) -> str:
  """``Std / Mean / Max (failed %, n)`` of a group, one decimal as in the paper."""
  if not summary["finished"]:
    return "-"
  return (f"{summary['std']:.1f} / {summary['mean']:.1f} / {summary['max']:.1f} "
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
  return [str(summary["finished"]), *(f"{summary[k]:.1f}" for k in ("std", "mean", "max")),
          f"{summary['failed_percent']:.0f}"]


def table1(groups: Sequence[Group]) -> str:
  """The Markdown Table 1 of one setting in the paper's layout: rows = methods; per task, n,
  Std, Mean, Max and failed %, then the paper's Std / Mean / Max (BERT-large) of the row."""
  tasks = _tasks(groups)
  rows: dict[str, dict[str, Group]] = {}
  for group in sorted(groups, key=_row_order):
    rows.setdefault(group.label, {})[group.task] = group
  header = ["approach"]
  for task in tasks:
    header += [f"{_task_header(task, groups)}: n", "Std", "Mean", "Max", "failed %",
               f"{paper.MODEL} (paper): Std / Mean / Max"]
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  for label, cells in rows.items():
    values = [label]
    for task in tasks:
      values += ([*_numbers(cells[task].summary), _paper_cell(cells[task])] if task in cells
                 else [""] * 6)
    lines.append("| " + " | ".join(values) + " |")
  return "\n".join(lines)


def sweeps(groups: Sequence[Group]) -> dict[tuple[str, float, int], list[Group]]:
  """Per (task, learning rate, epochs), the plain CWGNC groups by threshold, where there are
  at least two thresholds: a sweep varies c alone."""
  found = {}
  for g in groups:
    if g.is_cwgnc and g.unfreezing == "none" and g.clip_norm is not None:
      key = (g.task, g.config["optimizer"]["learning_rate"], g.config.get("num_epochs") or 0)
      found.setdefault(key, []).append(g)
  return {key: sorted(members, key=lambda g: (g.clip_norm, g.label))
          for key, members in sorted(found.items())
          if len({g.clip_norm for g in members}) >= 2}


def _sweep_title(key: tuple[str, float, int]) -> str:
  task, learning_rate, epochs = key
  rate = np.format_float_scientific(learning_rate, trim="-", exp_digits=1)  # 1e-4, 2.5e-5
  return f"{task_name(task)}, lr {rate}, {epochs} epochs"


def table2(members: Sequence[Group]) -> str:
  """The Markdown Table 2 of one task: rows = CWGNC thresholds."""
  lines = ["| threshold c | Std | Mean | Max | Min | failed % | seeds | group |",
           "|---|---|---|---|---|---|---|---|"]
  for g in members:
    s = g.summary
    if s["finished"]:
      values = (f"{s['std']:.1f} | {s['mean']:.1f} | {s['max']:.1f} | {s['min']:.1f} | "
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


def _p(value: float) -> str:
  return "-" if np.isnan(value) else "<0.001" if value < 1e-3 else f"{value:.3f}"


def _comparison_cells(c: stats.Comparison, holm: Sequence[float] | None = None) -> str:
  """The Markdown cells of a comparison; with ``holm``, each p-value's Holm-adjusted value
  beside it."""
  p = [_p(v) if holm is None else f"{_p(v)} | {_p(h)}" for v, h in
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
  """CWGNC (``ours``) against a baseline of its task."""
  ours: Group
  base: Group
  result: stats.Comparison


def comparisons(groups: Sequence[Group]) -> list[Compared]:
  """CWGNC against each baseline of its task, where both have at least
  ``MIN_SEEDS_TO_COMPARE`` finished seeds, by task and row order."""
  found = []
  for task in _tasks(groups):
    plain = sorted((g for g in groups if g.task == task and g.unfreezing == "none"
                    and len(_scores(g)) >= MIN_SEEDS_TO_COMPARE), key=_row_order)
    for ours in (g for g in plain if g.is_cwgnc):
      for base in (g for g in plain if not g.is_cwgnc):
        failed = [sum(run["failed"] for run in g.summary["runs"] if "score" in run)
                  for g in (ours, base)]
        found.append(Compared(ours, base, stats.compare(_scores(ours), _scores(base),
                                                        *failed)))
  return found


def comparison_table(compared: Sequence[Compared], holm: np.ndarray) -> str:
  """The Markdown table of ``compared``, each p-value with its Holm-adjusted one (``holm``:
  three per comparison, in order)."""
  rows = [f"| {task_name(c.ours.task)} | {c.ours.label} | {c.base.label} | "
          f"{_comparison_cells(c.result, holm[3 * i:3 * i + 3])} |"
          for i, c in enumerate(compared)]
  return "\n".join([f"| task | CWGNC | baseline | {HOLM_COLUMNS} |", "|---" * 13 + "|", *rows])


def settings_list(groups: Sequence[Group]) -> str:
  """One line per group: folder, seeds, and what it trained (model, learning rate, epochs)."""
  lines = []
  for g in sorted(groups, key=lambda g: (_tasks(groups).index(g.task), _row_order(g))):
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


# -- Figures. ------------------------------------------------------------------------------

def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path: Path) -> None:
  fig.savefig(path, dpi=120, bbox_inches="tight")
  _pyplot().close(fig)


def figure_scores(groups: Sequence[Group], path: Path) -> str | None:
  """Every seed's score and each group's mean +- std, per task; None if nothing finished."""
  groups = [g for g in groups if g.summary["finished"]]
  if not groups:
    return "no finished seeds"
  plt = _pyplot()
  tasks = _tasks(groups)
  labels = [label for label in dict.fromkeys(g.label for g in sorted(groups, key=_row_order))]
  # Room for the row names (about 0.08 inch a character) beside the task panels.
  width = 4.2 * len(tasks) + 0.5 + 0.08 * max(len(label) for label in labels)
  fig, axes = plt.subplots(1, len(tasks), figsize=(width, 0.5 * len(labels) + 2), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    members = {g.label: g for g in groups if g.task == task}
    for y, label in enumerate(labels):
      if label not in members:
        continue
      s = members[label].summary
      scores = np.array([run["score"] for run in s["runs"]])
      failed = np.array([run["failed"] for run in s["runs"]])
      jitter = np.linspace(-0.15, 0.15, len(scores)) if len(scores) > 1 else np.zeros(1)
      # Seeds drawn over the mean marker, so a lone seed stays visible.
      ax.scatter(scores[~failed], y + jitter[~failed], s=14, color="tab:blue", alpha=0.7,
                 zorder=3, label="seed" if y == 0 else None)
      ax.scatter(scores[failed], y + jitter[failed], s=14, color="tab:red", marker="x",
                 zorder=3, label="failed seed" if y == 0 else None)
      ax.errorbar(s["mean"], y, xerr=s["std"], fmt="D", color="black", capsize=4, ms=5,
                  label="mean ± std" if y == 0 else None)
    majority = [g.summary["majority_score"] for g in members.values()]
    if majority:
      ax.axvline(majority[0], color="gray", ls="--", lw=1, label="majority classifier")
    ax.set_yticks(range(len(labels)), labels if ax is axes[0][0] else [""] * len(labels))
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel(f"dev {_task_header(task, groups)} x100")
    ax.set_title(task_name(task))
    ax.grid(axis="x", alpha=0.3)
  handles, names = axes[0][0].get_legend_handles_labels()
  for ax in axes[0][1:]:
    for h, n in zip(*ax.get_legend_handles_labels()):
      if n not in names:
        handles.append(h)
        names.append(n)
  fig.legend(handles, names, loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.02),
             frameon=False)
  fig.suptitle("Dev score of every seed (x = failed: not above the majority classifier)")
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  _save(fig, path)
  return None


def _iterations(results: dict[str, Any]) -> list[dict[str, Any]]:
  """The GU iterations' records of a run's results (``unfreezing.record``), if any."""
  return (results.get("unfreezing") or {}).get("iterations") or []


def figure_gu(groups: Sequence[Group], path: Path) -> str | None:
  """Fig. 1: dev score after each GU iteration (mean +- std over seeds)."""
  gu = [g for g in groups if g.unfreezing != "none"
        and any(_iterations(r) for r in g.results().values())]
  if not gu:
    return ("no gradual-unfreezing results (groups trained with unfreezing.mode 'gu' or "
            "'gu_restart', whose results.json lists unfreezing.iterations)")
  plt = _pyplot()
  tasks = _tasks(gu)
  fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 5.5), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    length, references = 0, {}
    for g in [g for g in gu if g.task == task]:
      per_seed = [[it["score"] for it in _iterations(r)] for r in g.results().values()]
      per_seed = [s for s in per_seed if s]
      count = min(len(s) for s in per_seed)
      scores = np.array([s[:count] for s in per_seed])
      ax.errorbar(np.arange(1, count + 1), scores.mean(0), yerr=scores.std(0), marker="o",
                  capsize=3, label=f"{g.label} (n={len(scores)})")
      length = max(length, count)
      # Full fine-tuning: the plain group of this task with GU's optimizer settings.
      full = next((f for f in groups if f.task == task and f.unfreezing == "none"
                   and f.summary["finished"] and f.config["optimizer"] == g.config["optimizer"]),
                  None)
      if full is not None:
        references[full.path] = full
    for full in references.values():  # once, though GU and GU restart share it
      s = full.summary
      ax.axhline(s["mean"], color="black", lw=1,
                 label=f"full fine-tuning, {full.label} (n={s['finished']})")
      ax.axhspan(s["mean"] - s["std"], s["mean"] + s["std"], color="gray", alpha=0.2)
    ax.set_xticks(range(1, length + 1))
    ax.set_xlabel("GU iteration k (trains the head and the top k layers of the stack)")
    ax.set_ylabel(f"dev {_task_header(task, groups)} x100")
    ax.set_title(task_name(task))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
  fig.suptitle("Fig. 1: gradual unfreezing, dev score after each iteration (mean ± std)")
  fig.tight_layout()
  _save(fig, path)
  return None


def _layer_order(layers: Sequence[str]) -> list[str]:
  """The embeddings and encoder layers, bottom up. The head is left out, as in the paper's
  figures: its fresh classifier (zero-initialised bias: cosine 0) says nothing about the
  pretrained layers and would dwarf them."""
  rank = lambda layer: -1 if layer == paths.EMBEDDINGS else paths.layer_index(layer)
  return sorted((layer for layer in layers if layer != paths.HEAD), key=rank)


def _short_layer(layer: str) -> str:
  return "emb" if layer == paths.EMBEDDINGS else str(paths.layer_index(layer))


def figure_gu_drift(groups: Sequence[Group], path: Path) -> str | None:
  """Figs. 2, 4, 5: per-layer max RMS and min cosine of the first 4 GU iterations (one GU
  group: the first with results), against the pretrained model and the previous iteration."""
  gu = [g for g in groups if g.unfreezing != "none"
        and any(_iterations(r) for r in g.results().values())]
  if not gu:
    return "no gradual-unfreezing results with per-iteration drift"
  g = min(gu, key=lambda g: g.unfreezing != "gu")  # GU itself, as the paper shows
  runs = [_iterations(r) for r in g.results().values() if _iterations(r)]
  plt = _pyplot()
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
  panels = [("drift_from_pretrained", "max_rms", "max RMS difference", "against pretrained"),
            ("drift_from_previous", "max_rms", "max RMS difference", "against previous iteration"),
            ("drift_from_pretrained", "min_cos", "min cosine similarity", "against pretrained"),
            ("drift_from_previous", "min_cos", "min cosine similarity",
             "against previous iteration")]
  for ax, (source, key, ylabel, title) in zip(axes.ravel(), panels):
    layers = _layer_order(runs[0][0][source])
    for k in range(min(4, min(len(r) for r in runs))):
      values = np.array([[r[k][source][layer][key] for layer in layers] for r in runs])
      ax.errorbar(range(len(layers)), values.mean(0), yerr=values.std(0), marker="o", ms=3,
                  capsize=2, label=f"iteration {k + 1}")
    ax.set_xticks(range(len(layers)), [_short_layer(layer) for layer in layers])
    ax.set_xlabel("layer (emb = embeddings, numbers = encoder layers)")
    ax.set_ylabel(ylabel)
    ax.ticklabel_format(axis="y", useOffset=False)  # cosines: 0.99997, not 1e-5 + 0.9999
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"Figs. 2, 4, 5: per-layer drift under {g.label} on "
               f"{task_name(g.task)} (mean ± std over {len(runs)} "
               f"seed{'s' if len(runs) > 1 else ''})")
  fig.tight_layout()
  _save(fig, path)
  return None


def figure_drift_by_method(groups: Sequence[Group], path: Path) -> str | None:
  """Per-layer max RMS and min cosine against the pretrained model at the last evaluation,
  per group (mean +- std over seeds), one column per task."""
  data: dict[str, list[tuple[Group, list[dict[str, Any]]]]] = {}
  for g in sorted(groups, key=_row_order):
    if g.unfreezing != "none":
      continue
    drifts = [r["evaluations"][-1].get("drift") for r in g.results().values()
              if r.get("evaluations")]
    drifts = [d for d in drifts if d]
    if drifts:
      data.setdefault(g.task, []).append((g, drifts))
  if not data:
    return "no evaluation recorded per-layer drift"
  plt = _pyplot()
  tasks = [t for t in _tasks(groups) if t in data]
  colors = {label: f"C{i % 10}" for i, label in
            enumerate(dict.fromkeys(g.label for t in tasks for g, _ in data[t]))}
  fig, axes = plt.subplots(2, len(tasks), figsize=(6.5 * len(tasks), 8), squeeze=False)
  for column, task in enumerate(tasks):
    for g, drifts in data[task]:
      layers = _layer_order(drifts[0])
      for row, key in enumerate(("max_rms", "min_cos")):
        values = np.array([[d[layer][key] for layer in layers] for d in drifts])
        axes[row][column].errorbar(range(len(layers)), values.mean(0), yerr=values.std(0),
                                   marker="o", ms=3, capsize=2, color=colors[g.label],
                                   label=f"{g.label} (n={len(drifts)})")
        axes[row][column].set_xticks(range(len(layers)), [_short_layer(x) for x in layers])
    for row, ylabel in enumerate(("max RMS difference", "min cosine similarity")):
      ax = axes[row][column]
      ax.set_ylabel(ylabel)
      ax.ticklabel_format(axis="y", useOffset=False)
      ax.set_xlabel("layer (emb = embeddings, numbers = encoder layers)")
      ax.set_title(f"{task_name(task)}: {ylabel} against pretrained")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.suptitle("Per-layer drift from the pretrained model at the end of training "
               "(mean ± std over seeds)")
  fig.tight_layout()
  _save(fig, path)
  return None


def _fig3_pick(groups: Sequence[Group]) -> tuple[Group, int, int] | None:
  """A group with a failed and a successful seed that both have gradient norms: its lowest
  failed seed and highest successful seed. Baselines (not CWGNC) first, then most seeds."""
  candidates = []
  for g in groups:
    runs = [r for r in g.summary["runs"]
            if (g.seed_dir(r["seed"]) / files.GRAD_NORMS_FILE).is_file()]
    failed = [r for r in runs if r["failed"]]
    succeeded = [r for r in runs if not r["failed"]]
    if failed and succeeded:
      worst = min(failed, key=lambda r: r["score"])["seed"]
      best = max(succeeded, key=lambda r: r["score"])["seed"]
      candidates.append(((g.is_cwgnc, -len(runs), g.label), g, worst, best))
  if not candidates:
    return None
  _, g, worst, best = min(candidates, key=lambda c: c[0])
  return g, worst, best


def figure_gradient_norms(groups: Sequence[Group], path: Path) -> str | None:
  """Fig. 3: per-tensor gradient norms of one encoder layer over steps, failed vs successful."""
  pick = _fig3_pick(groups)
  if pick is None:
    return ("no group has both a failed and a successful seed with grad_norms.npz "
            "(diagnostics_every > 0)")
  g, failed_seed, good_seed = pick
  norms = {seed: diagnostics.read_gradient_norms(g.seed_dir(seed) / files.GRAD_NORMS_FILE,
                                                 _MOVE_LOG)
           for seed in (failed_seed, good_seed)}
  names = [str(n) for n in norms[good_seed]["tensor_names"]]
  layers = sorted({paths.layer_index(n) for n in names} - {None})
  layer = layers[-2] if len(layers) >= 2 else layers[-1]
  prefix = f"encoder/layers/{layer}/"
  # The key bias is left out: its gradient is 0 up to rounding (softmax ignores a shift).
  columns = [i for i, n in enumerate(names)
             if n.startswith(prefix) and not n.endswith("attention/key/bias")]
  scores = {r["seed"]: r["score"] for r in g.summary["runs"]}
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
  cmap = plt.get_cmap("tab20")
  for ax, seed, kind in ((axes[0], failed_seed, "failed"), (axes[1], good_seed, "successful")):
    data = norms[seed]
    for color, i in enumerate(columns):
      ax.plot(data["step"], data["tensor_norms"][:, i], lw=1, color=cmap(color % 20),
              label=names[i][len(prefix):])
    if g.is_cwgnc and g.clip_norm is not None:
      ax.axhline(g.clip_norm, color="black", ls="--", lw=1, label=f"threshold c = {g.clip_norm:g}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title(f"{kind} run: seed {seed}, dev score {scores[seed]:.1f}")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("gradient L2 norm (before clipping)")
  axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
  fig.suptitle(f"Fig. 3: gradient norm of every tensor of encoder layer {layer} "
               f"(of {len(layers)}), {g.label} on {task_name(g.task)}")
  fig.tight_layout()
  _save(fig, path)
  return None


def _clipped_fraction(group: Group, seed: int) -> float | None:
  """The fraction of a CWGNC run's recorded (step, component) pairs whose component was
  clipped, or None without ``grad_norms.npz``."""
  path = group.seed_dir(seed) / files.GRAD_NORMS_FILE
  if not path.is_file():
    return None
  clipped = diagnostics.read_gradient_norms(path, _MOVE_LOG).get("clipped")
  return None if clipped is None else float(np.mean(clipped))


def figure_threshold_sweep(groups: Sequence[Group], path: Path) -> str | None:
  """Table 2 as a figure: per sweep, each seed's score and the mean +- std against c (log
  scale), and the fraction of (step, component) pairs CWGNC clipped."""
  found = sweeps([g for g in groups if g.summary["finished"]])
  if not found:
    return "no task has finished CWGNC runs at two or more thresholds"
  plt = _pyplot()
  fig, axes = plt.subplots(len(found), 2, figsize=(11, 4 * len(found)), squeeze=False)
  for (ax_score, ax_clip), (key, members) in zip(axes, found.items()):
    c = np.array([g.clip_norm for g in members])
    for g in members:
      runs = [r for r in g.summary["runs"] if "score" in r]
      scores = np.array([r["score"] for r in runs])
      failed = np.array([r["failed"] for r in runs])
      # Seeds spread a little along log c so that equal scores stay visible.
      x = g.clip_norm * np.exp(np.linspace(-0.06, 0.06, len(runs)) if len(runs) > 1 else [0.0])
      first = g is members[0]
      ax_score.scatter(x[~failed], scores[~failed], s=14, color="tab:blue", alpha=0.7,
                       zorder=3, label="seed" if first else None)
      ax_score.scatter(x[failed], scores[failed], s=20, color="tab:red", marker="x", zorder=3,
                       label="failed seed" if first else None)
      fractions = [f for f in (_clipped_fraction(g, r["seed"]) for r in runs) if f is not None]
      ax_clip.scatter([g.clip_norm] * len(fractions), 100 * np.array(fractions), s=14,
                      color="tab:blue", alpha=0.7)
    means = [g.summary["mean"] for g in members]
    stds = [g.summary["std"] for g in members]
    ax_score.errorbar(c, means, yerr=stds, fmt="D-", color="black", capsize=4, ms=5, lw=1,
                      label="mean ± std")
    ax_score.axhline(members[0].summary["majority_score"], color="gray", ls="--", lw=1,
                     label="majority classifier")
    ax_score.set_ylabel(f"dev {_task_header(key[0], members)} x100")
    ax_score.set_title(f"{_sweep_title(key)}: dev score")
    ax_score.legend(fontsize=8, loc="lower left")
    ax_clip.set_ylim(-3, 103)
    ax_clip.set_ylabel("component-steps clipped (%)")
    ax_clip.set_title(f"{_sweep_title(key)}: how often CWGNC clips")
    for ax in (ax_score, ax_clip):
      ax.set_xscale("log")
      ax.set_xticks(c, [f"{v:g}" for v in c])
      ax.minorticks_off()
      ax.set_xlabel("threshold c (per-tensor gradient norm)")
      ax.grid(alpha=0.3)
  fig.suptitle("Table 2: CWGNC's clipping threshold (n seeds per point as in the table)")
  fig.tight_layout()
  _save(fig, path)
  return None


FIGURES = (
    ("scores.png", figure_scores,
     "Every seed's dev score (x: failed) and each group's mean ± std; dashed: the majority "
     "classifier."),
    ("fig1_gradual_unfreezing.png", figure_gu,
     "Fig. 1: dev score after each gradual-unfreezing iteration (mean ± std over seeds); "
     "the line and band: full fine-tuning with the same optimizer."),
    ("fig2_4_5_gu_drift.png", figure_gu_drift,
     "Figs. 2, 4, 5: per layer, the maximum RMS difference and the minimum cosine similarity "
     "of its tensors, against the pretrained model and against the previous iteration, for "
     "the first 4 GU iterations (the head, with its fresh classifier, left out)."),
    ("drift_by_method.png", figure_drift_by_method,
     "Per layer, the maximum RMS difference and the minimum cosine similarity of its tensors "
     "against the pretrained model after training, per method (mean ± std over seeds; the "
     "head, with its fresh classifier, left out)."),
    ("table2_thresholds.png", figure_threshold_sweep,
     "Table 2 as a figure: each seed's dev score and the mean ± std against CWGNC's threshold "
     "c, and per seed the percentage of its recorded steps and components (every "
     "diagnostics_every-th step; a component is one tensor under the default labels) whose "
     "pre-clip gradient norm exceeded c."),
    ("fig3_gradient_norms.png", figure_gradient_norms,
     "Fig. 3: the pre-clip gradient norm of every tensor of the second-highest encoder layer "
     "(but the attention key bias, whose gradient is 0 up to rounding) over training, in a "
     "failed and a successful run of the same group."),
)


# -- The report. ---------------------------------------------------------------------------

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


def _staging_folder(out: Path) -> Path:
  """A new temporary folder inside ``out`` (made if need be), where the report is written
  before its files are moved into ``out``."""
  if out.exists() and not out.is_dir():
    raise NotADirectoryError(f"the report folder {out} is a file, not a folder: pass --out a "
                             "folder")
  try:
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out, prefix=".report-"))
  except OSError as error:
    raise OSError(f"cannot write the report to {out} ({error.strerror}): pass --out a folder "
                  "you can write") from None


def write_report(run_dirs: Sequence[str | Path], out: str | Path,
                 command: str | None = None) -> Path:
  """Writes ``out/report.md``, ``seeds.csv`` and the figures from the groups below
  ``run_dirs``.

  Every summary.json and results.json is read and checked before anything is written, and
  the files are made in a temporary folder inside ``out``, then moved there: bad input or a
  failure leaves an earlier report in ``out`` as it was.
  """
  settings = []
  for run_dir in run_dirs:
    groups = find_groups(run_dir)
    if not groups:
      raise FileNotFoundError(f"no study groups ({files.SUMMARY_FILE}) below {run_dir}")
    for group in groups:
      group.results()
    label_groups(groups)
    settings.append((Path(run_dir), groups))
  out = Path(out)
  lines = ["# Stability study report", ""]
  if command:
    lines += [f"Written by `{command}`.", ""]
  released = ", ".join(f"{t.name} {t.released_threshold:g}" for t in tasks.TASKS.values()
                       if t.released_threshold is not None)
  lines += ["Table 1: per task the number of finished seeds n, the Std (population), Mean and "
            "Max of the dev score (x100) over them, and the percentage of failed runs. A "
            "failed run's dev score is not above the majority classifier's (the paper's rule; "
            "rows marked \"failure rule 'released'\" use the released code's fixed "
            f"thresholds: {released}). A row's score is its final model's, except rows marked "
            "\"best dev evaluation\" (Mosbach et al.'s protocol: the best of the evaluations "
            f"during training). Beside each task, the paper's numbers ({paper.SOURCE}): "
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
      lines += [f"### Table 2: CWGNC threshold sweep on {_sweep_title(key)} (`{run_dir}`)",
                "", table2(members), ""]
      trend = sweep_trend(members)
      if trend:
        lines += [trend, ""]
    if found:
      lines += [f"### CWGNC against the baselines (`{run_dir}`)", "",
                "Std ratio: CWGNC's std over the baseline's. p-values, two-sided: "
                "Brown-Forsythe (equal spread), Welch (equal means), Fisher exact (equal "
                "failure rates); each uncorrected, then Holm's (`stats.holm`) over the family "
                f"of all {tests} tests on this page (a difference is significant at 0.05 only "
                "where Holm's p is below 0.05; '-': no test).", "",
                comparison_table(found, holm[first:first + 3 * len(found)]), ""]
      first += 3 * len(found)
    lines += ["Groups:", "", settings_list(groups), ""]
  everything = [g for _, groups in settings for g in groups]
  if len(settings) > 1:  # the figures show every setting: names must not collide across them
    label_groups(everything)
  staging = _staging_folder(out)
  try:
    write_seed_table(everything, staging / "seeds.csv")
    lines += ["Every finished seed's result: [seeds.csv](seeds.csv).", "", "## Figures", ""]
    skipped = {}
    for name, draw, caption in FIGURES:
      reason = draw(everything, staging / name)
      if reason is None:
        lines += [f"![{name}]({name})", "", caption, ""]
      else:
        skipped[name] = f"- `{name}` skipped: {reason}."
    if skipped:
      lines += ["Skipped figures:", "", *skipped.values(), ""]
    (staging / "report.md").write_text("\n".join(lines))
    # report.md last: once it is in place, so is everything it shows.
    for name in sorted(os.listdir(staging), key=lambda name: name == "report.md"):
      os.replace(staging / name, out / name)
    for name in skipped:
      (out / name).unlink(missing_ok=True)  # a stale figure of an earlier report
  except OSError as error:
    raise OSError(f"cannot write the report to {out} ({error.strerror or error}): pass --out "
                  "a folder you can write") from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return out / "report.md"


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m cwgnc_jax.report",
                                   description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="a study folder (cwgnc_jax.study --out) or a group folder")
  parser.add_argument("--out", help="where report.md and the figures go (default: the first "
                      "RUN_DIR)")
  args = parser.parse_args(argv)
  command = "python -m cwgnc_jax.report " + " ".join(argv)
  try:
    # The run folders stay as given: report.md names them, and only plain files are read.
    path = write_report(args.run_dirs, Path(args.out or args.run_dirs[0]).absolute(), command)
  except (OSError, ValueError) as e:
    print(f"cwgnc_jax.report: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(path)


if __name__ == "__main__":
  main(sys.argv[1:])
