"""Diagnostics: layer drift; per-tensor gradient norms in the train step and grad_norms.npz;
both in a real run."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import assert_same_up_to_rounding, tiny_batch
from flax import nnx

from cwgnc_jax import command_line
from cwgnc_jax import diagnostics, files, methods, optimizers, paths
from cwgnc_jax.models import bert
from cwgnc_jax.training import loop
from cwgnc_jax.training import program as program_lib
from cwgnc_jax.training import run as run_lib
from cwgnc_jax.training import step as step_lib


# -- Layer drift. ---------------------------------------------------------------------------

def _drift_trees():
  """Two parameter trees with hand-computable RMS differences and cosines."""
  a = {"embeddings": {"word": {"embedding": np.eye(2, dtype=np.float32)}},
       "encoder": {"layers": {"0": {"x": np.array([1.0, 2.0, 3.0, 4.0], np.float32),
                                    "y": np.array([2.0, 0.0], np.float32)}}},
       "pooler": {"bias": np.zeros(3, np.float32)},
       "classifier": {"kernel": np.array([[1.0, 1.0]], np.float32)}}
  b = {"embeddings": {"word": {"embedding": np.eye(2, dtype=np.float32)}},
       "encoder": {"layers": {"0": {"x": np.array([1.0, 2.0, 3.0, 5.0], np.float32),
                                    "y": np.array([0.0, 2.0], np.float32)}}},
       "pooler": {"bias": np.zeros(3, np.float32)},
       "classifier": {"kernel": np.array([[-1.0, -1.0]], np.float32)}}
  return a, b


def test_component_drift_values():
  drift = diagnostics.component_drift(*_drift_trees())
  assert drift["embeddings/word/embedding"] == {"rms": 0.0, "cos": pytest.approx(1.0)}
  x = drift["encoder/layers/0/x"]
  assert x["rms"] == pytest.approx(0.5)  # sqrt(mean([0, 0, 0, 1]))
  assert x["cos"] == pytest.approx(34 / np.sqrt(30 * 39))
  assert drift["encoder/layers/0/y"] == {"rms": 2.0, "cos": 0.0}
  assert drift["pooler/bias"] == {"rms": 0.0, "cos": 1.0}  # both zero: equal, cosine 1
  assert drift["classifier/kernel"] == {"rms": 2.0, "cos": pytest.approx(-1.0)}


def test_layer_drift_takes_the_max_rms_and_min_cosine_per_layer():
  drift = diagnostics.layer_drift(*_drift_trees())
  assert drift == {"embeddings": {"max_rms": 0.0, "min_cos": pytest.approx(1.0)},
                   "encoder/layers/0": {"max_rms": 2.0, "min_cos": 0.0},
                   "head": {"max_rms": 2.0, "min_cos": pytest.approx(-1.0)}}
  a, _ = _drift_trees()
  assert all(d == {"max_rms": 0.0, "min_cos": pytest.approx(1.0)}
             for d in diagnostics.layer_drift(a, a).values())


def test_drift_of_mismatched_trees_names_the_tensor():
  a, b = _drift_trees()
  b["encoder"]["layers"]["0"]["x"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match="encoder/layers/0/x has shape"):
    diagnostics.layer_drift(a, b)
  del b["encoder"]["layers"]["0"]["x"]
  with pytest.raises(ValueError, match="encoder/layers/0/x"):
    diagnostics.layer_drift(a, b)


# -- Gradient norms in the step. ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
  """A 1-layer tiny BERT, a batch, the dropout key of step 0 of seed 0, and the gradient of
  the step's loss at the initial parameters (computed here, independently of the step)."""
  model = bert.BertForSequenceClassification(bert.tiny_config(num_hidden_layers=1), 2,
                                             rngs=nnx.Rngs(0))
  graphdef, constants, params = bert.split_params(model)
  apply = bert.apply_fn(graphdef)
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  batch = step_lib.put_batch(tiny_batch(), mesh)
  key = jax.random.fold_in(jax.random.key(0), 0)

  def loss_fn(p):
    logits = apply(p, constants, batch, dropout_rng=key)
    return step_lib.masked_mean_cross_entropy(logits, batch["labels"], batch["example_mask"])

  grads = jax.jit(jax.grad(loss_fn))(params)
  norms = {paths.path_to_str(p): float(np.linalg.norm(np.asarray(g, np.float64)))
           for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
  return {"params": params, "constants": constants, "apply": apply, "mesh": mesh,
          "batch": batch, "norms": norms}


def _step_metrics(tiny, opt_config):
  """The metrics of one jitted step with diagnostics, and the names of the norms."""
  optimizer = optimizers.build_optimizer(opt_config, 10)
  abstract = step_lib.abstract_state(tiny["params"], optimizer, 0, tiny["mesh"], 2**18)
  state = step_lib.init_state(tiny["params"], optimizer, 0, abstract)
  step = step_lib.jit_train_step(tiny["apply"], optimizer, tiny["mesh"],
                                 step_lib.shardings_of(abstract), diagnostics=True)
  names = step_lib.gradient_norm_names(abstract.params, abstract.opt_state)
  return jax.device_get(step(state, tiny["batch"], tiny["constants"])[1]), names


def _assert_norms(actual, expected: dict[str, float]) -> None:
  # atol: the key biases' gradient is 0 up to rounding (softmax is shift invariant), so their
  # norms are noise that each computation rounds its own way: 3.5e-13 and 7.4e-13 in a tiny
  # model's step (test_train, measured 2026-12-07), over 1000 times below 1e-9.
  np.testing.assert_allclose(actual, list(expected.values()), rtol=2e-5, atol=1e-9)


def test_tensor_norms_equal_numpy_norms_of_the_gradient(tiny):
  metrics, names = _step_metrics(tiny, methods.recipe("adamw"))
  assert names == {"tensor_norms": list(tiny["norms"])}
  assert "clipped" not in metrics and metrics["tensor_norms"].dtype == np.float32
  _assert_norms(metrics["tensor_norms"], tiny["norms"])
  # The global norm is the norm of the per-tensor norms.
  np.testing.assert_allclose(np.linalg.norm(metrics["tensor_norms"]), metrics["grad_norm"],
                             rtol=1e-5)


def test_cwgnc_norms_come_from_the_clip_and_say_what_was_clipped(tiny):
  metrics, names = _step_metrics(tiny, methods.recipe("cwgnc"))  # c = 0.05 per tensor
  expected = tiny["norms"]
  _assert_norms(metrics["tensor_norms"], expected)
  assert names["component_norms"] == sorted(expected)  # per-tensor components, by label
  order = [list(expected).index(name) for name in names["component_norms"]]
  np.testing.assert_array_equal(metrics["component_norms"], metrics["tensor_norms"][order])
  clipped = np.array([expected[name] + 1e-6 > 0.05 for name in names["component_norms"]])
  np.testing.assert_array_equal(metrics["clipped"], clipped)
  assert 0 < clipped.sum() < len(clipped)  # both kinds occur, so the flags are informative


def test_layer_components_report_the_joint_norm_of_each_layer(tiny):
  opt = methods.recipe("cwgnc")
  opt.components, opt.clip_norm = "layer", 0.1
  metrics, names = _step_metrics(tiny, opt)
  expected = tiny["norms"]
  _assert_norms(metrics["tensor_norms"], expected)
  layers = sorted({paths.layer_of(name) for name in expected})
  assert names["component_norms"] == layers == ["embeddings", "encoder/layers/0", "head"]
  joint = np.array([np.sqrt(sum(n**2 for name, n in expected.items()
                                if paths.layer_of(name) == layer)) for layer in layers])
  np.testing.assert_allclose(metrics["component_norms"], joint, rtol=2e-5)
  np.testing.assert_array_equal(metrics["clipped"], joint + 1e-6 > 0.1)
  assert 0 < metrics["clipped"].sum() < 3, joint


# -- grad_norms.npz. -------------------------------------------------------------------------

def _fake_metrics(step: int) -> dict[str, np.ndarray]:
  return {"loss": np.float32(1.0), "tensor_norms": np.array([step, 2 * step], np.float32),
          "component_norms": np.array([3.0 * step], np.float32),
          "clipped": np.array([step % 4 == 0])}


def test_gradient_norm_log_keeps_every_kth_step_and_drops_rows_after_a_resume(tmp_path):
  names = {"tensor_norms": ["a/kernel", "a/bias"], "component_norms": ["a"]}
  log = diagnostics.GradientNormLog(tmp_path, names, 2, 0, True)
  for step in range(1, 8):
    metrics = _fake_metrics(step)
    log.take(step, metrics)
    assert set(metrics) == {"loss"}  # the norms never go to metrics.jsonl
  log.save()
  stored = diagnostics.read_gradient_norms(tmp_path / files.GRAD_NORMS_FILE)
  np.testing.assert_array_equal(stored["step"], [2, 4, 6])
  assert list(stored["tensor_names"]) == ["a/kernel", "a/bias"]
  assert list(stored["component_names"]) == ["a"]
  np.testing.assert_array_equal(stored["tensor_norms"], [[2, 4], [4, 8], [6, 12]])
  assert stored["tensor_norms"].dtype == np.float32
  np.testing.assert_array_equal(stored["component_norms"], [[6], [12], [18]])
  np.testing.assert_array_equal(stored["clipped"], [[False], [True], [False]])
  # Resumed from a checkpoint at step 5: row 6 goes, steps 6 and 8 are logged again.
  log = diagnostics.GradientNormLog(tmp_path, names, 2, 5, True)
  for step in (6, 7, 8):
    log.take(step, _fake_metrics(step))
  log.save()
  stored = diagnostics.read_gradient_norms(tmp_path / files.GRAD_NORMS_FILE)
  np.testing.assert_array_equal(stored["step"], [2, 4, 6, 8])
  np.testing.assert_array_equal(stored["tensor_norms"][:, 0], [2, 4, 6, 8])


def test_per_tensor_components_are_not_stored_twice(tmp_path):
  names = {"tensor_norms": ["a", "b"], "component_norms": ["a", "b"]}
  log = diagnostics.GradientNormLog(tmp_path, names, 1, 0, True)
  log.take(1, {"tensor_norms": np.ones(2), "component_norms": np.ones(2),
               "clipped": np.array([True, False])})
  log.save()
  stored = diagnostics.read_gradient_norms(tmp_path / files.GRAD_NORMS_FILE)
  assert set(stored) == {"step", "tensor_names", "component_names", "tensor_norms", "clipped"}
  # Off (K = 0) or on another process: nothing is written.
  off = diagnostics.GradientNormLog(tmp_path / "off", names, 0, 0, True)
  off.take(1, {"tensor_norms": np.ones(2)})
  off.save()
  assert not (tmp_path / "off").exists()


# -- A whole run with diagnostics on and off. ------------------------------------------------

def _tiny_config(tiny_bert_dir: Path, tiny_rte_dir: Path, *overrides: str):
  args = ["--config", "demo", f"--config.model={tiny_bert_dir}",
          f"--config.glue_dir={tiny_rte_dir}", "--config.batch_size=8",
          "--config.eval_batch_size=8", "--config.layout=padded", "--config.num_epochs=2",
          "--config.progress=false", "--config.optimizer.learning_rate=1e-3", *overrides]
  return command_line.train_config(args)[0]


def _final_params(workdir: Path):
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(steps[-1]) / "state")
  return jax.tree.map(np.asarray, state["params"])


@pytest.mark.real
def test_run_with_diagnostics_gives_identical_results_and_params(tiny_bert_dir, tiny_rte_dir,
                                                                tmp_path):
  """A run with diagnostics trains as one without: with the norms as outputs, the step is
  another program, which XLA may fuse otherwise, so floats agree up to rounding (rtol 1e-5;
  measured equal bit for bit here, 2026-12-07) and everything else exactly. Scores too: each
  of the 19 dev examples' margins is at least 0.0386 from the decision boundary at both
  evaluations (measured), far beyond what rounding moves."""
  results = {}
  for every in (0, 3):
    config = _tiny_config(tiny_bert_dir, tiny_rte_dir, f"--config.diagnostics_every={every}")
    results[every] = loop.train(run_lib.prepare(config, tmp_path / f"every{every}"))
  strip = lambda r: {k: v for k, v in r.items() if k != "timings"}
  assert_same_up_to_rounding(strip(results[0]), strip(results[3]))
  stored_on = json.loads((tmp_path / "every3" / "results.json").read_text())
  stored_off = json.loads((tmp_path / "every0" / "results.json").read_text())
  assert_same_up_to_rounding(strip(stored_on), strip(stored_off))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               _final_params(tmp_path / "every3"), _final_params(tmp_path / "every0"))
  assert_same_up_to_rounding(
      *[[json.loads(line) for line in (tmp_path / f"every{every}" / "metrics.jsonl")
         .read_text().splitlines()] for every in (3, 0)])
  assert not (tmp_path / "every0" / files.GRAD_NORMS_FILE).exists()
  stored = diagnostics.read_gradient_norms(tmp_path / "every3" / files.GRAD_NORMS_FILE)
  np.testing.assert_array_equal(stored["step"], [3, 6])  # 2 epochs of 4 steps
  assert stored["tensor_norms"].shape == (2, 41) and np.all(stored["tensor_norms"] > 0)
  assert stored["clipped"].shape == (2, 41)  # demo is CWGNC with per-tensor components
  # Every evaluation records each layer's drift from the pretrained parameters.
  evals = results[3]["evaluations"]
  assert [e["step"] for e in evals] == [4, 8]
  assert set(evals[0]["drift"]) == {"embeddings", "encoder/layers/0", "encoder/layers/1", "head"}
  pretrained = run_lib.prepare(_tiny_config(tiny_bert_dir, tiny_rte_dir), tmp_path / "x").params
  expected = diagnostics.layer_drift(_final_params(tmp_path / "every3"), pretrained)
  for layer, values in expected.items():
    assert evals[-1]["drift"][layer] == pytest.approx(values, rel=1e-12)
  assert all(0 < d["max_rms"] and d["min_cos"] < 1 for d in expected.values())
  assert all(evals[1]["drift"][layer]["max_rms"] > evals[0]["drift"][layer]["max_rms"]
             for layer in expected)  # moving further away as training goes on
  # The logged global gradient norm of those steps is the norm of the per-tensor norms.
  records = [json.loads(line) for line in
             (tmp_path / "every3" / "metrics.jsonl").read_text().splitlines()]
  global_norms = {r["step"]: r["grad_norm"] for r in records if "grad_norm" in r}
  np.testing.assert_allclose(np.linalg.norm(stored["tensor_norms"], axis=1),
                             [global_norms[3], global_norms[6]], rtol=1e-5)


@pytest.mark.real
def test_the_benchmarks_program_is_the_loops_step(tiny_bert_dir, tiny_rte_dir, tmp_path):
  """``program.first_stage_program`` (what the benchmarks time and profile) driven by hand over
  the run's 8 batches ends at the parameters ``loop.train`` ends at, bit for bit, and its
  eval step gives the run's last evaluation; with diagnostics, its gradient norms at steps 3
  and 6 are the ones the run stored."""
  config = _tiny_config(tiny_bert_dir, tiny_rte_dir, "--config.diagnostics_every=3")
  results = loop.train(run_lib.prepare(config, tmp_path / "run"))
  stored = diagnostics.read_gradient_norms(tmp_path / "run" / files.GRAD_NORMS_FILE)
  run = run_lib.prepare(config, tmp_path / "by_hand")
  batches = [batch for epoch in (0, 1)
             for batch in run_lib.epoch_batches(run, epoch, row_multiple=run.num_devices)]
  assert len(batches) == 8
  for with_norms in (False, True):
    program = program_lib.first_stage_program(run, diagnostics=with_norms)
    state, norms = program.fresh_state(), []
    for batch in batches:
      state, step_metrics = program.train_step(state, step_lib.put_batch(batch, program.mesh),
                                               program.constants)
      norms.append(np.asarray(step_metrics.get("tensor_norms", np.zeros(0))))
    # (The checkpoint's layer keys are strings; leaf order is the same for 2 layers.)
    mine, saved = jax.tree.leaves(state.params), jax.tree.leaves(_final_params(tmp_path / "run"))
    assert len(mine) == len(saved) == 41
    # Without norms the program is the run's own step, so bit for bit. With norms every step
    # here is the diagnostics program, which the run used at steps 3 and 6 only: another
    # program at the other steps, so rounding (rtol 1e-5; measured equal here, 2026-12-07).
    for a, b in zip(mine, saved):
      if with_norms:
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-7)
      else:
        np.testing.assert_array_equal(np.asarray(a), b)
    if with_norms:
      np.testing.assert_allclose(np.stack([norms[2], norms[5]]), stored["tensor_norms"],
                                 rtol=1e-5, atol=1e-9)
    else:
      assert all(n.size == 0 for n in norms)
      dev, = loop.evaluate(program.eval_step, state.params, program.constants, [run],
                           program.mesh)
      last = results["evaluations"][-1]
      assert (dev["score"], dev["loss"]) == (last["score"], last["loss"])
  assert not (tmp_path / "by_hand").exists()  # preparing writes nothing
