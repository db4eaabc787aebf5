"""The task registry: SST-2, QNLI, QQP and MNLI on fixtures in the real GLUE file layout
(tests/fixtures/glue), and a made-up task that is one registry entry.

Hand-computed numbers of the fixtures (train majority label -> dev score of predicting it):
  SST-2  train 5 positive of 8 -> dev 3 positive of 6: accuracy 50.0
  QNLI   train 5 not_entailment of 8 -> dev 2 not_entailment of 5: accuracy 40.0
  QQP    train 5 not_duplicate of 8 -> dev 3 duplicates of 6: F1 0.0 (no positive predicted),
         accuracy 50.0
  MNLI   train 4 neutral of 9 -> dev_matched 2 neutral of 5: accuracy 40.0; dev_mismatched
         1 neutral of 4: 25.0
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cwgnc_jax import config as config_lib
from cwgnc_jax import metrics, predict, study, tasks
from cwgnc_jax.data import glue
from cwgnc_jax.report import publish

FIXTURES = Path(__file__).parent / "fixtures" / "glue"
NEW_TASKS = ("sst2", "qnli", "qqp", "mnli")
# Per task: dev labels per evaluation set, and the train set's majority label.
DEV_LABELS = {"sst2": {"dev": [1, 0, 1, 1, 0, 0]}, "qnli": {"dev": [0, 1, 0, 1, 0]},
              "qqp": {"dev": [1, 0, 1, 0, 0, 1]},
              "mnli": {"dev": [1, 2, 0, 1, 0], "dev_mismatched": [2, 0, 1, 2]}}
MAJORITY = {"sst2": (1, 50.0), "qnli": (1, 40.0), "qqp": (0, 0.0), "mnli": (1, 40.0)}


def read_lines(path: Path) -> list[list[str]]:
  return [line.split("\t") for line in path.read_text().splitlines()]


@pytest.mark.parametrize("task", NEW_TASKS)
def test_fixtures_load_in_the_glue_layout(task):
  entry = tasks.get_task(task)
  train = glue.load_examples(task, "train", FIXTURES)
  assert metrics.majority_label([e.label for e in train]) == MAJORITY[task][0]
  for split, labels in DEV_LABELS[task].items():
    dev = glue.load_examples(task, split, FIXTURES)
    assert [e.label for e in dev] == labels
    assert (dev[0].text_b is None) == (not entry.is_pair)
  majority = metrics.majority_score(task, [e.label for e in train], DEV_LABELS[task]["dev"])
  assert majority == MAJORITY[task][1]
  assert entry.splits == ("train", *DEV_LABELS[task])


def test_each_file_s_columns_are_the_glue_ones():
  """Text and label come from the columns the GLUE files hold them in."""
  sst2 = glue.load_examples("sst2", "train", FIXTURES)[0]
  assert (sst2.text_a, sst2.text_b, sst2.label) == (
      "hide new secretions from the parental units ", None, 0)
  qqp = glue.load_examples("qqp", "train", FIXTURES)[1]
  assert (qqp.text_a, qqp.text_b, qqp.label) == (
      "How do I control my horny emotions?", "How do you control your horniness?", 1)
  qnli = glue.load_examples("qnli", "dev", FIXTURES)[2]
  assert qnli.text_a == 'What is the name of the "Palace of the Republic"?'  # bare quotes
  mnli = glue.load_examples("mnli", "dev_mismatched", FIXTURES)[1]
  assert (mnli.text_a, mnli.text_b, mnli.label) == (
      "The answer is yes, and here's why.", "The answer is yes, I will explain why.", 0)
  indices, examples = glue.read_test_tsv(tasks.get_task("mnli"),
                                         FIXTURES / "MNLI" / "test_mismatched.tsv")
  assert indices == ["0", "1"] and examples[1].text_b == "The answer is yes, I will explain why."
  indices, examples = glue.read_test_tsv(tasks.get_task("qqp"), FIXTURES / "QQP" / "test.tsv")
  assert indices == ["0", "1", "2"] and examples[0].text_a == "Why do rockets look white?"


def test_mnli_has_two_dev_sets_and_matched_scores_the_run():
  mnli = tasks.get_task("mnli")
  assert mnli.num_labels == 3 and mnli.label_names[1] == "neutral"
  assert [(s.split, s.dev_file, s.hub_dev_split, s.test_file, s.submission)
          for s in mnli.eval_sets] == [
              ("dev", "dev_matched", "validation_matched", "test_matched", "MNLI-m"),
              ("dev_mismatched", "dev_mismatched", "validation_mismatched", "test_mismatched",
               "MNLI-mm")]
  with pytest.raises(ValueError, match=r"unknown split 'test'.*'dev_mismatched'\) for MNLI"):
    glue.load_examples("mnli", "test", FIXTURES)
  with pytest.raises(ValueError, match=r"unknown split 'dev_mismatched'.* for SST-2"):
    glue.load_examples("sst2", "dev_mismatched", FIXTURES)


def test_hub_rows_of_the_new_tasks(monkeypatch):
  """The hub path as the existing tasks take it: ``load_dataset('nyu-mll/glue', config)``,
  the hub's split name and text columns."""
  datasets = pytest.importorskip("datasets")
  rows = {"validation_mismatched": [{"premise": "P.", "hypothesis": "H.", "label": 2,
                                     "idx": 7}],
          "validation": [{"question1": "Q1?", "question2": "Q2?", "label": 1, "idx": 3}]}
  calls = []
  monkeypatch.setattr(glue, "_hub_unreachable", lambda: False)
  monkeypatch.setattr(datasets, "load_dataset", lambda *a: calls.append(a) or rows)
  assert glue.load_examples("mnli", "dev_mismatched", "hub") == [glue.Example("P.", "H.", 2, "7")]
  assert glue.load_examples("qqp", "dev", "hub") == [glue.Example("Q1?", "Q2?", 1, "3")]
  assert calls == [("nyu-mll/glue", "mnli"), ("nyu-mll/glue", "qqp")]


def test_hub_offline_names_the_task_s_files(monkeypatch):
  for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy",
              "ALL_PROXY", "all_proxy"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
  with pytest.raises(ConnectionError, match=r"config 'mnli'.*MNLI/\{train,dev_matched,"
                     r"dev_mismatched\}\.tsv"):
    glue.load_examples("mnli", "train", "hub")


def test_qqp_scores_f1_and_accuracy():
  """Dev labels 1 0 1 0 0 1, predictions 1 1 0 0 0 1: TP 2, FP 1, FN 1, TN 2."""
  scores = metrics.scores("qqp", [1, 1, 0, 0, 0, 1], DEV_LABELS["qqp"]["dev"])
  assert scores == {"f1": pytest.approx(100 * 4 / 6), "accuracy": pytest.approx(100 * 4 / 6)}
  assert metrics.scores("sst2", [1, 1, 1, 1, 1, 1], DEV_LABELS["sst2"]["dev"]) == {
      "accuracy": 50.0}


def test_only_the_paper_s_tasks_have_released_thresholds():
  with pytest.raises(ValueError, match="no threshold for QNLI .*RTE, MRPC, CoLA"):
    metrics.failure_threshold("qnli", "released", 40.0)
  config = config_lib.apply_overrides(config_lib.load("rte_cwgnc"),
                                      [("task", "qnli"), ("failure_rule", "released"),
                                       ("glue_dir", str(FIXTURES))])
  with pytest.raises(config_lib.ConfigError, match="'released' has no threshold for task"):
    config_lib.validate(config)


def test_a_run_needs_train_and_the_dev_set_it_scores(tmp_path):
  """Config validation checks the files a run reads: MNLI's train and dev_matched."""
  config = config_lib.apply_overrides(config_lib.load("rte_cwgnc"),
                                      [("task", "mnli"), ("glue_dir", str(tmp_path))])
  (tmp_path / "MNLI").mkdir()
  shutil.copy(FIXTURES / "MNLI" / "train.tsv", tmp_path / "MNLI" / "train.tsv")
  with pytest.raises(config_lib.ConfigError, match=r"cannot read .*MNLI/dev_matched\.tsv: .* "
                     r"must hold MNLI/train\.tsv and MNLI/dev_matched\.tsv$"):
    config_lib.validate(config)
  shutil.copy(FIXTURES / "MNLI" / "dev_matched.tsv", tmp_path / "MNLI" / "dev_matched.tsv")
  config_lib.validate(config)


# -- End to end: train, evaluate, report, predict. ------------------------------------------

def _overrides(tiny_bert_dir: Path, task: str, glue_dir: Path) -> list[tuple[str, str]]:
  return [("task", task), ("model", str(tiny_bert_dir)), ("glue_dir", str(glue_dir)),
          ("batch_size", "16"), ("eval_batch_size", "16"), ("layout", "padded"),
          ("num_epochs", "1"), ("progress", "false"), ("diagnostics_every", "0")]


def _train_and_report(tiny_bert_dir, task, glue_dir, out: Path) -> tuple[dict, Path]:
  """One seed of ``demo`` on ``task`` (one step: every fixture fits a batch of 16), and its
  report."""
  summary = study.run_study("demo", _overrides(tiny_bert_dir, task, glue_dir), [1], out)
  report = publish.write_report([out], out / "report")
  return summary, report


# MNLI (3 classes, two dev sets, two submission files) in the README's command; the three
# two-class tasks, 25-60 s each on one core, with the slow tests (.ci/run runs them).
@pytest.mark.real
@pytest.mark.parametrize("task", [pytest.param(task, marks=pytest.mark.slow)
                                  for task in ("sst2", "qnli", "qqp")] + ["mnli"])
def test_each_new_task_trains_evaluates_reports_and_predicts(tiny_bert_dir, tmp_path, capsys,
                                                             task):
  entry = tasks.get_task(task)
  summary, report = _train_and_report(tiny_bert_dir, task, FIXTURES, tmp_path / "study")
  assert summary["finished"] == 1 and summary["metric"] == entry.metric
  assert summary["majority_score"] == MAJORITY[task][1]
  run_dir = tmp_path / "study" / summary["group"] / "seed_1"
  results = json.loads((run_dir / "results.json").read_text())
  assert results["steps"] == 1 and results["dev_examples"] == len(DEV_LABELS[task]["dev"])
  text = report.read_text()
  header = f"{entry.name} ({metrics.METRICS[entry.metric]}): n"
  assert header in text and "| CWGNC (c = 0.05) | 1 |" in text

  # Dev: the run's score again, from the predictions file, by hand; MNLI's mismatched too.
  (tmp_path / "dev").mkdir()
  dev = predict.predict_run(run_dir, "dev", out=tmp_path / "dev" if task == "mnli" else
                            tmp_path / "dev.tsv")
  sets = [dev, *dev.get("other_sets", {}).values()]
  for eval_set, found in zip(entry.eval_sets, sets, strict=True):
    names = [p for _, p in read_lines(Path(found["predictions"]))[1:]]
    predicted = [entry.submission_labels.index(name) for name in names]
    labels = DEV_LABELS[task][eval_set.split]
    accuracy = 100 * np.mean(np.array(predicted) == labels)
    assert found["scores"]["accuracy"] == pytest.approx(accuracy)
    assert found["score"] == found["scores"][entry.metric]
  assert dev["score"] == pytest.approx(results["score"], abs=1e-9)
  if task == "mnli":
    assert sorted(p.name for p in (tmp_path / "dev").iterdir()) == ["MNLI-m-dev.tsv",
                                                                     "MNLI-mm-dev.tsv"]
    assert list(dev["other_sets"]) == ["MNLI-mm"]
    (tmp_path / "cli").mkdir()  # the command line: --out names the folder of both files
    capsys.readouterr()
    predict.main([str(run_dir), "--split", "dev", "--out", str(tmp_path / "cli")])
    assert capsys.readouterr().err.splitlines() == [
        f"predictions: {tmp_path / 'cli' / name}" for name in ("MNLI-m-dev.tsv",
                                                                "MNLI-mm-dev.tsv")]
  if task == "qqp":
    assert set(dev["scores"]) == {"f1", "accuracy"}

  # Test: the GLUE server's file names, indices and label strings.
  out = tmp_path / "test"
  out.mkdir()
  test = predict.predict_run(run_dir, "test", out=out if task == "mnli" else
                             out / f"{entry.name}.tsv")
  written = {p.name: read_lines(p) for p in out.iterdir()}
  expected = {"sst2": {"SST-2.tsv": 3}, "qnli": {"QNLI.tsv": 3}, "qqp": {"QQP.tsv": 3},
              "mnli": {"MNLI-m.tsv": 3, "MNLI-mm.tsv": 2}}[task]
  assert {name: len(lines) - 1 for name, lines in written.items()} == expected
  for lines in written.values():
    assert lines[0] == ["index", "prediction"]
    assert [i for i, _ in lines[1:]] == [str(i) for i in range(len(lines) - 1)]
    assert {p for _, p in lines[1:]} <= set(entry.submission_labels)
  assert test["examples"] == 3


def _made_up_task() -> tasks.Task:
  """A single-sentence task in a layout of its own: ``text<TAB>stars``, ratings 1 to 3."""
  return tasks.Task(
      name="STARS", hub_config="stars", hub_text=("text",),
      label_names=("bad", "fair", "good"), metric="accuracy",
      train=tasks.Layout(("text", "stars"), 2, (0,), 1),
      test=tasks.Layout(("index", "text"), 2, (1,)),
      tsv_label={"1": 0, "2": 1, "3": 2}, submission_labels=("1", "2", "3"),
      eval_sets=tasks.one_eval_set("STARS"))


@pytest.mark.real
def test_a_made_up_task_is_one_registry_entry(tiny_bert_dir, tmp_path, monkeypatch):
  """An entry monkeypatched into the registry trains one step, reports and predicts: no other
  file knows the task."""
  monkeypatch.setitem(tasks.TASKS, "stars", _made_up_task())
  folder = tmp_path / "glue" / "STARS"
  folder.mkdir(parents=True)
  ratings = {"train": ["3", "3", "1", "2", "3"], "dev": ["3", "1", "3", "2"]}
  for split, stars in ratings.items():
    rows = [f"a film I rate {s} , \"{i}\"\t{s}" for i, s in enumerate(stars)]
    (folder / f"{split}.tsv").write_text("text\tstars\n" + "\n".join(rows) + "\n")
  summary, report = _train_and_report(tiny_bert_dir, "stars", tmp_path / "glue",
                                      tmp_path / "study")
  assert summary["majority_score"] == 50.0  # 'good' (3 of 5 in train), 2 of 4 in dev
  assert summary["metric"] == "accuracy" and summary["finished"] == 1
  assert "STARS (accuracy): n" in report.read_text()
  with (tmp_path / "study" / "report" / "seeds.csv").open() as f:
    (row,) = list(csv.DictReader(f))
  assert (row["task"], row["majority_score"]) == ("stars", "50.0000")
  (folder / "test.tsv").write_text("index\ttext\n0\tfine\n1\tawful\n")
  run_dir = tmp_path / "study" / summary["group"] / "seed_1"
  predict.predict_run(run_dir, "test", out=tmp_path / "STARS.tsv")
  lines = read_lines(tmp_path / "STARS.tsv")
  assert lines[0] == ["index", "prediction"] and [i for i, _ in lines[1:]] == ["0", "1"]
  assert {p for _, p in lines[1:]} <= {"1", "2", "3"}


def test_every_task_s_entry_is_consistent():
  """Labels, label strings and layouts agree within each entry."""
  for key, task in tasks.TASKS.items():
    assert tasks.get_task(task.name) is task and task.hub_config == key
    assert sorted(task.tsv_label.values()) == list(range(task.num_labels))
    assert len(task.submission_labels) == task.num_labels
    assert task.metric in metrics.METRICS
    assert set(task.also_reported) <= set(metrics.METRICS)
    assert task.eval_sets[0].split == "dev"
    for split in (*task.splits, "test"):
      layout = task.layout(split)
      assert layout.header is None or len(layout.header) == layout.columns
      assert len(layout.text) == len(task.hub_text)
      assert max(layout.text) < layout.columns
