"""The many-seed study: command line, group names, aggregates, shared compilation, resume."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cwgnc_jax import config as config_lib
from cwgnc_jax import files, study
from cwgnc_jax.report import publish
from cwgnc_jax.training import loop
from cwgnc_jax.training import run as run_lib

REPO = Path(__file__).resolve().parent.parent


# -- Command line and names. ---------------------------------------------------------------

def test_seeds_are_a_count_or_a_list():
  assert study.parse_seeds("3") == [1, 2, 3]
  assert study.parse_seeds("1,2,5") == [1, 2, 5]
  assert study.parse_seeds("0,42") == [0, 42]
  # One seed alone is a range: a lone number is a count ('3' is seeds 1, 2 and 3).
  assert study.parse_seeds("7-7") == [7]
  assert study.parse_seeds("9-11,2") == [9, 10, 11, 2]
  for bad in ("0", "-2", "1,1", "a", "1,,2", "1,-3", "5-3", "3-", "1-2-3", "1-3,2"):
    with pytest.raises(config_lib.ConfigError, match="--seeds"):
      study.parse_seeds(bad)


def _expand_seeds(seeds: str) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", "-c", 'source experiments/seeds.sh && expand_seeds "$1"',
                         "expand_seeds", seeds],
                        cwd=REPO, capture_output=True, text=True, check=False)


def test_experiment_scripts_read_seeds_as_the_study_does():
  """experiments/*.sh take SEEDS through seeds.sh: the study's syntax, spaces as commas."""
  assert _expand_seeds("3").stdout.split() == ["1", "2", "3"]
  assert _expand_seeds("2 4").stdout.split() == ["2", "4"]
  assert _expand_seeds("7-7").stdout.split() == ["7"]
  assert _expand_seeds("1, 4-6").stdout.split() == ["1", "4", "5", "6"]
  bad = _expand_seeds("3 3")
  assert bad.returncode == 2 and bad.stdout == ""
  assert bad.stderr.splitlines() == ["SEEDS: --seeds 3,3: seeds must be distinct ints >= 0"]
  # Each script stops on it before training anything.
  for script, args in [("study.sh", ["cola", "1e-4", "3", "x"]),
                       ("threshold_sweep.sh", ["cola", "1e-4", "3", "x", "0.1"]),
                       ("gradual_unfreezing.sh", ["cola", "1e-4", "x"])]:
    run = subprocess.run(["bash", f"experiments/{script}", *args],
                         cwd=REPO, capture_output=True, text=True, check=False)
    assert run.returncode == 2, script
    assert run.stderr.splitlines() == [
        "SEEDS: --seeds x: expected a count > 0, or a comma list of seeds and ranges such as "
        "1,2,5 or 11-20 (one seed: 7-7)"], script


def test_parse_args():
  assert study.parse_args(
      ["--config", "rte_cwgnc", "--seeds", "2", "--config.optimizer.clip_norm=0.1",
       "--out=/tmp/x", "--seeds-per-program", "2"]) == (
           "rte_cwgnc", [("optimizer.clip_norm", "0.1")], [1, 2], Path("/tmp/x"), 2)
  assert study.parse_args(["--config", "rte_adamw"])[2:] == (
      list(range(1, 26)), Path.cwd() / "runs/study", 1)  # the paper's 25 seeds, one at a time
  for argv, message in ((["--config", "rte_adamw", "--config.seed=3"], "--seeds instead"),
                        (["--config", "rte_adamw", "--seeds-per-program=0"], "an int >= 1"),
                        (["--config", "rte_adamw", "--workdir", "x"], "--out DIR"),
                        (["--config", "rte_adamw", "--seeds"], "--seeds needs a value"),
                        (["--seeds", "3"], "--config is required")):
    with pytest.raises(config_lib.ConfigError, match=message):
      study.parse_args(argv)


def test_group_names_hold_the_overrides_that_change_the_computation():
  config = config_lib.apply_overrides(
      config_lib.load("rte_cwgnc"),
      [("optimizer.learning_rate", "1e-4"), ("progress", "false"), ("model", "/a b/c"),
       ("diagnostics_every", "0"), ("optimizer.clip_norm", "0.1")])
  values = study.group_overrides(config, [("optimizer.learning_rate", "1e-4"),
                                          ("progress", "false"), ("model", "/a b/c"),
                                          ("diagnostics_every", "0"),
                                          ("optimizer.clip_norm", "0.1")])
  assert values == {"model": "/a b/c", "optimizer.clip_norm": 0.1,
                    "optimizer.learning_rate": 0.0001}
  assert study.group_name("rte_cwgnc", values) == (
      "rte_cwgnc__model=-a-b-c__optimizer.clip_norm=0.1__optimizer.learning_rate=0.0001")
  assert study.group_name("configs/rte_adamw.py", {}) == "rte_adamw"
  long = study.group_name("rte_adamw", {"model": "x" * 300})
  assert len(long) == 149 and long.startswith("rte_adamw__model=xxx")


def test_aggregates_match_numpy():
  scores = [70.1, 52.3, 66.0, 71.5, 49.9]
  failed = [False, True, False, False, True]
  stats = study.aggregate(scores, failed)
  assert stats["std"] == pytest.approx(np.std(scores, ddof=0), rel=1e-12)
  assert stats["mean"] == pytest.approx(np.mean(scores), rel=1e-12)
  assert (stats["max"], stats["min"], stats["failed_percent"]) == (71.5, 49.9, 40.0)
  assert study.aggregate([], [])["mean"] is None


# -- Whole studies. ------------------------------------------------------------------------

def _tiny_overrides(tiny_bert_dir: Path, tiny_rte_dir: Path) -> list[tuple[str, str]]:
  return [("model", str(tiny_bert_dir)), ("glue_dir", str(tiny_rte_dir)), ("batch_size", "8"),
          ("eval_batch_size", "8"), ("layout", "padded"), ("num_epochs", "2"),
          ("progress", "false"), ("optimizer.learning_rate", "1e-3"),
          ("diagnostics_every", "2")]


@pytest.fixture()
def count_compiles(monkeypatch):
  """Records, per seed trained (``loop.train_seeds`` called), the XLA compilations it
  triggered."""
  counts: dict[int, int] = {}
  active: list[int] = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration" and active:
      counts[active[-1]] = counts.get(active[-1], 0) + 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  train = loop.train_seeds

  def counting_train(runs, steps_cache=None, **kwargs):
    (run,) = runs
    counts.setdefault(run.config.seed, 0)
    active.append(run.config.seed)
    try:
      return train(runs, steps_cache, **kwargs)
    finally:
      active.pop()

  monkeypatch.setattr(loop, "train_seeds", counting_train)
  # Counted compilations are real ones, not hits of the session's persistent cache.
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  yield counts
  jax.config.update("jax_enable_compilation_cache", enabled)
  active.append(-1)  # the listener cannot be removed; park it


@pytest.mark.real
def test_study_shares_compiled_steps_summarizes_and_resumes(tiny_bert_dir, tiny_rte_dir,
                                                            tmp_path, count_compiles):
  overrides = _tiny_overrides(tiny_bert_dir, tiny_rte_dir)
  summary = study.run_study("demo", overrides, [3, 1], tmp_path)
  group = tmp_path / summary["group"]
  assert summary["group"].startswith("demo__batch_size=8__")
  # The second seed compiles neither the train nor the eval step again.
  assert count_compiles[3] >= count_compiles[1] + 2, count_compiles

  results = {s: json.loads((group / f"seed_{s}" / "results.json").read_text()) for s in (3, 1)}
  scores = [results[s]["score"] for s in (3, 1)]
  assert results[3]["seed"] == 3 and results[3]["steps"] == 8
  # Printed once (2026-12-07): both seeds score 12 of 19 (one class everywhere), and their
  # evaluation losses differ (seed 3, then seed 1, at steps 4 and 8): two seeds, two runs.
  # rtol 1e-4 for another CPU's rounding, 30x below the seeds' difference.
  assert scores == [pytest.approx(100 * 12 / 19)] * 2
  losses = [[e["loss"] for e in results[s]["evaluations"]] for s in (3, 1)]
  np.testing.assert_allclose(losses, [[0.68620163, 0.68468788], [0.68823196, 0.68809739]],
                             rtol=1e-4)
  stored = files.read_json(group / files.SUMMARY_FILE)
  assert stored == json.loads(json.dumps(summary))
  assert stored["seeds"] == [1, 3] and stored["finished"] == 2
  assert stored["std"] == pytest.approx(np.std(scores)) and stored["mean"] == np.mean(scores)
  assert (stored["max"], stored["min"]) == (max(scores), min(scores))
  failed = [results[s]["failed"] for s in (3, 1)]
  assert stored["failed_percent"] == 50.0 * sum(failed)
  assert [r["seed"] for r in stored["runs"]] == [1, 3]  # ascending
  assert [r["score"] for r in stored["runs"]] == scores[::-1]
  assert stored["config"]["optimizer"]["learning_rate"] == 1e-3 and "seed" not in stored["config"]
  assert (group / "seed_3" / "grad_norms.npz").is_file()

  # Interrupted: seed 1 lost its results (its checkpoints remain), seed 7 never started. The
  # next invocation asks for seeds 1 and 7; finished seed 3 stays in the summary.
  (group / "seed_1" / "results.json").unlink()
  count_compiles.clear()
  again = study.run_study("demo", overrides, [7, 1], tmp_path)
  assert set(count_compiles) == {1, 7}  # seed 3: read, not rerun
  resumed = json.loads((group / "seed_1" / "results.json").read_text())
  assert resumed["timings"]["sessions"][-1]["start_step"] == 8  # from its last checkpoint
  strip = lambda r: {k: v for k, v in r.items() if k != "timings"}
  assert strip(resumed) == strip(results[1])
  assert again["seeds"] == [1, 3, 7] and again["finished"] == 3
  assert [r["seed"] for r in again["runs"]] == [1, 3, 7]
  assert [r["score"] for r in again["runs"][:2]] == scores[::-1]
  assert json.loads(json.dumps(again)) == files.read_json(group / files.SUMMARY_FILE)

  # Another config in the same group folder is refused before anything trains.
  (group / "seed_9").mkdir()
  shutil.copy(group / "seed_1" / "config.json", group / "seed_9" / "config.json")
  with pytest.raises(config_lib.ConfigError, match="seed_9 holds a run of another config"):
    study.run_study("demo", overrides, [9], tmp_path)


@pytest.mark.real
def test_summary_counts_seeds_another_process_finishes_meanwhile(tiny_bert_dir, tiny_rte_dir,
                                                                 tmp_path, monkeypatch):
  """Two studies of one group with disjoint seeds run side by side (one per core): the summary
  each writes holds the other's seeds finished by then, not only those on disk at its start."""
  overrides = _tiny_overrides(tiny_bert_dir, tiny_rte_dir)
  other = study.run_study("demo", overrides, [5], tmp_path / "other")
  group = tmp_path / "runs" / other["group"]
  train = loop.train_seeds

  def other_process_finishes_seed_5(runs, steps_cache=None, **kwargs):
    group.mkdir(parents=True, exist_ok=True)
    shutil.move(tmp_path / "other" / other["group"] / "seed_5", group / "seed_5")
    return train(runs, steps_cache, **kwargs)

  monkeypatch.setattr(loop, "train_seeds", other_process_finishes_seed_5)
  summary = study.run_study("demo", overrides, [3], tmp_path / "runs")
  assert summary["seeds"] == [3, 5] and summary["finished"] == 2
  assert [r["seed"] for r in summary["runs"]] == [3, 5]
  assert summary["runs"][1]["score"] == other["runs"][0]["score"]
  assert files.read_json(group / files.SUMMARY_FILE) == json.loads(json.dumps(summary))


@pytest.mark.real
def test_a_seed_taken_while_its_program_prepares_leaves_the_others_to_train(
    tiny_bert_dir, tiny_rte_dir, tmp_path, monkeypatch, capsys):
  """Seeds 1-3 as one program; another process takes seed 2's lock while the program is
  being prepared. The study leaves seed 2 to it and trains seeds 1 and 3 in the next round."""
  overrides = _tiny_overrides(tiny_bert_dir, tiny_rte_dir)
  prepare, taken = run_lib.prepare, contextlib.ExitStack()

  def another_process_takes_seed_2(config, workdir):
    if config.seed == 2 and not workdir.exists():
      workdir.mkdir(parents=True)
      taken.enter_context(files.locked(workdir))  # another open file: flock refuses us
    return prepare(config, workdir)

  monkeypatch.setattr(run_lib, "prepare", another_process_takes_seed_2)
  with taken:
    summary = study.run_study("demo", overrides, [1, 2, 3], tmp_path, seeds_per_program=3)
  assert [r["seed"] for r in summary["runs"]] == [1, 3]
  group = tmp_path / summary["group"]
  assert not (files.seed_dir(group, 2) / files.RESULTS_FILE).exists()
  for seed in (1, 3):
    results = files.read_json(files.seed_dir(group, seed) / files.RESULTS_FILE)
    assert results["timings"]["seeds_in_program"] == 2  # 1 and 3 together, without 2
  assert "seeds [2]: run directory " in capsys.readouterr().err


def test_bad_command_line_exits_2_in_one_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "cwgnc_jax.study", "--config", "rte_adamw",
                         "--seeds", "1,1", "--out", str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert done.stderr.strip() == ("cwgnc_jax.study: error: --seeds 1,1: seeds must be distinct "
                                 "ints >= 0")
  assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.real
def test_two_seed_study_of_minilm_on_real_rte(glue_dir, minilm_dir, tmp_path):
  """2 seeds of the demo config (MiniLM-L6, CWGNC) on the first 32 real RTE train examples,
  evaluated on the first 64 real dev examples (one eval batch: a short test); its report."""
  del minilm_dir  # the demo config loads it by name
  subset = tmp_path / "glue"
  (subset / "RTE").mkdir(parents=True)
  (subset / "RTE" / "train.tsv").symlink_to(glue_dir / "RTE" / "train.tsv")
  dev = (glue_dir / "RTE" / "dev.tsv").read_text(encoding="utf-8").splitlines(True)
  (subset / "RTE" / "dev.tsv").write_text("".join(dev[:65]), encoding="utf-8")
  summary = study.run_study(
      "demo", [("glue_dir", str(subset)), ("train_limit", "32"), ("num_epochs", "1"),
               ("progress", "false")], [1, 2], tmp_path / "runs")
  assert summary["group"] == (
      f"demo__glue_dir={str(subset).replace('/', '-')}__num_epochs=1__train_limit=32")
  assert summary["finished"] == 2 and summary["metric"] == "accuracy"
  labels = [line.rstrip("\n").split("\t")[-1] for line in dev[1:65]]
  majority = 100 * max(labels.count("entailment"), labels.count("not_entailment")) / 64
  assert summary["majority_score"] in (majority, 100 - majority)
  for run in summary["runs"]:
    results = json.loads((tmp_path / "runs" / summary["group"] / f"seed_{run['seed']}" /
                          "results.json").read_text())
    assert results["dev_examples"] == 64 and results["steps"] == 2
    assert results["train_examples"] == 32 and results["model"] == "minilm-l6"
    # An accuracy of the 64 dev examples: k of 64, not merely a number in [0, 100].
    correct = run["score"] * 64 / 100
    assert run["score"] == results["score"] and 0 <= correct <= 64
    assert correct == pytest.approx(round(correct), abs=1e-9)
    assert run["failed"] == (run["score"] <= summary["majority_score"])
  scores = [run["score"] for run in summary["runs"]]
  assert summary["std"] == pytest.approx(np.std(scores))
  assert summary["mean"] == pytest.approx(np.mean(scores))
  # The report's Table 1 holds the study's numbers; its figures come from the runs' files.
  text = publish.write_report([tmp_path / "runs"], tmp_path / "report").read_text()
  (row,) = [line for line in text.splitlines() if line.startswith("| CWGNC (c = 0.05) |")]
  assert [cell.strip() for cell in row.strip("|").split("|")][1:] == [
      "2", *(f"{summary[k]:.1f}" for k in ("std", "mean", "max")),
      f"{summary['failed_percent']:.0f}", "1.3 / 73.1 / 75.1"]
  for name in ("scores.png", "drift_by_method.png"):
    assert f"![{name}]({name})" in text and (tmp_path / "report" / name).is_file()


@pytest.mark.real
def test_two_studies_over_the_same_seeds_share_the_work(tiny_bert_dir, tiny_rte_dir, tmp_path):
  """Study A holds seed 1 (stopped with SIGSTOP once it has its lock); study B over seeds
  1-2 skips seed 1 and trains seed 2; A then finishes seed 1 and skips seed 2. Every seed is
  trained once, and its step records are not duplicated."""
  overrides = _tiny_overrides(tiny_bert_dir, tiny_rte_dir)
  args = [f"--config.{key}={value}" for key, value in overrides]
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  config = config_lib.apply_overrides(config_lib.load("demo"), overrides)
  group = tmp_path / study.group_name("demo", study.group_overrides(config, overrides))
  first = subprocess.Popen([sys.executable, "-m", "cwgnc_jax.study", "--config", "demo",
                            "--seeds", "1-2", "--out", str(tmp_path), *args], cwd=REPO,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 300
    while not files.is_locked(files.seed_dir(group, 1)):
      assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
      time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    second = study.run_study("demo", overrides, [1, 2], tmp_path)
    assert [r["seed"] for r in second["runs"]] == [2]
  finally:
    first.send_signal(signal.SIGCONT)
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err
  assert "skipped" not in err  # A found seed 2 finished, not in use
  summary = files.read_json(group / files.SUMMARY_FILE)
  assert summary["finished"] == 2 and json.loads(out.splitlines()[-1])["finished"] == 2
  for seed in (1, 2):
    results = json.loads((files.seed_dir(group, seed) / "results.json").read_text())
    assert len(results["timings"]["sessions"]) == 1  # trained once, by one process
    steps = [json.loads(line)["step"] for line in
             (files.seed_dir(group, seed) / "metrics.jsonl").read_text().splitlines()
             if "grad_norm" in line]
    assert steps == list(range(1, results["steps"] + 1))
