"""The whole of Table 1 in one command (``study --table1``) and its worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cwgnc_jax import config as config_lib
from cwgnc_jax import files, methods, study, table1, workers
from cwgnc_jax.training import checkpoint
from conftest import assert_same_up_to_rounding, command_line_error

REPO = Path(__file__).resolve().parent.parent


# -- The plan. -----------------------------------------------------------------------------

def _one_group_name(argv: list[str]) -> str:
  """The group folder ``python -m cwgnc_jax.study <argv>`` (one group) trains."""
  config_arg, overrides, *_ = study.parse_args(argv)
  config = config_lib.apply_overrides(config_lib.load(config_arg), overrides)
  return study.group_name(config_arg, study.group_overrides(config, overrides))


def test_table1_trains_the_groups_of_the_one_group_commands(tmp_path):
  """Each (task, row) of --table1 is the group folder of the one-group study at the task's
  rate, e.g. the lead's ``--config cola_cwgnc --config.model=minilm-l6
  --config.optimizer.learning_rate=1e-4``: either command resumes the other's seeds."""
  common = ["--config.model=minilm-l6", "--config.progress=false", "--out", str(tmp_path)]
  plan = table1.parse_args(["--table1", "--tasks", "rte,cola", "--seeds", "10", *common])
  folders = table1.check(plan)
  assert [f.parent for f in folders.values()] == [tmp_path] * 10
  assert [f.name for f in folders.values()] == [
      _one_group_name(["--config", f"{task}_{row}", f"--config.optimizer.learning_rate={lr}",
                       "--seeds", "3-3", *common])
      for task, lr in (("rte", "2e-5"), ("cola", "1e-4")) for row in methods.TABLE1]
  assert list(folders.values())[-1].name == (
      "cola_cwgnc__model=minilm-l6__optimizer.learning_rate=0.0001")
  assert list(folders.values())[0].name == (
      "rte_bertadam__model=minilm-l6__optimizer.learning_rate=2e-05")
  assert all(e.seeds == tuple(range(1, 11)) for e in plan.entries)
  assert plan.workers is None and plan.seeds_per_program == 1
  # Each row keeps its protocol: the configs' epochs, evaluations and best-of.
  protocols = {e.config_arg: study.open_group(e.config_arg, e.overrides, e.seeds, tmp_path)
               .config for e in plan.entries}
  assert [(protocols[f"cola_{r}"].num_epochs, protocols[f"cola_{r}"].evals_per_epoch,
           protocols[f"cola_{r}"].keep_best) for r in methods.TABLE1] == [
               (3, 1, False), (3, 1, False), (20, 3, True), (20, 3, True), (5, 1, False)]
  assert protocols["cola_mixout"].mixout.p == 0.9

  # --lr changes one task's rate; --config.optimizer.learning_rate sets every task's.
  names = [f.name for f in table1.check(table1.parse_args(
      ["--table1", "--tasks", "cola,rte", "--rows", "cwgnc", "--lr", "rte=2e-4", *common]))
           .values()]
  assert names == ["cola_cwgnc__model=minilm-l6__optimizer.learning_rate=0.0001",
                   "rte_cwgnc__model=minilm-l6__optimizer.learning_rate=0.0002"]
  plan = table1.parse_args(["--table1", "--tasks", "rte,cola", "--rows", "adamw,cwgnc",
                            "--config.optimizer.learning_rate=3e-5", "--workers=2", *common])
  assert [f.name.split("rate=")[1] for f in table1.check(plan).values()] == ["3e-05"] * 4
  assert plan.workers == 2 and [e.config_arg for e in plan.entries] == [
      "rte_adamw", "rte_cwgnc", "cola_adamw", "cola_cwgnc"]
  # A one-group study with workers.
  plan = table1.parse_args(["--config", "rte_adamw", "--seeds", "2", "--workers", "3"])
  assert plan.entries == (table1.Entry("rte_adamw", (), (1, 2)),) and plan.workers == 3


@pytest.mark.parametrize("argv, message", [
    (["--table1", "--config", "rte_adamw"], "pass --tasks and --rows, not --config"),
    (["--table1", "--tasks", "rte,sst2"], "--tasks rte,sst2: expected distinct names of rte, "
                                          "mrpc, cola"),
    (["--table1", "--rows", "cwgnc,cwgnc"], "--rows cwgnc,cwgnc: expected distinct names"),
    (["--table1", "--tasks", "rte", "--lr", "cola=1e-4"], "--lr cola=1e-4: expected task=rate"),
    (["--table1", "--tasks", "rte", "--lr", "rte=fast"], "--lr rte=fast: expected task=rate"),
    (["--table1", "--tasks", "rte", "--lr", "rte=-1e-4"], "--lr rte=-1e-4: expected task=rate"),
    (["--table1", "--tasks", "rte", "--lr", "rte=1e-4",
      "--config.optimizer.learning_rate=1e-4"], "--lr and --config.optimizer.learning_rate"),
    (["--table1", "--workers", "0"], "--workers 0: expected an int >= 1"),
    (["--table1=yes"], "--table1 takes no value"),
    (["--config", "rte_adamw", "--workers", "2", "--tasks", "rte"], "--tasks goes with --table1"),
    (["--table1", "--tasks", "rte", "--config.seed=3"], "--seeds instead"),
    (["--table1", "--tasks", "rte", "--config.num_epochs=0"], "num_epochs"),
    # A misspelt flag: the usage shows both forms, each with its flags.
    (["--table1", "--task", "rte"], "[--lr TASK=RATE,...] [--seeds ...] [--workers N]"),
    (["--config", "rte_adamw", "--worker", "2"], "or python -m cwgnc_jax.study --table1 "
                                                 "[--tasks rte,mrpc,cola] [--rows ROW,...]"),
])
def test_bad_input_exits_2_in_one_line(argv, message, capsys, tmp_path):
  error = command_line_error(study.main, [*argv, "--out", str(tmp_path / "out")], capsys,
                             "cwgnc_jax.study")
  assert message in error
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("error, at_once", [
    (files.LockedError("run folder /r is in use by process 7"), False),
    (files.WriteError("cannot write /r/results.json (No space left on device)"), True),
    (checkpoint.CheckpointError("checkpoint /r/checkpoints/2 cannot be restored (x)"), True),
])
def test_a_seed_that_fails_in_one_process_ends_it_as_a_one_group_study_does(
    error, at_once, capsys, monkeypatch, tmp_path):
  """--workers 1 trains in this process: a seed's error is one line and status 2, and a
  write the disk refused or a checkpoint that cannot be restored ends the process without
  its shutdown, where orbax's threads and reads left behind would print (``at_once``)."""
  def run_study(*args):
    raise error
  def exit_at_once(status):
    raise SystemExit(f"at once {status}")
  monkeypatch.setattr(study, "run_study", run_study)
  monkeypatch.setattr(os, "_exit", exit_at_once)
  argv = ["--config", "rte_adamw", "--seeds", "1", "--workers", "1", "--out", str(tmp_path)]
  with pytest.raises(SystemExit) as exit_info:
    study.main(argv)
  assert exit_info.value.code == ("at once 2" if at_once else 2)
  assert capsys.readouterr().err == f"cwgnc_jax.study: error: {error}\n"


def test_workers_get_their_own_cores_and_gpus():
  assert workers.assignments(2, [0, 1, 2, 3], []) == [([0, 1], []), ([2, 3], [])]
  assert workers.assignments(3, [0, 1, 2, 3, 4], []) == [([0], []), ([1, 2], []),
                                                         ([3, 4], [])]
  # Fewer cores than workers (a test pinned to one core): they share.
  assert workers.assignments(2, [5], []) == [([5], []), ([5], [])]
  assert workers.assignments(3, [0, 1], []) == [([0], []), ([1], []), ([0], [])]
  assert workers.assignments(2, list(range(16)), ["0", "1"]) == [
      (list(range(8)), ["0"]), (list(range(8, 16)), ["1"])]
  assert workers.assignments(2, [0], ["0", "1", "2", "3"])[1] == ([0], ["2", "3"])
  with pytest.raises(config_lib.ConfigError, match="--workers 3: only 2 GPUs"):
    workers.assignments(3, [0], ["4", "7"])


def test_visible_gpus_and_default_workers(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert workers.visible_gpus() == []
  monkeypatch.setattr(workers, "usable_cores", lambda: [0, 1, 2])
  assert workers.default_workers() == 3 // workers.CPU_CORES_PER_RUN
  monkeypatch.setattr(workers, "visible_gpus", lambda: ["0", "1"])
  assert workers.default_workers() == 2


def test_workers_begin_on_different_seeds():
  seeds = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  assert workers.rotated(seeds, 0, 2) == seeds
  assert workers.rotated(seeds, 1, 2) == [6, 7, 8, 9, 10, 1, 2, 3, 4, 5]
  assert workers.rotated(seeds, 2, 3) == [7, 8, 9, 10, 1, 2, 3, 4, 5, 6]
  assert workers.rotated([7], 1, 2) == [7]


def test_progress_line():
  assert workers.progress_line(3, ["rte_cwgnc seed 4"], 2, 1, 1) == (
      "cwgnc_jax.study: 3/6 seeds done, 1 running (rte_cwgnc seed 4), 2 waiting; workers: 1 "
      "running, 1 failed")


# -- Whole runs on the tiny BERT. ----------------------------------------------------------

def _tiny(tiny_bert_dir: Path, glue: Path | None = None, epochs: int = 2) -> list[str]:
  return [f"--config.model={tiny_bert_dir}", "--config.batch_size=8",
          "--config.eval_batch_size=8", "--config.layout=padded", f"--config.num_epochs={epochs}",
          "--config.progress=false", "--config.diagnostics_every=0",
          *([f"--config.glue_dir={glue}"] if glue else [])]


def _study(argv: list[str], **kwargs) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  return subprocess.Popen([sys.executable, "-m", "cwgnc_jax.study", *argv], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _results(folder: Path) -> dict[tuple[str, int], dict]:
  """Every seed's results.json below a study folder, without its timings."""
  found = {}
  for path in sorted(folder.glob("*/seed_*/results.json")):
    results = json.loads(path.read_text())
    del results["timings"]
    found[(path.parent.parent.name, results["seed"])] = results
  return found


@pytest.mark.real
@pytest.mark.slow
def test_two_workers_train_what_one_process_trains(tiny_bert_dir, tiny_rte_dir, tmp_path):
  """Two workers (both on this test's cores) over two rows and three seeds: every seed once,
  with the results of one process; each summary lists each seed once. A worker is pinned to
  one core and XLA:CPU splits its work by the cores it sees, so its sums may round otherwise
  than the one process's on two (losses measured 1e-10 apart): floats at rtol 1e-5, scores
  exact (this tiny model predicts one class on all 19 dev examples, at every evaluation)."""
  argv = ["--table1", "--tasks", "rte", "--rows", "adamw,cwgnc", "--seeds", "3",
          *_tiny(tiny_bert_dir, tiny_rte_dir)]
  assert table1.main([*argv, "--workers", "1", "--out", str(tmp_path / "one")]) == 0
  pool = _study([*argv, "--workers", "2", "--out", str(tmp_path / "two")])
  out, err = pool.communicate(timeout=600)
  assert pool.returncode == 0, err
  one, two = _results(tmp_path / "one"), _results(tmp_path / "two")
  assert sorted(two) == [(g, s) for g in sorted({g for g, _ in one}) for s in (1, 2, 3)]
  assert_same_up_to_rounding(two, one)
  lines = err.splitlines()
  assert lines[-1] == ("cwgnc_jax.study: 6/6 seeds done, 0 running, 0 waiting; workers: 0 "
                       "running, 0 failed")
  assert [json.loads(line)["group"] for line in out.splitlines()] == sorted(
      {g for g, _ in one}, key=lambda g: not g.startswith("rte_adamw"))
  for group in {g for g, _ in one}:
    summary = files.read_json(tmp_path / "two" / group / files.SUMMARY_FILE)
    assert [r["seed"] for r in summary["runs"]] == [1, 2, 3]
    assert summary["seeds"] == [1, 2, 3] and summary["finished"] == 3
    for run in summary["runs"]:
      assert run["score"] == two[(group, run["seed"])]["score"]
  # Run again: nothing left to train, nothing trained again (no results file rewritten).
  written = {p: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("*/seed_*/results.json")}
  again = _study([*argv, "--workers", "2", "--out", str(tmp_path / "two")])
  assert again.wait(timeout=600) == 0
  assert _results(tmp_path / "two") == two
  assert {p: p.stat().st_mtime_ns for p in written} == written and len(written) == 6


def _children(pid: int) -> list[int]:
  return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _wait(condition, what: str, proc: subprocess.Popen, seconds: float = 300) -> None:
  deadline = time.monotonic() + seconds
  while not condition():
    assert proc.poll() is None, f"exited ({proc.returncode}) before {what}: {proc.stderr.read()}"
    assert time.monotonic() < deadline, f"no {what} in {seconds} s"
    time.sleep(0.05)


@pytest.mark.real
@pytest.mark.slow
def test_a_worker_that_dies_leaves_its_seed_for_a_rerun(tiny_bert_dir, tiny_rte_dir, tmp_path):
  """Two workers, one seed: one trains it, the other finds it taken and ends. The trainer is
  killed (SIGKILL): the command names the seed and exits 1; run again, it trains the seed."""
  argv = ["--config", "demo", "--seeds", "7-7", "--workers", "2", "--out", str(tmp_path),
          *_tiny(tiny_bert_dir, tiny_rte_dir, epochs=10)]
  (folder,) = table1.check(table1.parse_args(argv)).values()
  pool = _study(argv)
  run_dir = files.seed_dir(folder, 7)
  _wait(lambda: files.is_locked(run_dir), "a worker holding seed 7", pool)
  holder = int((run_dir / files.LOCK_FILE).read_text())
  os.kill(holder, signal.SIGSTOP)  # it cannot finish the seed while the other worker ends
  _wait(lambda: _children(pool.pid) == [holder], "the other worker's end", pool)
  os.kill(holder, signal.SIGKILL)
  _, err = pool.communicate(timeout=300)
  assert pool.returncode == 1, err
  assert err.splitlines()[-1] == (f"cwgnc_jax.study: error: not finished: {folder.name} seed "
                                  "7; rerun the same command to resume them")
  assert "workers: 0 running, 1 failed" in err
  assert not (run_dir / files.RESULTS_FILE).exists()

  rerun = _study(argv)
  _, err = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, err
  summary = files.read_json(folder / files.SUMMARY_FILE)
  assert [r["seed"] for r in summary["runs"]] == [7] and summary["finished"] == 1


@pytest.mark.real
@pytest.mark.slow
def test_sigterm_stops_every_worker_and_the_runs_resume(tiny_bert_dir, tiny_rte_dir, tmp_path):
  argv = ["--config", "demo", "--seeds", "2", "--workers", "2", "--out", str(tmp_path),
          "--config.checkpoint_every=5", *_tiny(tiny_bert_dir, tiny_rte_dir, epochs=20)]
  (folder,) = table1.check(table1.parse_args(argv)).values()
  pool = _study(argv)
  _wait(lambda: all(files.is_locked(files.seed_dir(folder, s)) for s in (1, 2)),
        "both seeds training", pool)
  workers_started = _children(pool.pid)
  assert len(workers_started) == 2
  pool.send_signal(signal.SIGTERM)
  _, err = pool.communicate(timeout=300)
  assert pool.returncode == 128 + signal.SIGTERM, err
  assert "rerun the same command to resume" in err.splitlines()[-1]
  # Each worker saved its seed at a step boundary (training.preemption), as train.py does.
  for worker in (0, 1):
    assert f"cwgnc_jax.study: worker {worker}: stopped by SIGTERM at step " in err, err
  for pid in workers_started:  # every worker is gone, and its run directory free
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
        f"/proc/{pid}/status").read_text()
  assert not any(files.is_locked(files.seed_dir(folder, s)) for s in (1, 2))
  rerun = _study(argv)
  _, err = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, err
  assert files.read_json(folder / files.SUMMARY_FILE)["finished"] == 2


MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_SENTENCES = [
    ("Amrozi accused his brother , whom he called \" the witness \" , of deliberately "
     "distorting his evidence .", "Referring to him as only \" the witness \" , Amrozi accused "
     "his brother of deliberately distorting his evidence ."),
    ("Yucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 billion .",
     "Yucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 "
     "billion in 1998 ."),
    ("They had published an advertisement on the Internet on June 10 , offering the cargo for "
     "sale , he added .", "On June 10 , the ship 's owners had published an advertisement on "
     "the Internet , offering the explosives for sale ."),
    ("The stock rose $ 2.11 , or about 11 percent , to close Friday at $ 21.51 on the New York "
     "Stock Exchange .", "PG & E Corp. shares jumped $ 1.63 or 8 percent to $ 21.03 on the New "
     "York Stock Exchange on Friday ."),
]


def _write_mrpc(folder: Path, split: str, rows: int) -> None:
  """``rows`` rows of MRPC's published layout (quality first, a byte-order mark before the
  header), the four sentence pairs over and over, labels 1, 1, 0, 1, 1, 0, ... (MRPC is
  two-thirds paraphrases)."""
  lines = [MRPC_HEADER]
  for i in range(rows):
    a, b = MRPC_SENTENCES[i % len(MRPC_SENTENCES)]
    lines.append(f"{int(i % 3 != 2)}\t{1000 + i}\t{2000 + i}\t{a}\t{b}\n")
  (folder / "MRPC").mkdir(parents=True, exist_ok=True)
  (folder / "MRPC" / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")


@pytest.mark.real
@pytest.mark.slow
def test_the_same_command_runs_mrpc_where_glue_dir_has_it(tiny_bert_dir, tmp_path, monkeypatch):
  glue = tmp_path / "glue"
  _write_mrpc(glue, "train", 16)
  _write_mrpc(glue, "dev", 8)
  monkeypatch.setenv("GLUE_DIR", str(glue))
  argv = ["--table1", "--tasks", "mrpc", "--rows", "adamw,cwgnc", "--seeds", "1",
          "--workers", "1", "--out", str(tmp_path / "runs"), *_tiny(tiny_bert_dir),
          f"--config.cache_dir={tmp_path / 'cache'}"]
  assert table1.main(argv) == 0
  for row in ("adamw", "cwgnc"):
    (path,) = (tmp_path / "runs").glob(f"mrpc_{row}__*/{files.SUMMARY_FILE}")
    summary = files.read_json(path)
    assert summary["config"]["optimizer"]["learning_rate"] == 2e-5  # MRPC's default rate
    assert (summary["task"], summary["metric"], summary["finished"]) == ("mrpc", "f1", 1)
    results = files.read_json(path.parent / "seed_1" / files.RESULTS_FILE)
    assert results["dev_examples"] == 8 and results["train_examples"] == 16
    # The train set's majority label (1, equivalent: 11 of 16) for every dev pair: F1 of
    # precision 6/8 and recall 1.
    assert summary["majority_score"] == pytest.approx(100 * 2 * 0.75 / 1.75)
