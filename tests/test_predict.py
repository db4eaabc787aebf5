"""Predictions on GLUE splits: the submission format, the test layouts of RTE, MRPC and CoLA,
the dev metric on real RTE dev against the run's own evaluation, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import command_line_error

from cwgnc_jax import predict, saved_run, tasks
from cwgnc_jax.data import batching, glue
from cwgnc_jax.models import load_tokenizer
from cwgnc_jax.training import checkpoint
from cwgnc_jax.training import step as step_lib

REPO = Path(__file__).resolve().parent.parent
# The published test layouts (MRPC's file starts with a byte-order mark), with made-up rows
# whose index column does not start at 0, so that a file's own indices are seen to be kept.
TEST_FILES = {
    "rte": "index\tsentence1\tsentence2\n"
           "7\tThe museum opened in 1902 and houses paintings.\tThe museum holds art.\n"
           "8\tHe sold the farm in May.\tHe bought a farm.\n"
           "9\tThe river floods every spring.\tThe river is dry.\n",
    "mrpc": "\ufeffindex\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            "7\t1089874\t1089925\tThe shares rose 5 percent .\tShares gained 5 percent .\n"
            "8\t3019446\t3019327\tThe vote was delayed .\tThe council met on Tuesday .\n"
            "9\t1945605\t1945824\tHe left at noon .\tHe departed at midday .\n",
    "cola": "index\tsentence\n7\tThe book was read by Mary.\n8\tRead Mary the book was.\n"
            "9\tWho did you see?\n",
}


def task_run(tiny_rte_run: Path, task: str, folder: Path) -> Path:
  """A copy of the tiny RTE run relabelled as a run of ``task`` (all three have 2 classes,
  so its parameters fit)."""
  shutil.copytree(tiny_rte_run, folder)
  for name in ("config.json", "results.json"):
    values = json.loads((folder / name).read_text())
    (folder / name).write_text(json.dumps({**values, "task": task}))
  return folder


def read_lines(path: Path) -> list[list[str]]:
  return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def padded_logits(model, tokenizer, examples) -> np.ndarray:
  """The model's logits on ``examples`` from one padded tokenizer batch: a layout and an
  order of computation independent of the packed batches predict uses."""
  texts = ([e.text_a for e in examples],
           [e.text_b for e in examples] if examples[0].text_b is not None else None)
  encoding = tokenizer(*texts, padding="max_length", truncation="longest_first",
                       max_length=128, return_tensors="np")
  return np.asarray(jax.jit(lambda inputs: model(inputs))(
      batching.inputs_from_padded(encoding)))


# The classifier kernel's factor in ``split_predictions``: the tiny model's margins (logit 1
# minus logit 0) span only 1.7e-4 over the 277 RTE dev examples (measured: -0.035455 to
# -0.035285), their neighbours mostly 1e-6 apart or less; times 1e4, the widest neighbouring
# gap in the middle half is over 1e-3 (asserted), so a boundary put in its middle is 5e-4
# from every example.
KERNEL_SCALE = 1e4
# How far from the decision boundary ``split_predictions`` keeps every example, at least.
MIN_GAP = 1e-3


def save_params(run: saved_run.SavedRun, params) -> None:
  """Replaces the run's result checkpoint by one holding ``params``."""
  shutil.rmtree(run.checkpoint_dir)
  checkpoints = checkpoint.Checkpointer(run.workdir / "checkpoints", keep=1)
  zero = np.zeros([], np.int32)
  state = step_lib.TrainState(zero, params, {}, zero)  # only the parameters are read back
  checkpoints.save(run.results["steps"], state, {"step": run.results["steps"]}, params)
  checkpoints.close()


def split_predictions(run_dir: Path, examples) -> np.ndarray:
  """Changes the run's classifier so that its predictions on ``examples`` split between the
  two classes with no example near the decision boundary, and returns the logits it then
  gives (padded).

  The tiny model predicts one class everywhere, and a prediction column in another order or
  with its labels swapped would look the same; after this, neither does. The kernel is scaled
  by KERNEL_SCALE, and the bias moved to the midpoint of the widest gap between neighbouring
  margins in their middle half; that gap is at least MIN_GAP. Not the median margin: that
  puts an example exactly on the boundary, where packed and padded logits, which differ in
  their last bits by CPU (an AVX2-only host flipped one), pick different classes."""
  run = saved_run.open_run(run_dir)
  tokenizer = load_tokenizer(run.model_name)
  params = checkpoint.read_params(run.checkpoint_dir, run.result)
  params["classifier"]["kernel"] = params["classifier"]["kernel"] * np.float32(KERNEL_SCALE)
  save_params(run, params)
  margins = np.sort(np.diff(padded_logits(saved_run.load_model(run), tokenizer, examples),
                            axis=-1)[:, 0])
  quarter = len(margins) // 4
  gaps = np.diff(margins)[quarter:len(margins) - 1 - quarter]
  i = quarter + int(np.argmax(gaps))
  assert margins[i + 1] - margins[i] >= MIN_GAP, np.max(gaps)
  boundary = (margins[i] + margins[i + 1]) / 2
  params["classifier"]["bias"] = params["classifier"]["bias"] + np.array([boundary, 0.0],
                                                                          np.float32)
  save_params(run, params)
  logits = padded_logits(saved_run.load_model(run), tokenizer, examples)
  # Half the gap, less the rounding of logits of ~260 (ulp 3e-5) when the bias is added.
  assert np.min(np.abs(np.diff(logits, axis=-1))) >= MIN_GAP / 2 - 1e-4
  assert set(logits.argmax(-1)) == {0, 1}
  return logits


@pytest.mark.parametrize("task, expected", [
    ("rte", ["entailment", "not_entailment", "not_entailment", "entailment"]),
    ("mrpc", ["0", "1", "1", "0"]),
    ("cola", ["0", "1", "1", "0"]),
])
def test_submission_file_is_index_tab_prediction(tmp_path, task, expected):
  """The GLUE server's format: a header, then the index and the label (names for RTE, 0/1
  for MRPC and CoLA)."""
  path = predict.write_submission(tmp_path / "out.tsv", ["3", "4", "5", "6"],
                                  np.array([0, 1, 1, 0]), tasks.get_task(task))
  assert path.read_bytes() == ("index\tprediction\n" + "".join(
      f"{i}\t{label}\n" for i, label in zip(range(3, 7), expected))).encode()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv"]  # no temporary file left
  with pytest.raises(ValueError, match="already exists"):
    predict.write_submission(path, ["0"], np.array([1]), tasks.get_task(task))
  assert path.read_bytes().startswith(b"index\tprediction\n3\t")


def test_a_submission_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
  """The access check passes, the write fails (as under /proc, or on a read-only mount), or
  another process makes the file meanwhile: a ValueError naming the file, which
  ``main`` prints as one line."""
  task, out = tasks.get_task("rte"), tmp_path / "out.tsv"
  def fails(error):
    def write_atomic(*_, **__):
      raise error
    return write_atomic
  monkeypatch.setattr(predict.files, "write_atomic", fails(OSError(30, "Read-only file system")))
  with pytest.raises(ValueError) as raised:
    predict.write_submission(out, ["0"], np.array([1]), task)
  assert str(raised.value) == (f"output file {out} cannot be written (Read-only file system): "
                               "pass another --out")
  monkeypatch.setattr(predict.files, "write_atomic", fails(FileExistsError(17, "File exists")))
  with pytest.raises(ValueError) as raised:
    predict.write_submission(out, ["0"], np.array([1]), task)
  assert str(raised.value) == (f"output file {out} appeared while the predictions were "
                               "written: pass another --out (nothing is overwritten)")


@pytest.mark.real
@pytest.mark.parametrize("task", sorted(TEST_FILES))
def test_test_split_of_each_layout(tiny_rte_run, tmp_path, task):
  run_dir = task_run(tiny_rte_run, task, tmp_path / "run")
  tsv = tmp_path / "test.tsv"
  tsv.write_text(TEST_FILES[task], encoding="utf-8")
  _, examples = glue.read_test_tsv(tasks.get_task(task), tsv)
  logits = split_predictions(run_dir, examples)
  summary = predict.predict_run(run_dir, "test", tsv=tsv, out=tmp_path / "out.tsv")
  assert summary == {"task": task, "split": "test", "result": "best", "examples": 3,
                     "predictions": str(tmp_path / "out.tsv")}
  lines = read_lines(tmp_path / "out.tsv")
  assert lines[0] == ["index", "prediction"]
  assert [index for index, _ in lines[1:]] == ["7", "8", "9"]
  labels = tasks.get_task(task).submission_labels
  assert [prediction for _, prediction in lines[1:]] == [labels[i] for i in logits.argmax(-1)]


@pytest.mark.real
def test_the_test_split_comes_from_the_runs_glue_dir_with_a_tilde(tiny_rte_run, tmp_path,
                                                                  monkeypatch):
  """``--config.glue_dir=~/glue`` (the shell leaves a tilde after '=' as it is) is where
  training read; the test split is read from there too."""
  run_dir = tmp_path / "run"
  shutil.copytree(tiny_rte_run, run_dir)
  config = json.loads((run_dir / "config.json").read_text())
  (run_dir / "config.json").write_text(json.dumps({**config, "glue_dir": "~/glue"}))
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  (tmp_path / "home" / "glue" / "RTE").mkdir(parents=True)
  (tmp_path / "home" / "glue" / "RTE" / "test.tsv").write_text(TEST_FILES["rte"])
  summary = predict.predict_run(run_dir, "test", tsv=None, out=tmp_path / "out.tsv")
  assert summary["examples"] == 3
  assert [index for index, _ in read_lines(tmp_path / "out.tsv")[1:]] == ["7", "8", "9"]


@pytest.mark.real
def test_dev_metric_on_real_rte_is_the_runs_evaluation(tiny_rte_run, tmp_path, monkeypatch,
                                                       capsys):
  """On the whole real RTE dev set, from the command line: the score of the run's evaluation
  (``results.json``), one line per example in file order, and the logits of padded batches
  in that order; then, with the classifier's bias moved so that half the examples change
  class, the file's predictions are the padded logits' in file order, and so is the score."""
  monkeypatch.chdir(tmp_path)
  predict.main([str(tiny_rte_run), "--split", "dev"])
  summary = json.loads(capsys.readouterr().out)
  results = json.loads((tiny_rte_run / "results.json").read_text())
  assert summary["predictions"] == str(tmp_path / "RTE-dev.tsv")  # the default --out
  assert summary["examples"] == results["dev_examples"] == 277
  # Exact, though predict and the run's evaluation are two programs: the run predicts one
  # class everywhere, every margin 0.035 from the boundary (measured), 1e6 times the
  # difference between two layouts' logits.
  assert summary["metric"] == "accuracy" and summary["score"] == results["score"]

  run_dir = shutil.copytree(tiny_rte_run, tmp_path / "split")
  run = saved_run.open_run(run_dir)
  examples = glue.load_examples("rte", "dev", run.config["glue_dir"])
  expected = split_predictions(run_dir, examples)
  predict.main([str(run_dir), "--split", "dev", "--out", str(tmp_path / "split.tsv")])
  summary = json.loads(capsys.readouterr().out)
  labels = np.array([e.label for e in examples])
  assert summary["score"] == pytest.approx(100 * np.mean(expected.argmax(-1) == labels))
  lines = read_lines(tmp_path / "split.tsv")
  assert lines[0] == ["index", "prediction"] and len(lines) == 278
  assert [index for index, _ in lines[1:]] == [str(i) for i in range(277)]
  model, tokenizer = saved_run.load_model(run), load_tokenizer(run.model_name)
  data = glue.tokenize(examples, tokenizer, run.config["max_length"])
  logits = predict.predict_logits(model, data, batch_size=run.config["eval_batch_size"],
                                  max_length=run.config["max_length"])
  # Packed and padded logits are two computations: measured 6.1e-5 apart at most (2.3e-7
  # relative; 2 float32 ulps of the logits' ~260). rtol 1e-6 allows 2.6e-4, less than the
  # 4e-4 that split_predictions keeps every example from the boundary: no prediction flips.
  np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=0)
  # After split_predictions the logits of different examples are at least 7.9e-4 apart
  # (median 1.8e-2; measured), 13x the layouts' difference, so an example's packed logits are
  # nearest to its own padded ones only when predict keeps the file order.
  distance = np.abs(logits[:, None, :] - expected[None, :, :]).max(-1)
  assert np.mean(distance.argmin(1) == np.arange(len(examples))) > 0.95
  names = ["entailment", "not_entailment"]
  assert [p for _, p in lines[1:]] == [names[i] for i in expected.argmax(-1)]


# -- Bad input: one line on stderr, exit status 2, nothing written. ------------------------

def run_main(argv: list[str], capsys) -> str:
  return command_line_error(predict.main, argv, capsys, "cwgnc_jax.predict")


@pytest.mark.real
def test_a_wrong_tsv_is_named(tiny_rte_run, glue_dir, tmp_path, capsys):
  out = tmp_path / "out.tsv"
  dev = glue_dir / "RTE" / "dev.tsv"
  assert (f"{dev}:1: header ['index', 'sentence1', 'sentence2', 'label'] is not the RTE test "
          "header" in run_main([str(tiny_rte_run), "--split", "test", "--tsv", str(dev),
                                "--out", str(out)], capsys))
  glue_folder = Path(json.loads((tiny_rte_run / "config.json").read_text())["glue_dir"])
  assert (f"no RTE test file at {glue_folder / 'RTE' / 'test.tsv'}"
          in run_main([str(tiny_rte_run), "--split", "test", "--out", str(out)], capsys))
  cola_test = tmp_path / "cola_test.tsv"
  cola_test.write_text(TEST_FILES["cola"], encoding="utf-8")
  cola_run = task_run(tiny_rte_run, "cola", tmp_path / "cola_run")
  assert (f"{cola_test}:1: 2 columns, expected 4 for CoLA"
          in run_main([str(cola_run), "--split", "dev", "--tsv", str(cola_test), "--out",
                       str(out)], capsys))
  assert not out.exists()


@pytest.mark.real
def test_an_existing_output_file_is_left_alone(tiny_rte_run, tmp_path, capsys):
  out = tmp_path / "RTE.tsv"
  out.write_text("mine\n")
  assert (f"output file {out} already exists"
          in run_main([str(tiny_rte_run), "--split", "dev", "--out", str(out)], capsys))
  assert out.read_text() == "mine\n"
  assert (f"output file {out / 'x.tsv'} cannot be written: {out} is not a writable folder"
          in run_main([str(tiny_rte_run), "--split", "dev", "--out", str(out / "x.tsv")],
                      capsys))
  assert f"no run directory at {tmp_path / 'nope'}" in run_main(
      [str(tmp_path / "nope"), "--split", "dev", "--out", str(tmp_path / "x.tsv")], capsys)
  assert "the following arguments are required: --split" in run_main(
      [str(tiny_rte_run)], capsys)
  assert "argument --split: invalid choice: 'train'" in run_main(
      [str(tiny_rte_run), "--split", "train"], capsys)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["RTE.tsv"]


@pytest.mark.real
def test_help_as_a_process():
  done = subprocess.run([sys.executable, "-m", "cwgnc_jax.predict", "--help"], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0 and "--split {test,dev}" in done.stdout
  assert "index<TAB>prediction" in done.stdout
