"""GLUE metrics x100, the majority classifier and the failed-run criterion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cwgnc_jax import metrics, tasks
from cwgnc_jax.data import glue


def test_scores_by_hand():
  predictions, labels = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
  # TP 2, FP 1, FN 1, TN 2.
  assert metrics.score("rte", predictions, labels) == pytest.approx(100 * 4 / 6)
  assert metrics.score("mrpc", predictions, labels) == pytest.approx(100 * 4 / 6)
  assert metrics.score("cola", predictions, labels) == pytest.approx(100 * (4 - 1) / 9)
  # F1 is of class 1 only: swapping the classes changes it.
  assert metrics.score("mrpc", [1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(100 * 4 / 5)
  assert metrics.score("mrpc", [0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(100 * 2 / 3)
  assert metrics.score("mrpc", [0, 0], [1, 1]) == 0.0
  assert metrics.score("cola", [1, 1, 1], [1, 0, 1]) == 0.0  # constant predictions


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match="3 predictions for 2 labels"):
    metrics.score("rte", [0, 1, 1], [0, 1])
  with pytest.raises(ValueError, match="predictions must be a non-empty 1-D"):
    metrics.score("rte", [], [])
  with pytest.raises(ValueError, match="unknown GLUE task 'stsb'"):
    metrics.score("stsb", [0], [0])
  # Probabilities are not class ids (cast to int they would score 33.33 here).
  with pytest.raises(ValueError, match=r"predictions must be class ids \(integers\), got "
                     r"float64 values such as 0\.9: take argmax of logits first"):
    metrics.score("rte", [0.9, 0.2, 0.6], [1, 0, 1])
  assert metrics.score("rte", np.array([True, False, True]), [1, 0, 0]) == pytest.approx(
      200 / 3)


def test_majority_classifier():
  assert metrics.majority_label([0, 1, 1, 0, 1]) == 1
  assert metrics.majority_label([1, 0]) == 0  # a tie picks the smaller id
  # MRPC: train is mostly paraphrases (1), dev has 3 of 4: F1 = 2*3 / (2*3 + 1).
  assert metrics.majority_score("mrpc", [1, 1, 0], [1, 0, 1, 1]) == pytest.approx(600 / 7)
  assert metrics.majority_score("mrpc", [0, 0, 1], [1, 0, 1, 1]) == 0.0
  assert metrics.majority_score("rte", [0, 0, 1], [1, 0, 1, 1]) == 25.0


def test_failed_means_not_beating_the_majority():
  assert metrics.is_failed(52.7, 52.7)
  assert metrics.is_failed(0.0, 0.0)
  assert not metrics.is_failed(0.1, 0.0)
  assert {key: task.released_threshold for key, task in tasks.TASKS.items()
          if task.released_threshold is not None} == {"rte": 53.0, "mrpc": 75.0, "cola": 0.0}


def test_failure_threshold_of_each_rule():
  # The paper's rule: the majority classifier's score; the released code's: fixed values.
  assert metrics.failure_threshold("rte", "majority", 52.71) == 52.71
  assert metrics.failure_threshold("RTE", "released", 52.71) == 53.0
  assert metrics.failure_threshold("mrpc", "released", 81.22) == 75.0
  assert metrics.failure_threshold("cola", "released", 0.0) == 0.0
  # An RTE run at 52.8 beats the majority (52.71) but not the released threshold (53).
  assert not metrics.is_failed(52.8, metrics.failure_threshold("rte", "majority", 52.71))
  assert metrics.is_failed(52.8, metrics.failure_threshold("rte", "released", 52.71))
  with pytest.raises(ValueError, match="unknown failure rule 'strict'"):
    metrics.failure_threshold("rte", "strict", 52.71)


def test_mrpc_majority_from_the_published_format(tmp_path):
  """On files in the MRPC format, the train majority (paraphrase) scores F1 2p / (p + n_pos)."""
  folder = tmp_path / "MRPC"
  folder.mkdir()
  header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
  for split, labels in (("train", [1, 1, 0, 1, 0]), ("dev", [1, 0, 0, 1, 1, 1])):
    rows = "".join(f"{y}\t{i}\t{i + 1}\tSentence \" {i} .\tOther {i} .\n"
                   for i, y in enumerate(labels))
    (folder / f"{split}.tsv").write_text(header + rows, encoding="utf-8")
  train = [e.label for e in glue.load_examples("mrpc", "train", tmp_path)]
  dev = [e.label for e in glue.load_examples("mrpc", "dev", tmp_path)]
  # Precision 4/6, recall 1: F1 = 2 * 4 / (6 + 4) = 0.8.
  assert metrics.majority_score("mrpc", train, dev) == pytest.approx(80.0)


@pytest.mark.real
def test_real_majority_scores_on_dev(glue_dir):
  def labels(task, split):
    return [e.label for e in glue.load_examples(task, split, glue_dir)]
  rte = metrics.majority_score("rte", labels("rte", "train"), labels("rte", "dev"))
  assert rte == pytest.approx(100 * 146 / 277) and round(rte, 1) == 52.7
  assert metrics.majority_label(labels("rte", "train")) == 0  # entailment, 1249 of 2490
  cola = metrics.majority_score("cola", labels("cola", "train"), labels("cola", "dev"))
  assert cola == 0.0 and not math.isnan(cola)
  assert metrics.majority_label(labels("cola", "train")) == 1  # acceptable
