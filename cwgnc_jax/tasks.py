"""Every GLUE task the package trains on, one ``Task`` entry each: the one place a task is
described. Adding a task is adding an entry to ``TASKS``; the loaders (``data/glue.py``),
metrics, config validation, study, report and predict read everything from it.

Tasks: the paper's RTE, MRPC and CoLA, and SST-2, QNLI, QQP and MNLI as transformers'
``run_glue.py`` has them (the hub dataset ``nyu-mll/glue``, its label ids and columns).

  * Label ids are the hub's: RTE and QNLI 0 = entailment, 1 = not_entailment; MRPC 1 =
    equivalent; CoLA 1 = acceptable; SST-2 1 = positive; QQP 1 = duplicate; MNLI 0 =
    entailment, 1 = neutral, 2 = contradiction.
  * Scores (``metrics.score``, x100): accuracy (RTE, SST-2, QNLI, MNLI), F1 of class 1 (MRPC,
    QQP; their accuracy is reported beside it, as GLUE does), Matthews correlation (CoLA).
  * A run's score is its task's first dev set, the split 'dev': training evaluates it, and
    summaries and reports show it. MNLI has two dev sets: ``dev_matched`` is the run's score
    (GLUE papers report MNLI-m first); ``dev_mismatched`` is not evaluated while training (a
    second pass at every evaluation) but ``predict --split dev`` predicts and scores both. Its
    test sets are submitted as ``MNLI-m.tsv`` and ``MNLI-mm.tsv``.
  * Failure thresholds: the majority classifier's score on every task; the released code's
    fixed thresholds (failure rule 'released') exist for RTE, MRPC and CoLA only.

A new task is one more entry: its files' layouts (``Layout``: header, column count, text and
label columns of train, dev and test files), label names and strings, hub config and columns,
metric, evaluation sets (``one_eval_set(name)`` but for MNLI-like tasks) and, where the
released code has one, its threshold. tests/test_tasks.py trains and reports a made-up one.

Any config trains any task: ``python train.py --config rte_cwgnc --config.task=mnli``
(``--config.glue_dir`` a folder holding ``MNLI/train.tsv``, ``MNLI/dev_matched.tsv`` and
``MNLI/dev_mismatched.tsv``, or the hub). The config files name the paper's three tasks only.

Left out: STS-B, a regression task (one float output and Pearson/Spearman scores, where
everything here is classification: argmax, majority classifier, failed runs); WNLI, whose dev
set is adversarial to its train set (the same sentences with other labels), so that BERT and
the GLUE baselines do not beat its majority classifier (56.3) and "failed" would mean nearly
every run. The GLUE diagnostic set AX (predicted by an MNLI model) is not written. The
original QQP files are known to hold malformed rows (transformers' ``QqpProcessor`` skips rows
missing a column); the strict reader refuses such a row, naming its line: read QQP from the
hub, or drop the row.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a GLUE TSV file holds its examples: ``header`` is its first line (None: no header),
  ``text`` the columns of the sentence(s), ``label`` the column of the label (None in test
  files, whose first column is the ``index`` a submission repeats)."""
  header: tuple[str, ...] | None
  columns: int
  text: tuple[int, ...]
  label: int | None = None


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One labelled dev set of a task and the unlabelled test set the GLUE server pairs with it.

  ``split`` is its name in the loaders (``'dev'`` for the run's score, or e.g.
  ``'dev_mismatched'``); ``dev_file`` and ``test_file`` are the file stems under
  ``<GLUE_DIR>/<TASK>/``; ``hub_dev_split`` is the hub's name of the dev split; ``submission``
  the stem of the submission file (``RTE``, ``MNLI-m``)."""
  split: str
  dev_file: str
  hub_dev_split: str
  test_file: str
  submission: str


def one_eval_set(name: str) -> tuple[EvalSet, ...]:
  """The evaluation sets of a task with one dev and one test file (all but MNLI)."""
  return (EvalSet("dev", "dev", "validation", "test", name),)


@dataclasses.dataclass(frozen=True)
class Task:
  """One GLUE task.

  ``name`` is both the display name and the task's folder in a GLUE download. ``label_names[i]``
  names label id ``i``; ``tsv_label`` maps a train or dev file's label strings to ids, and
  ``submission_labels[i]`` is how the GLUE server expects id ``i`` in a submission.
  ``hub_text`` are the text columns of the hub's rows. ``metric`` is the run's score
  (``metrics.METRICS``), ``also_reported`` further metrics printed beside it.
  ``released_threshold`` is the released code's fixed failure threshold (x100), None where it
  has none. ``eval_sets[0]`` scores the run.
  """
  name: str
  hub_config: str
  hub_text: tuple[str, ...]
  label_names: tuple[str, ...]
  metric: str
  train: Layout
  test: Layout
  tsv_label: dict[str, int]
  submission_labels: tuple[str, ...]
  eval_sets: tuple[EvalSet, ...]
  also_reported: tuple[str, ...] = ()
  released_threshold: float | None = None
  dev: Layout | None = None  # None: the train file's

  @property
  def num_labels(self) -> int:
    return len(self.label_names)

  @property
  def is_pair(self) -> bool:
    return len(self.hub_text) == 2

  @property
  def splits(self) -> tuple[str, ...]:
    """The labelled splits: 'train', then each evaluation set's."""
    return ("train", *(s.split for s in self.eval_sets))

  def eval_set(self, split: str) -> EvalSet:
    return next(s for s in self.eval_sets if s.split == split)

  def file_stem(self, split: str) -> str:
    """The stem of the split's file in a GLUE folder: ``train``, ``dev``, ``dev_matched``."""
    return "train" if split == "train" else self.eval_set(split).dev_file

  def hub_split(self, split: str) -> str:
    """The hub's name of the split: ``train``, ``validation``, ``validation_matched``."""
    return "train" if split == "train" else self.eval_set(split).hub_dev_split

  def layout(self, split: str) -> Layout:
    """The layout of the files of ``split``: 'train', 'test', or an evaluation set's."""
    return {"train": self.train, "test": self.test}.get(split) or self.dev or self.train


_NLI_LABELS = ("entailment", "not_entailment")
_NUMBERED = {"0": 0, "1": 1}


def _two_way_entailment(name: str, hub_config: str, first: str, second: str,
                        released_threshold: float | None = None) -> Task:
  """RTE and QNLI: ``index first second label`` files, entailment / not_entailment labels,
  scored by accuracy, submitted by label name."""
  return Task(
      name=name, hub_config=hub_config, hub_text=(first, second), label_names=_NLI_LABELS,
      metric="accuracy", train=Layout(("index", first, second, "label"), 4, (1, 2), 3),
      test=Layout(("index", first, second), 3, (1, 2)),
      tsv_label={label: i for i, label in enumerate(_NLI_LABELS)},
      submission_labels=_NLI_LABELS, eval_sets=one_eval_set(name),
      released_threshold=released_threshold)

_MNLI_COLUMNS = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                 "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                 "sentence2")

TASKS: dict[str, Task] = {
    "rte": _two_way_entailment("RTE", "rte", "sentence1", "sentence2",
                               released_threshold=53.0),
    "mrpc": Task(
        name="MRPC", hub_config="mrpc", hub_text=("sentence1", "sentence2"),
        label_names=("not_equivalent", "equivalent"), metric="f1",
        train=Layout(("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), 5, (3, 4), 0),
        test=Layout(("index", "#1 ID", "#2 ID", "#1 String", "#2 String"), 5, (3, 4)),
        tsv_label=_NUMBERED, submission_labels=("0", "1"), eval_sets=one_eval_set("MRPC"),
        also_reported=("accuracy",), released_threshold=75.0),
    "cola": Task(
        name="CoLA", hub_config="cola", hub_text=("sentence",),
        label_names=("unacceptable", "acceptable"), metric="mcc",
        train=Layout(None, 4, (3,), 1),
        test=Layout(("index", "sentence"), 2, (1,)),
        tsv_label=_NUMBERED, submission_labels=("0", "1"), eval_sets=one_eval_set("CoLA"),
        released_threshold=0.0),
    "sst2": Task(
        name="SST-2", hub_config="sst2", hub_text=("sentence",),
        label_names=("negative", "positive"), metric="accuracy",
        train=Layout(("sentence", "label"), 2, (0,), 1),
        test=Layout(("index", "sentence"), 2, (1,)),
        tsv_label=_NUMBERED, submission_labels=("0", "1"), eval_sets=one_eval_set("SST-2")),
    "qnli": _two_way_entailment("QNLI", "qnli", "question", "sentence"),
    "qqp": Task(
        name="QQP", hub_config="qqp", hub_text=("question1", "question2"),
        label_names=("not_duplicate", "duplicate"), metric="f1",
        train=Layout(("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), 6,
                     (3, 4), 5),
        test=Layout(("id", "question1", "question2"), 3, (1, 2)),
        tsv_label=_NUMBERED, submission_labels=("0", "1"), eval_sets=one_eval_set("QQP"),
        also_reported=("accuracy",)),
    "mnli": Task(
        name="MNLI", hub_config="mnli", hub_text=("premise", "hypothesis"),
        label_names=("entailment", "neutral", "contradiction"), metric="accuracy",
        train=Layout((*_MNLI_COLUMNS, "label1", "gold_label"), 12, (8, 9), 11),
        dev=Layout((*_MNLI_COLUMNS, *(f"label{i}" for i in range(1, 6)), "gold_label"), 16,
                   (8, 9), 15),
        test=Layout(_MNLI_COLUMNS, 10, (8, 9)),
        tsv_label={"entailment": 0, "neutral": 1, "contradiction": 2},
        submission_labels=("entailment", "neutral", "contradiction"),
        eval_sets=(EvalSet("dev", "dev_matched", "validation_matched", "test_matched",
                           "MNLI-m"),
                   EvalSet("dev_mismatched", "dev_mismatched", "validation_mismatched",
                           "test_mismatched", "MNLI-mm"))),
}


def get_task(name: str) -> Task:
  """The task called ``name``: its key ('rte', 'sst2') or display name ('CoLA', 'SST-2'),
  in any case."""
  key = str(name).lower()
  task = TASKS.get(key) or next((t for t in TASKS.values() if t.name.lower() == key), None)
  if task is None:
    raise ValueError(f"unknown GLUE task {name!r}; expected one of {sorted(TASKS)}")
  return task
