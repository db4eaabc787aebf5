"""Predictions of a fine-tuned run on a GLUE split: ``python -m cwgnc_jax.predict``.

  python -m cwgnc_jax.predict RUN_DIR --split {test,dev} [--tsv FILE] [--out FILE]
      [--batch-size N]

predicts every example of the split with the parameters the run's ``results.json`` scored
(final, or best with ``keep_best``), in packed batches of ``N`` examples (default: the run's
``eval_batch_size``), and writes them to ``--out`` (default ``<TASK>.tsv`` for the test split,
the name the GLUE server expects, ``<TASK>-dev.tsv`` for dev; MNLI writes two, ``MNLI-m`` and
``MNLI-mm``, and its ``--out`` is their folder) in the GLUE submission format:

  index<TAB>prediction        the header line
  0<TAB>not_entailment        one line per example, in file order

Predictions are each task's ``Task.submission_labels``: label names for RTE and QNLI
(``entailment`` / ``not_entailment``) and MNLI (``entailment`` / ``neutral`` /
``contradiction``), 0 / 1 for MRPC (1 = equivalent), CoLA (1 = acceptable), SST-2 (1 =
positive) and QQP (1 = duplicate), as jiant's GLUE submission formatter writes them
(``glue_submission_formatter.py``: header ``index prediction``, ``GlueMixin.get_glue_preds``
with RTE's labels ``entailment, not_entailment`` and MRPC's and CoLA's ``0, 1``;
transformers' ``run_glue.py`` writes the same header but label names for every task). The
index is a test file's own first column (``index``; QQP's ``id``), and the row number (from
0) for dev files, which have no index column in MRPC, CoLA, SST-2 and QQP.

The split is read from ``--tsv FILE`` when given, else from the run's GLUE folder
(``config.glue_dir``, else ``$GLUE_DIR``): ``<TASK>/test.tsv`` in the test layout (no labels;
``data/glue.py``), ``<TASK>/dev.tsv`` as in training (or the hub's validation split when the
run read the hub); MNLI's ``test_matched``/``test_mismatched`` and ``dev_matched``/
``dev_mismatched`` (``--tsv``: the folder holding them). With labels (dev), the dev metric is
computed as the training loop's evaluation does and printed with the summary on stdout, with
every metric the task reports (``scores``: MRPC's and QQP's accuracy beside F1); MNLI's
summary is matched's, the run's score, with mismatched's under ``other_sets``.

Exit status: 0 done; 2 bad input (not a finished run, a missing or wrong TSV, an existing
or unwritable output file), reported in one line on stderr before any prediction.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from tqdm import tqdm

from cwgnc_jax import command_line, config as config_lib
from cwgnc_jax import files, metrics, saved_run, tasks
from cwgnc_jax.data import batching, glue
from cwgnc_jax.models import bert, loading
from cwgnc_jax.training import checkpoint

SPLITS = ("test", "dev")
HEADER = ("index", "prediction")


def default_output(submission: str, split: str) -> Path:
  """``RTE.tsv`` for the test split (the GLUE submission's file name, ``EvalSet.submission``),
  ``RTE-dev.tsv`` for dev."""
  return Path(f"{submission}.tsv" if split == "test" else f"{submission}-dev.tsv")


def check_output_file(path: str | Path) -> Path:
  """``path`` if a new file can be written there (never over an existing one)."""
  path = Path(path).absolute()
  if path.exists():
    raise ValueError(f"output file {path} already exists: pass another --out (nothing is "
                     "overwritten)")
  if not (path.parent.is_dir() and os.access(path.parent, os.W_OK | os.X_OK)):
    raise ValueError(f"output file {path} cannot be written: {path.parent} is not a writable "
                     "folder")
  return path


def set_files(task: tasks.Task, split: str, tsv: str | Path | None, out: str | Path | None
              ) -> list[tuple[tasks.EvalSet, Path | None, Path]]:
  """Per evaluation set of ``task``: the set, the file to read (None: the run's GLUE source)
  and the submission file to write. With one set, ``tsv`` and ``out`` are files; with several
  (MNLI), folders holding (to hold) the GLUE files of each set."""
  found = []
  for eval_set in task.eval_sets:
    name = default_output(eval_set.submission, split)
    if len(task.eval_sets) == 1:
      found.append((eval_set, tsv, Path(out or name)))
      continue
    stem = eval_set.test_file if split == "test" else eval_set.dev_file
    found.append((eval_set, tsv and Path(tsv) / f"{stem}.tsv", Path(out or ".") / name))
  return found


def read_split(run: saved_run.SavedRun, split: str, eval_set: tasks.EvalSet,
               tsv: str | Path | None) -> tuple[list[str], list[glue.Example]]:
  """``(indices, examples)`` of one evaluation set of the run's task: from ``tsv`` when given,
  else from the run's GLUE source (module docstring). Dev examples keep their labels; test
  ones have none."""
  task = run.task
  source = config_lib.glue_source(run.config)
  if tsv is None and split == "test":
    name = f"{task.name}/{eval_set.test_file}.tsv"
    if source == "hub":
      raise ValueError(f"the {task.name} test split is read from a GLUE test file: pass "
                       f"--tsv FILE, or set GLUE_DIR to a folder holding {name}")
    tsv = Path(source).expanduser() / name  # as training reads the folder
  if tsv is not None and not Path(tsv).is_file():
    raise FileNotFoundError(f"no {task.name} {split} file at {tsv}")
  if split == "test":
    return glue.read_test_tsv(task, Path(tsv))
  if tsv is None:
    examples = glue.load_examples(task.hub_config, eval_set.split, source)
  else:
    examples = glue.read_tsv(task, Path(tsv), eval_set.split)
    if not examples:
      raise ValueError(f"{tsv} holds no {task.name} examples")
  return [str(i) for i in range(len(examples))], examples


def predict_logits(model: bert.BertForSequenceClassification, data: glue.TokenizedSplit, *,
                   batch_size: int, max_length: int, progress: bool | None = None
                   ) -> np.ndarray:
  """float32 [N, num_labels]: the logits of every example of ``data`` (a tokenized split),
  in its order, from packed batches (``batching.eval_batches``, as the training loop's
  evaluation) on this process's default device. ``progress``: a progress bar on stderr
  (None: only when stderr is a terminal)."""
  graphdef, constants, params = bert.split_params(model)
  forward = jax.jit(bert.apply_fn(graphdef))
  logits = []
  batches = batching.eval_batches(data, batch_size, layout="packed", max_length=max_length)
  for batch in tqdm(batches, total=-(-len(data) // batch_size), unit="batch", file=sys.stderr,
                    disable=None if progress is None else not progress, dynamic_ncols=True):
    inputs = {key: batch[key] for key in bert.INPUT_KEYS}
    real = batch["example_mask"] == 1
    logits.append(np.asarray(forward(params, constants, inputs))[real])
  return np.concatenate(logits)


def write_submission(path: str | Path, indices: Sequence[str], predictions: np.ndarray,
                     task: tasks.Task) -> Path:
  """Writes ``index<TAB>prediction`` lines (after that header) to the new file ``path``:
  label ids as the GLUE server expects them (``Task.submission_labels``). The file appears
  complete or not at all (written beside it, then renamed)."""
  path = check_output_file(path)
  lines = ["\t".join(HEADER)] + [f"{index}\t{task.submission_labels[label]}"
                                 for index, label in zip(indices, predictions, strict=True)]
  try:
    files.write_atomic(path, lambda f: f.write("\n".join(lines) + "\n"), replace=False)
  except FileExistsError:
    raise ValueError(f"output file {path} appeared while the predictions were written: pass "
                     "another --out (nothing is overwritten)") from None
  except OSError as e:  # what the access check cannot foresee: /proc, a read-only mount
    raise ValueError(f"output file {path} cannot be written ({e.strerror}): pass another "
                     "--out") from None
  return path


def predict_run(run_dir: str | Path, split: str, *, tsv: str | Path | None = None,
                out: str | Path | None = None, batch_size: int | None = None,
                progress: bool | None = None) -> dict[str, Any]:
  """Predicts ``split`` of each evaluation set of the run's task with the run in ``run_dir``
  and writes its submission file (module docstring).

  Returns the summary of the task's first set: task, split, examples, output file, and with
  labels the dev metric and score (x100) and ``scores``, every metric the task reports; a
  task with several sets (MNLI) adds ``other_sets``, the others' examples, files and scores
  by submission name (``MNLI-mm``).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
  run = saved_run.open_run(run_dir)
  planned = [(eval_set, source, check_output_file(path))
             for eval_set, source, path in set_files(run.task, split, tsv, out)]
  read = [(eval_set, *read_split(run, split, eval_set, source), path)
          for eval_set, source, path in planned]
  model = saved_run.load_model(run)
  tokenizer = loading.load_tokenizer(run.model_name)
  max_length = run.config["max_length"]
  summaries = {}
  for eval_set, indices, examples, path in read:
    data = glue.tokenize(examples, tokenizer, max_length)
    logits = predict_logits(model, data, max_length=max_length, progress=progress,
                            batch_size=batch_size or run.config["eval_batch_size"])
    predictions = logits.argmax(-1)
    write_submission(path, indices, predictions, run.task)
    summary = {"examples": len(examples), "predictions": str(path)}
    if split == "dev":
      scores = metrics.scores(run.config["task"], predictions, data.labels)
      summary.update(metric=run.task.metric, score=scores[run.task.metric], scores=scores)
    summaries[eval_set.submission] = summary
  first, *others = summaries
  summary = {"task": run.config["task"], "split": split, "result": run.result,
             **summaries[first]}
  if others:
    summary["other_sets"] = {name: summaries[name] for name in others}
  return summary


PROG = "cwgnc_jax.predict"
USAGE = ("usage: python -m cwgnc_jax.predict RUN_DIR --split {test,dev} [--tsv FILE] "
         "[--out FILE] [--batch-size N]")


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
  """The command line as ``predict_run``'s keyword arguments, its paths made absolute
  (orbax takes absolute paths only)."""
  args = command_line.parse(argv, usage=USAGE, positionals=("RUN_DIR",),
                            flags=("--split", "--tsv", "--out", "--batch-size"))
  split, batch_size = args.values.get("--split"), args.values.get("--batch-size")
  # In argparse's words, as this command wrote them before command_line.py.
  if split is None:
    raise config_lib.ConfigError("the following arguments are required: --split")
  if split not in SPLITS:
    raise config_lib.ConfigError(f"argument --split: invalid choice: {split!r} (choose from "
                                 f"{', '.join(map(repr, SPLITS))})")
  if batch_size is not None and not batch_size.isdigit():
    raise config_lib.ConfigError(f"argument --batch-size: invalid int value: {batch_size!r}")
  path = lambda text: None if text is None else Path(text).absolute()
  return {"run_dir": path(args.positionals[0]), "split": split,
          "tsv": path(args.values.get("--tsv")), "out": path(args.values.get("--out")),
          "batch_size": None if batch_size is None else int(batch_size)}


def main(argv: list[str]) -> None:
  if command_line.asks_for_help(argv):
    print(__doc__.strip())
    return
  try:
    args = parse_args(argv)
  except config_lib.ConfigError as e:
    command_line.fail(PROG, f"{e} (python -m {PROG} --help)")
  try:
    summary = predict_run(**args)
  except (ValueError, OSError,  # RunDirError, a missing or wrong TSV, the output file
          checkpoint.CheckpointError) as e:
    command_line.fail_on(PROG, e)
  print(json.dumps(summary))
  for written in (summary, *summary.get("other_sets", {}).values()):
    print(f"predictions: {written['predictions']}", file=sys.stderr)


if __name__ == "__main__":
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  main(sys.argv[1:])
