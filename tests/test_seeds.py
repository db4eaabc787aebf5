"""Several seeds in one program: batch stacking, the vmapped step against each seed's own,
a study trained that way against one trained seed by seed, and seeds split over 8 devices."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from cwgnc_jax import files, methods, optimizers, study
from cwgnc_jax.data import batching, glue
from cwgnc_jax.models import bert
from cwgnc_jax.training import step as step_lib

REPO = Path(__file__).resolve().parent.parent


def _split(lengths):
  """A tokenized split of examples with the given lengths (token ids 5, 6, ...)."""
  ids = np.concatenate([np.arange(5, 5 + n, dtype=np.int32) for n in lengths])
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  return glue.TokenizedSplit(ids, np.zeros_like(ids), offsets,
                             np.arange(len(lengths), dtype=np.int64) % 2)


def test_stack_batches_pads_rows_with_empty_rows():
  data = _split([30, 30, 30, 30, 10, 10, 10, 10])
  long = batching.make_batch(data, np.arange(4), 4, layout="packed", max_length=32)
  short = batching.make_batch(data, np.arange(4, 8), 4, layout="packed", max_length=32)
  assert long["input_ids"].shape[0] > short["input_ids"].shape[0]
  stacked = batching.stack_batches([long, short], row_multiple=4)
  rows = -(-long["input_ids"].shape[0] // 4) * 4
  assert stacked["input_ids"].shape == (2, rows, 32)
  extra = stacked["segment_ids"][1, short["input_ids"].shape[0]:]
  assert not extra.any()  # the added rows hold no token
  np.testing.assert_array_equal(stacked["cls_index"][1], short["cls_index"])
  tree = step_lib.stack([{"a": np.ones(2)}, {"a": np.zeros(2)}])
  np.testing.assert_array_equal(step_lib.unstack(tree, 1)["a"], [0, 0])


def test_vmapped_step_equals_the_step_of_each_seed():
  model = bert.BertForSequenceClassification(bert.tiny_config(num_hidden_layers=1), 2,
                                             rngs=nnx.Rngs(0))
  graphdef, constants, params = bert.split_params(model)
  apply = bert.apply_fn(graphdef)
  opt = methods.recipe("cwgnc")
  opt.warmup_fraction = 0.0  # the first step updates
  optimizer = optimizers.build_optimizer(opt, 10)
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  abstract = step_lib.abstract_state(params, optimizer, 0, mesh, 2**18)
  data = _split([12, 20, 7, 9, 30, 15, 11, 8])
  batches = [batching.make_batch(data, order, 4, layout="packed", max_length=32)
             for order in (np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7]))]
  states = [step_lib.init_state(params, optimizer, seed, abstract) for seed in (1, 2)]
  shardings = step_lib.shardings_of(abstract)
  single = step_lib.jit_train_step(apply, optimizer, mesh, shardings, diagnostics=True)
  expected = [jax.device_get(single(state, step_lib.put_batch(batch, mesh), constants))
              for state, batch in zip(states, batches)]
  states = [step_lib.init_state(params, optimizer, seed, abstract) for seed in (1, 2)]
  vmapped = step_lib.jit_train_step(apply, optimizer, mesh, step_lib.stacked(shardings),
                                    diagnostics=True, seeds=True)
  together, metrics = jax.device_get(vmapped(
      step_lib.stack(states),
      step_lib.put_batch(batching.stack_batches(batches), mesh, seeds=True),
      step_lib.stack([constants, constants])))
  for s, (state, step_metrics) in enumerate(expected):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 step_lib.unstack(together, s), state)
    for key, value in step_metrics.items():
      np.testing.assert_allclose(metrics[key][s], value, rtol=1e-5, atol=1e-7)
  assert not np.allclose(metrics["loss"][0], metrics["loss"][1])  # two different seeds


def _study_overrides(tiny_bert_dir: Path, tiny_rte_dir: Path) -> list[tuple[str, str]]:
  return [("model", str(tiny_bert_dir)), ("glue_dir", str(tiny_rte_dir)),
          ("batch_size", "8"), ("eval_batch_size", "8"), ("num_epochs", "2"),
          ("layout", "padded"), ("progress", "false"), ("optimizer.learning_rate", "1e-3"),
          ("diagnostics_every", "2"), ("keep_best", "true")]


def _assert_same_seed(together: Path, alone: Path) -> None:
  """What a seed trained with others records equals what it records alone, up to the
  rounding of batched matmuls (the tolerances of ``loop``'s docstring)."""
  results = {way: json.loads((path / files.RESULTS_FILE).read_text())
             for way, path in (("together", together), ("alone", alone))}
  assert set(results["together"]) == set(results["alone"])
  for key in ("seed", "steps", "result_step", "skipped_steps", "train_examples", "config"):
    assert results["together"][key] == results["alone"][key], key
  # Scores (and so result_step, the best one's) compared exactly, though the two are other
  # programs: at every evaluation of these runs (seeds 1 and 2, steps 4 and 8) each of the 19
  # dev examples' logit margins is at least 0.039 from the decision boundary (measured
  # 2026-12-07: 0.0386, 0.0396, 0.067, 0.102), over 500 times the 7e-5 that the losses'
  # rtol 1e-4 below allows (their ~0.7 times 1e-4), itself far more than rounding moves.
  for a, b in zip(results["together"]["evaluations"], results["alone"]["evaluations"],
                  strict=True):
    assert (a["step"], a["examples"], a["score"]) == (b["step"], b["examples"], b["score"])
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for layer in b["drift"]:
      assert a["drift"][layer] == pytest.approx(b["drift"][layer], rel=1e-3, abs=1e-9)
  losses = {way: [json.loads(line)["loss"] for line in
                  (path / files.METRICS_FILE).read_text().splitlines() if "grad_norm" in line]
            for way, path in (("together", together), ("alone", alone))}
  assert len(losses["together"]) == results["alone"]["steps"]
  np.testing.assert_allclose(losses["together"], losses["alone"], rtol=1e-4)
  norms = {way: np.load(path / files.GRAD_NORMS_FILE)
           for way, path in (("together", together), ("alone", alone))}
  np.testing.assert_array_equal(norms["together"]["step"], norms["alone"]["step"])
  np.testing.assert_allclose(norms["together"]["tensor_norms"], norms["alone"]["tensor_norms"],
                             rtol=1e-3, atol=1e-7)


@pytest.fixture(scope="module")
def alone(tiny_bert_dir, tiny_rte_dir, tmp_path_factory) -> Path:
  """The group folder of seeds 1 and 2 trained one after the other on one device."""
  out = tmp_path_factory.mktemp("alone")
  summary = study.run_study("demo", _study_overrides(tiny_bert_dir, tiny_rte_dir), [1, 2], out)
  return out / summary["group"]


@pytest.mark.real
def test_study_with_seeds_in_one_program_matches_seed_by_seed(tiny_bert_dir, tiny_rte_dir,
                                                              alone, tmp_path):
  overrides = _study_overrides(tiny_bert_dir, tiny_rte_dir)
  together = study.run_study("demo", overrides, [1, 2], tmp_path / "together", 2)
  group = together["group"]
  assert group == alone.name
  seed_2 = lambda way: files.seed_dir(tmp_path / way / group if way == "together" else alone,
                                      2)
  assert json.loads((seed_2("together") / "results.json").read_text())["timings"][
      "seeds_in_program"] == 2
  _assert_same_seed(seed_2("together"), seed_2("alone"))
  assert together["finished"] == 2 and together["seeds"] == [1, 2]

  # Its checkpoints resume: without results.json, seed 2 ends from its last one.
  shutil.move(seed_2("together") / "results.json", tmp_path / "old.json")
  study.run_study("demo", overrides, [1, 2], tmp_path / "together", 2)
  resumed = json.loads((seed_2("together") / "results.json").read_text())
  old = json.loads((tmp_path / "old.json").read_text())
  assert {k: v for k, v in resumed.items() if k != "timings"} == {
      k: v for k, v in old.items() if k != "timings"}
  # Again from its first epoch's checkpoint: epoch 1 was trained with seed 1, epoch 2 now
  # alone, so its program's examples are 2 N + N for the seed's 2 N (N examples an epoch).
  shutil.move(seed_2("together") / "results.json", tmp_path / "old.json")
  shutil.rmtree(seed_2("together") / "checkpoints" / str(old["steps"]))
  study.run_study("demo", overrides, [1, 2], tmp_path / "together", 2)
  timings = json.loads((seed_2("together") / "results.json").read_text())["timings"]
  assert [s["seeds_in_program"] for s in timings["sessions"]] == [2, 1]
  assert timings["program_examples"] == 1.5 * timings["train_examples"]
  assert timings["train_examples_per_second"] == pytest.approx(
      timings["program_examples"] / timings["train_seconds"])


def _study_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "cwgnc_jax.study", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.real
def test_seeds_split_over_eight_fake_devices(tiny_bert_dir, tiny_rte_dir, alone, tmp_path):
  """2 seeds in one program on a (seeds 2, data 4) mesh of 8 CPU devices equal the same
  seeds trained one by one on one device; a study stopped midway resumes (on a seeds axis of
  1, with 8 data devices), and finished seeds are skipped."""
  args = ["--config", "demo", "--seeds", "1-2", "--config.progress=false",
          "--out", str(tmp_path), "--seeds-per-program", "2", "--config.mesh.seeds=2",
          *[f"--config.{key}={value}" for key, value in
            _study_overrides(tiny_bert_dir, tiny_rte_dir)]]
  eight = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")  # keeps .ci/run's ISA limit
                         + " --xla_force_host_platform_device_count=8").strip()}
  done = _study_cli(args, eight)
  assert done.returncode == 0, done.stderr
  group = tmp_path / alone.name
  for seed in (1, 2):
    sessions = json.loads((files.seed_dir(group, seed) / "results.json").read_text())[
        "timings"]["sessions"]
    assert sessions == [{"start_step": 0, "devices": 8, "mesh": [2, 4, 1],
                         "seeds_in_program": 2}]
    _assert_same_seed(files.seed_dir(group, seed), files.seed_dir(alone, seed))

  # Seed 2 loses its results (as if killed after its last checkpoint): the study reruns it
  # from that checkpoint alone (a seeds axis of 1) and skips seed 1.
  finished = {s: (files.seed_dir(group, s) / "results.json").read_text() for s in (1, 2)}
  (files.seed_dir(group, 2) / "results.json").unlink()
  done = _study_cli(args, eight)
  assert done.returncode == 0, done.stderr
  assert (files.seed_dir(group, 1) / "results.json").read_text() == finished[1]  # skipped
  resumed = json.loads((files.seed_dir(group, 2) / "results.json").read_text())
  before = json.loads(finished[2])
  assert resumed["timings"]["sessions"][-1]["mesh"] == [1, 8, 1]
  assert {k: v for k, v in resumed.items() if k != "timings"} == {
      k: v for k, v in before.items() if k != "timings"}
  assert json.loads((group / "summary.json").read_text())["finished"] == 2
