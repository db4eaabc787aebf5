"""The README's commands as a user types them: relative paths, from a working directory of the
user's own (issue 31: orbax refused ``runs/demo_seed1``).

Each command is read from README.md, so a change to either the README or the code that
parts them fails here, and run as written (``python -m MODULE ARGS``: the module run as
``__main__`` by ``runpy``, as ``python -m`` runs it, in this process) in a temporary working
directory. The study's command gets overrides appended that shrink it to one step of the tiny
BERT; its relative ``--out``, and a relative model and GLUE folder, are what is tested.
"""

from __future__ import annotations

import csv
import json
import re
import runpy
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from cwgnc_jax import config as config_lib
from cwgnc_jax import command_line
from cwgnc_jax import methods, predict, saved_run, table1
from cwgnc_jax.data import glue
from cwgnc_jax.training import checkpoint

README = Path(__file__).resolve().parent.parent / "README.md"
RTE_TEST = ("index\tsentence1\tsentence2\n"
            "7\tThe museum opened in 1902 and houses paintings.\tThe museum holds art.\n"
            "8\tHe sold the farm in May.\tHe bought a farm.\n"
            "9\tThe river floods every spring.\tThe river is dry.\n")


def readme_commands(module: str) -> list[list[str]]:
  """Every ``python -m cwgnc_jax.<module>`` command in README.md's bash blocks, as argument
  lists: continued lines joined, comments and optional ``[...]`` arguments left out."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
    for line in block.replace("\\\n", " ").splitlines():
      args = shlex.split(line, comments=True)
      if args[:3] == ["python", "-m", f"cwgnc_jax.{module}"]:
        optional = [i for i, arg in enumerate(args) if arg.startswith("[")]
        if optional:
          end = next(i for i, arg in enumerate(args) if arg.endswith("]"))
          args = args[:optional[0]] + args[end + 1:]
        commands.append(args)
  assert commands, f"README.md has no python -m cwgnc_jax.{module} command"
  return commands


def run(args: list[str], capsys) -> tuple[int, str, str]:
  """``(exit status, stdout, stderr)`` of ``args`` (``python -m MODULE ...``), run as
  ``python -m`` runs a module, in the current working directory."""
  assert args[:2] == ["python", "-m"], args
  argv = sys.argv
  sys.argv = [args[2], *args[3:]]
  try:
    runpy.run_module(args[2], run_name="__main__", alter_sys=True)
    status = 0
  except SystemExit as e:
    status = e.code
  finally:
    sys.argv = argv
  out = capsys.readouterr()
  return status, out.out, out.err


@pytest.fixture()
def user_dir(tmp_path, monkeypatch, tiny_rte_run) -> Path:
  """A working directory holding the finished tiny run at the README's ``runs/demo_seed1``."""
  (run_dir,) = {args[3] for args in readme_commands("export") + readme_commands("predict")}
  assert not Path(run_dir).is_absolute()
  shutil.copytree(tiny_rte_run, tmp_path / run_dir)
  monkeypatch.chdir(tmp_path)
  return tmp_path


@pytest.mark.real
@pytest.mark.filterwarnings("ignore:'cwgnc_jax.*' found in sys.modules:RuntimeWarning")
def test_export_and_predict_as_the_readme_writes_them(user_dir, capsys):
  (export_args,) = readme_commands("export")
  status, _, err = run(export_args, capsys)
  assert status == 0, err
  folder = user_dir / export_args[4]
  config = json.loads((folder / "config.json").read_text())
  assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
  run_dir = saved_run.open_run(user_dir / export_args[3])
  best = checkpoint.read_params(run_dir.checkpoint_dir, run_dir.result)  # the run keeps best
  with safe_open(folder / "model.safetensors", framework="numpy") as stored:
    np.testing.assert_array_equal(stored.get_tensor("classifier.bias"),
                                  best["classifier"]["bias"])

  dev_args, test_args = readme_commands("predict")
  assert dev_args[dev_args.index("--split") + 1] == "dev"
  status, out, err = run(dev_args, capsys)
  assert status == 0, err
  summary = json.loads(out)
  assert summary["predictions"] == str(user_dir / "RTE-dev.tsv")
  assert summary["score"] == run_dir.results["score"] and summary["examples"] == 277
  assert len((user_dir / "RTE-dev.tsv").read_text().splitlines()) == 278

  tsv = Path(test_args[test_args.index("--tsv") + 1])
  assert not tsv.is_absolute()
  tsv.parent.mkdir(parents=True)
  tsv.write_text(RTE_TEST)
  status, out, err = run(test_args, capsys)
  assert status == 0, err
  written = user_dir / test_args[test_args.index("--out") + 1]
  assert json.loads(out)["predictions"] == str(written)
  expected = predict.predict_run(run_dir.workdir, "test", tsv=user_dir / tsv,
                                 out=user_dir / "absolute.tsv")
  assert expected["examples"] == 3
  assert written.read_text() == (user_dir / "absolute.tsv").read_text()
  assert [line.split("\t")[0] for line in written.read_text().splitlines()] == [
      "index", "7", "8", "9"]


@pytest.mark.real
@pytest.mark.filterwarnings("ignore:'cwgnc_jax.*' found in sys.modules:RuntimeWarning")
def test_study_and_report_with_relative_folders(tiny_bert_dir, tiny_rte_dir, tmp_path,
                                                monkeypatch, capsys):
  """The README's study, shrunk to one step of the tiny BERT on a GLUE folder and a model
  folder given relative to the working directory, with the README's relative ``--out``;
  then the README's report of it, and a prediction of its seed from another directory, with
  the folders the run recorded."""
  monkeypatch.chdir(tmp_path)
  shutil.copytree(tiny_rte_dir, "data/glue")
  shutil.copytree(tiny_bert_dir, "models/tiny")
  # The CPU study (not the GPU section's, nor --table1's).
  (study_args,) = [args for args in readme_commands("study")
                   if "--config.model=minilm-l6" in args and "--table1" not in args]
  out = Path(study_args[study_args.index("--out") + 1])
  assert not out.is_absolute()
  # test_study's tiny runs (its _tiny_overrides), so the session's compilation cache holds
  # their programs for both.
  tiny = ["--seeds", "1", "--config.model=models/tiny", "--config.glue_dir=data/glue",
          "--config.batch_size=8", "--config.eval_batch_size=8", "--config.layout=padded",
          "--config.num_epochs=2", "--config.progress=false",
          "--config.optimizer.learning_rate=1e-3", "--config.diagnostics_every=2"]
  status, stdout, err = run(study_args + tiny, capsys)
  assert status == 0, err
  (summary_file,) = out.glob("*/summary.json")
  summary = json.loads(summary_file.read_text())
  assert json.loads(stdout)["mean"] == summary["mean"] == summary["runs"][0]["score"]
  assert err.rstrip().endswith(f"summary: {tmp_path / summary_file}")
  seed_dir = summary_file.parent / "seed_1"
  recorded = json.loads((seed_dir / "config.json").read_text())
  assert (recorded["model"], recorded["glue_dir"]) == (str(tmp_path / "models/tiny"),
                                                       str(tmp_path / "data/glue"))

  (report_args,) = readme_commands("report")
  report_out = report_args[report_args.index("--out") + 1]
  assert report_args[3] == str(out) and not Path(report_out).is_absolute()
  status, stdout, err = run(report_args, capsys)
  assert status == 0, err
  assert stdout.strip() == str(tmp_path / report_out / "report.md")
  report = (tmp_path / report_out / "report.md").read_text()
  assert f"## Table 1: `{out}`" in report
  (row,) = csv.DictReader((tmp_path / report_out / "seeds.csv").open())
  assert (row["seed"], float(row["score"])) == ("1", pytest.approx(summary["mean"], abs=1e-4))

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  status, stdout, err = run(["python", "-m", "cwgnc_jax.predict", f"../{seed_dir}",
                             "--split", "dev"], capsys)
  assert status == 0, err
  assert json.loads(stdout)["score"] == summary["runs"][0]["score"]


def test_environment_folders_are_absolute(tmp_path, monkeypatch):
  """``$GLUE_DIR`` and ``$CWGNC_CACHE`` relative to the working directory (the README's
  ``GLUE_DIR=../shared/glue``), and a relative ``--workdir`` and config file."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("GLUE_DIR", "../shared/glue")
  assert glue.default_source() == str(tmp_path / "../shared/glue")
  monkeypatch.setenv("CWGNC_CACHE", "cache")
  assert glue.cache_folder(None) == tmp_path / "cache"
  monkeypatch.setenv("GLUE_DIR", "hub")
  assert glue.default_source() == "hub"
  shutil.copy(config_lib.config_path("demo"), tmp_path / "mine.py")
  assert config_lib.config_path("mine.py") == tmp_path / "mine.py"
  _, _, workdir = command_line.train_args(["--config", "mine.py", "--workdir", "runs/x",
                                         "--config.model=minilm-l6"])
  assert workdir == str(tmp_path / "runs/x")


def test_the_table1_command_plans_every_row_on_every_task(tmp_path, monkeypatch):
  """The README's ``--table1`` command (its optional ``--workers`` left out): every row of
  Table 1 on RTE and CoLA at their rates, in its relative ``--out``."""
  monkeypatch.chdir(tmp_path)
  (table1_args,) = [args for args in readme_commands("study") if "--table1" in args]
  plan = table1.parse_args(table1_args[3:])
  assert [e.config_arg for e in plan.entries] == [
      f"{task}_{row}" for task in ("rte", "cola") for row in methods.TABLE1]
  assert {dict(e.overrides)["optimizer.learning_rate"] for e in plan.entries[:5]} == {"2e-5"}
  assert {dict(e.overrides)["optimizer.learning_rate"] for e in plan.entries[5:]} == {"1e-4"}
  assert plan.out == tmp_path / "runs" / "table1" and plan.workers is None
