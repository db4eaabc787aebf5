"""The study folders a report reads, checked before anything is written: each group's
summary.json and its seeds' results.json (``read_summary``, ``read_results``, ``Group``,
``load_settings``); how groups are named (``label_groups``), ordered (``row_order``,
``tasks_in``) and gathered into threshold sweeps (``sweeps``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cwgnc_jax import files, identity, methods, metrics, tasks

GU_NAMES = {"gu": "GU", "gu_restart": "GU (restart)"}
# Overrides that say where the data is, not what is computed: never part of a row name.
_LOCATION_KEYS = ("glue_dir", "cache_dir", "task")


# What the report reads of the files cwgnc_jax.study and train.py write, by key: its types.
# A summary.json's aggregates (and majority score) are numbers once a seed has finished.
SUMMARY_FIELDS = {"task": str, "method": str, "config": dict, "overrides": dict, "seeds": list,
                  "finished": int, "runs": list}
SUMMARY_AGGREGATES = ("std", "mean", "max", "min", "failed_percent", "majority_score")
SUMMARY_RUN_FIELDS = {"seed": int, "score": files.NUMBER, "failed": bool}
DRIFT_FIELDS = {"max_rms": files.NUMBER, "min_cos": files.NUMBER}
_REWRITE_SUMMARY = "rerun the study command that wrote it, which rewrites it"
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
    return identity.without_removed_keys(self.summary["config"])

  @property
  def unfreezing(self) -> str:
    key, before = identity.LATER_GROUPS["unfreezing"]  # groups from before GU: "none"
    return self.config.get("unfreezing", {}).get(key, before)

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
    form = identity.later_key(self.config, "optimizer.adam_form")
    return form if optimizer.get("bias_correction") else None

  @property
  def setting(self) -> tuple:
    """What a comparison of methods holds equal (``tables.comparisons``): the task, the
    learning rate, and the model, data and batch every row shares. Each row's own protocol
    (optimizer recipe, epochs, evaluations kept) may differ, as in the paper's Table 1; groups
    at another rate or scale answer another question (a harsher rate, a smaller model)."""
    config = self.config
    return (self.task, config["optimizer"]["learning_rate"], config["model"],
            config["batch_size"], config.get("train_limit"), config.get("max_length"),
            config.get("dtype"))

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


def row_order(group: Group) -> tuple:
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


def load_settings(run_dirs: Sequence[str | Path]) -> list[tuple[Path, list[Group]]]:
  """Per RUN_DIR (one setting), its groups: every summary.json and results.json read and
  checked, the groups labelled within the setting (``label_groups``)."""
  settings = []
  for run_dir in run_dirs:
    groups = find_groups(run_dir)
    if not groups:
      raise FileNotFoundError(f"no study groups ({files.SUMMARY_FILE}) below {run_dir}")
    for group in groups:
      group.results()
    label_groups(groups)
    settings.append((Path(run_dir), groups))
  return settings


def task_name(task: str) -> str:
  """The task's display name (``tasks.Task.name``); a task no longer registered, as stored."""
  return tasks.TASKS[task].name if task in tasks.TASKS else task


def tasks_in(groups: Sequence[Group]) -> list[str]:
  """The groups' tasks in the registry's order, then any unregistered ones."""
  present = {g.task for g in groups}
  return [t for t in tasks.TASKS if t in present] + sorted(present - set(tasks.TASKS))


def task_header(task: str, groups: Sequence[Group]) -> str:
  """The task's name, with its metric where its groups name one: 'RTE (accuracy)'."""
  used = {g.summary.get("metric") for g in groups if g.task == task} - {None}
  metric = metrics.METRICS.get(next(iter(used)), "") if len(used) == 1 else ""
  return f"{task_name(task)} ({metric})" if metric else task_name(task)


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


def sweep_title(key: tuple[str, float, int]) -> str:
  """A sweep's key (``sweeps``) in words: 'CoLA, lr 2e-5, 5 epochs'."""
  task, learning_rate, epochs = key
  rate = np.format_float_scientific(learning_rate, trim="-", exp_digits=1)  # 1e-4, 2.5e-5
  return f"{task_name(task)}, lr {rate}, {epochs} epochs"
