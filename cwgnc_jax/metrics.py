"""GLUE dev metrics (x100) and the failed-run criterion of the stability protocol.

Each task's metric is its ``tasks.Task.metric``, one of ``METRICS``: accuracy, F1 of the
positive class 1 (MRPC: paraphrase, QQP: duplicate), or the Matthews correlation
coefficient. A run has failed when its dev score does not beat a threshold
(``failure_threshold``), by one of two rules:

  majority   the paper's: the majority classifier's score, predicting the train set's
             majority label for every dev example (SPEC section 3: RTE 52.7, MRPC F1 81.2,
             CoLA MCC 0.0 on the public dev sets);
  released   the authors' released ``compute_variance.py``: fixed thresholds RTE 0.53,
             MRPC 0.75, CoLA 0.0 on the 0-1 scale (its ``majority_vote_map``), the tasks'
             ``released_threshold``; the other tasks have none.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cwgnc_jax.tasks import TASKS, get_task

FAILURE_RULES = ("majority", "released")
# The metrics' names in tables and figures.
METRICS = {"accuracy": "accuracy", "f1": "F1", "mcc": "MCC"}


def _labels(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
  array = np.asarray(values)
  if array.ndim != 1 or array.size == 0:
    raise ValueError(f"{what} must be a non-empty 1-D sequence, got shape {array.shape}")
  # Class ids, not scores: probabilities cast to int would give a plausible wrong metric
  # (scikit-learn refuses them too).
  if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
    raise ValueError(f"{what} must be class ids (integers), got {array.dtype} values such as "
                     f"{array[0].item()!r}: take argmax of logits first")
  return array.astype(np.int64)


def score(task_name: str, predictions: Sequence[int] | np.ndarray,
          labels: Sequence[int] | np.ndarray, metric: str | None = None) -> float:
  """The task's dev metric x100 (``metric``, default the task's: RTE accuracy, MRPC F1 of
  the positive class 1, CoLA MCC, ...).

  MCC = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), taken as 0 when a factor
  of the denominator is 0 (constant predictions), as scikit-learn does.
  """
  # scikit-learn is imported here, not at the top: the command lines import this module to
  # check a config, and scikit-learn takes seconds to import.
  from sklearn import metrics as skm  # pylint: disable=import-outside-toplevel
  compute = {"accuracy": skm.accuracy_score,
             "f1": lambda y, p: skm.f1_score(y, p, pos_label=1, zero_division=0.0),
             "mcc": skm.matthews_corrcoef}
  metric = metric or get_task(task_name).metric
  predictions, labels = _labels(predictions, "predictions"), _labels(labels, "labels")
  if predictions.shape != labels.shape:
    raise ValueError(f"{predictions.size} predictions for {labels.size} labels")
  return 100.0 * float(compute[metric](labels, predictions))


def scores(task_name: str, predictions: Sequence[int] | np.ndarray,
           labels: Sequence[int] | np.ndarray) -> dict[str, float]:
  """The task's metric and those reported beside it (``Task.also_reported``: accuracy for
  MRPC and QQP), by name, x100."""
  task = get_task(task_name)
  return {metric: score(task_name, predictions, labels, metric)
          for metric in (task.metric, *task.also_reported)}


def majority_label(train_labels: Sequence[int] | np.ndarray) -> int:
  """The most frequent training label (the smaller id on a tie)."""
  return int(np.argmax(np.bincount(_labels(train_labels, "train_labels"))))


def majority_score(task_name: str, train_labels: Sequence[int] | np.ndarray,
                   eval_labels: Sequence[int] | np.ndarray) -> float:
  """The score of predicting the train majority label for every eval example (x100)."""
  eval_labels = _labels(eval_labels, "eval_labels")
  return score(task_name, np.full_like(eval_labels, majority_label(train_labels)), eval_labels)


def failure_threshold(task_name: str, rule: str, majority: float) -> float:
  """The score a run must beat (x100): ``majority`` (the majority classifier's score, from
  ``majority_score``) under rule 'majority', the released code's fixed threshold of the task
  under 'released'."""
  if rule == "majority":
    return majority
  if rule == "released":
    task = get_task(task_name)
    if task.released_threshold is None:
      raise ValueError(f"the released code has no threshold for {task.name} (only for "
                       f"{', '.join(released_tasks())}): use failure rule 'majority'")
    return task.released_threshold
  raise ValueError(f"unknown failure rule {rule!r}; valid: {', '.join(FAILURE_RULES)}")


def released_tasks() -> list[str]:
  """The display names of the tasks with a released threshold (``Task.released_threshold``)."""
  return [task.name for task in TASKS.values() if task.released_threshold is not None]


def is_failed(run_score: float, threshold: float) -> bool:
  """A failed run does not beat the threshold (``failure_threshold``): ``score <= threshold``
  (both rules compare with ``<=``)."""
  return run_score <= threshold
