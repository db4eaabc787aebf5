"""Gradual unfreezing: stages and masks, frozen tensors untouched and stateless, Adam moments
carried per tensor, GU restart from the pretrained weights, the backward pass cut below the
lowest trained layer, whole train.py runs (resumed across iterations), and a real MiniLM run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import tiny_batch
from flax import nnx

from cwgnc_jax import config as config_lib
from cwgnc_jax import command_line
from cwgnc_jax import adam, methods, optimizers, paths, unfreezing
from cwgnc_jax.models import bert
from cwgnc_jax.training import run as run_lib
from cwgnc_jax.training import step as step_lib

REPO = Path(__file__).resolve().parent.parent


def gu_config(mode: str = "gu", iterations=None, epochs: int = 1) -> ml_collections.ConfigDict:
  opt = methods.recipe("cwgnc")
  opt.warmup_fraction = 0.0  # so every stage's first update has a learning rate > 0
  opt.learning_rate = 1e-3
  return ml_collections.ConfigDict({
      "num_epochs": None if mode != "none" else 2, "optimizer": opt,
      "unfreezing": {"mode": mode, "iterations": iterations, "epochs_per_iteration": epochs}})


def by_path(tree) -> dict:
  return {paths.path_to_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def state_paths(opt_state) -> list[str]:
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(opt_state)]


# -- Stages. -------------------------------------------------------------------------------

def test_stages_unfreeze_top_down_embeddings_last():
  stages = unfreezing.stages(gu_config(epochs=3), depth=2, steps_per_epoch=5)
  assert [(s.index, s.start_step, s.end_step, s.bottom) for s in stages] == [
      (0, 0, 15, 1), (1, 15, 30, 0), (2, 30, 45, unfreezing.EMBEDDINGS)]
  assert [s.stop_gradient_at for s in stages] == [1, 0, None]
  assert [s.trained_layers(2) for s in stages] == [
      ["head", "encoder/layers/1"], ["head", "encoder/layers/1", "encoder/layers/0"],
      ["head", "encoder/layers/1", "encoder/layers/0", "embeddings"]]
  assert unfreezing.num_epochs(gu_config(epochs=3), 2) == 9
  assert unfreezing.num_epochs(gu_config(iterations=2, epochs=3), 24) == 6
  assert [unfreezing.stage_at(stages, s).index for s in (0, 1, 15, 16, 30, 45)] == [
      0, 0, 0, 1, 1, 2]
  plain = unfreezing.stages(gu_config("none"), 2, 5)
  assert [(s.start_step, s.end_step, s.bottom, s.stop_gradient_at) for s in plain] == [
      (0, 10, None, None)]


def test_masks_follow_the_layer_stack():
  *_, params = bert.split_params(bert.BertForSequenceClassification(
      bert.tiny_config(num_hidden_layers=3), 2, rngs=nnx.Rngs(0)))
  assert unfreezing.num_layers(params) == 3
  stages = unfreezing.stages(gu_config(), 3, 1)
  for stage in stages:
    trained = set(stage.trained_layers(3))
    for path, flag in by_path(stage.trainable(params)).items():
      assert flag == (paths.layer_of(path) in trained), (stage.index, path)
  assert all(jax.tree.leaves(unfreezing.stages(gu_config("none"), 3, 1)[0].trainable(params)))


@pytest.mark.parametrize("task", ["rte", "mrpc", "cola"])
def test_gu_configs(task, monkeypatch):
  monkeypatch.delenv("GLUE_DIR", raising=False)
  for mode in ("gu", "gu_restart"):
    config = config_lib.load(f"{task}_{mode}")
    config_lib.validate(config)
    assert (config.task, config.method, config.num_epochs) == (task, "adamw", None)
    assert config.unfreezing.to_dict() == {"mode": mode, "iterations": None,
                                           "epochs_per_iteration": 3}
    assert config.optimizer.to_dict() == methods.recipe("adamw").to_dict()


@pytest.mark.parametrize("override, message", [
    ("num_epochs=3", "config.num_epochs must be None under config.unfreezing.mode='gu', "
     "which trains unfreezing.iterations x unfreezing.epochs_per_iteration epochs; got 3"),
    ("unfreezing.mode=top_down",
     "unknown config.unfreezing.mode 'top_down'; valid: none, gu, gu_restart"),
    ("unfreezing.iterations=0", "config.unfreezing.iterations must be an int > 0, got 0"),
    ("unfreezing.epochs_per_iteration=0",
     "config.unfreezing.epochs_per_iteration must be an int > 0, got 0"),
])
def test_bad_gu_config_names_the_key(override, message, monkeypatch):
  monkeypatch.delenv("GLUE_DIR", raising=False)
  with pytest.raises(config_lib.ConfigError) as error:
    command_line.train_config(["--config", "rte_gu", f"--config.{override}"])
  assert str(error.value) == message


def test_more_iterations_than_layers_is_a_config_error(tiny_bert_dir, tiny_rte_dir, tmp_path):
  config, _ = command_line.train_config([
      "--config", "rte_gu", f"--config.model={tiny_bert_dir}",
      f"--config.glue_dir={tiny_rte_dir}", "--config.unfreezing.iterations=4"])
  with pytest.raises(config_lib.ConfigError, match=r"config.unfreezing.iterations=4 exceeds "
                     r"the model's 2 layers \+ 1 \(the embeddings, unfrozen last\)"):
    run_lib.prepare(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


# -- Optimizer state across iterations. ----------------------------------------------------

@pytest.mark.parametrize("form", adam.ADAM_FORMS)
def test_per_tensor_count_adam_is_single_count_adam_and_restarts_bias_correction(form):
  params = {"a": jnp.ones((3, 4)), "b": jnp.zeros(5)}
  ours = adam.scale_by_adam_per_tensor_count(0.9, 0.999, 1e-6, form=form)
  theirs = (adam.scale_by_adam_transformers(0.9, 0.999, 1e-6) if form == "transformers"
            else optax.scale_by_adam(0.9, 0.999, 1e-6))
  s_ours, s_theirs = ours.init(params), theirs.init(params)
  for i in range(4):
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(i), p.shape), params)
    u_ours, s_ours = jax.jit(ours.update)(grads, s_ours)
    u_theirs, s_theirs = jax.jit(theirs.update)(grads, s_theirs)
    # rtol: optax forms 1 - b2^t in float32 (~1e-5 off); ours keeps it to float32 rounding.
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5), u_ours, u_theirs)
  assert {int(c) for c in jax.tree.leaves(s_ours.count)} == {4}
  # A tensor whose count restarts at 0 with zero moments takes a fresh Adam's first step,
  # g / (|g| + eps_1), whatever the other tensor's count; eps_1 is eps / sqrt(1 - b2) in
  # transformers' form, eps in optax's.
  s_ours = s_ours._replace(count={"a": s_ours.count["a"], "b": jnp.zeros([], jnp.int32)},
                           mu={**s_ours.mu, "b": jnp.zeros(5)}, nu={**s_ours.nu, "b": jnp.zeros(5)})
  grads = {"a": jnp.ones((3, 4)), "b": jnp.array([0.5, -2.0, 1e-2, -1e-2, 3.0])}
  updates, _ = ours.update(grads, s_ours)
  eps_1 = 1e-6 / np.sqrt(1 - 0.999) if form == "transformers" else 1e-6
  b = np.asarray(grads["b"])
  np.testing.assert_allclose(updates["b"], b / (np.abs(b) + eps_1), rtol=1e-5)


def _tiny_setup(num_layers: int = 2):
  model = bert.BertForSequenceClassification(bert.tiny_config(num_hidden_layers=num_layers), 2,
                                             rngs=nnx.Rngs(0))
  graphdef, constants, params = bert.split_params(model)
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  batch = step_lib.put_batch(tiny_batch(), mesh)
  return bert.apply_fn(graphdef), constants, params, mesh, batch


def _stage_step(config, stage, apply, constants, params, mesh):
  """The stage's optimizer, abstract state and jitted ``step(state, batch)``."""
  optimizer = unfreezing.stage_optimizer(config.optimizer, stage, params)
  abstract = step_lib.abstract_state(params, optimizer, 0, mesh, 2**18)
  train_step = step_lib.train_step_fn(unfreezing.stage_apply(apply, stage), optimizer)
  step = jax.jit(lambda state, batch: train_step(state, batch, constants))
  return optimizer, abstract, step


def _nodes(tree, kind):
  """The nodes of type ``kind`` in an optimizer state, wherever the chain nests them."""
  return [n for n in jax.tree.leaves(tree, is_leaf=lambda n: isinstance(n, kind))
          if isinstance(n, kind)]


def _adam(opt_state):
  (state,) = _nodes(opt_state, adam.ScaleByAdamPerTensorState)
  return state


def test_frozen_tensors_stay_put_without_state_and_moments_carry_over():
  config = gu_config()
  apply, constants, pretrained, mesh, batch = _tiny_setup()
  stages = unfreezing.stages(config, 2, steps_per_epoch=2)
  optimizer, abstract, step = _stage_step(config, stages[0], apply, constants, pretrained, mesh)
  state = step_lib.init_state(pretrained, optimizer, 0, abstract)
  for _ in range(2):
    state, _ = step(state, batch)
  trained0 = stages[0].trained_layers(2)
  frozen_paths = [p for p in by_path(pretrained) if paths.layer_of(p) not in trained0]
  assert frozen_paths and all(p.startswith(("embeddings", "encoder/layers/0/"))
                              for p in frozen_paths)
  after = by_path(jax.device_get(state.params))
  for path, before in by_path(pretrained).items():
    changed = not np.array_equal(after[path], before)
    assert changed == (path not in frozen_paths), path  # frozen: bit-identical
  # No optimizer state for frozen tensors: no state leaf names one.
  names = state_paths(state.opt_state)
  assert not [n for n in names if "'embeddings'" in n or "[0]['attention']" in n
              or "'encoder/layers/0/" in n or "'embeddings/" in n]
  assert any("'encoder/layers/1/attention/query/kernel'" in n for n in names)  # clip norms
  old_adam = _adam(state.opt_state)

  # Iteration 1: layer 0 unfrozen with zero moments; the rest keeps its moments and counts.
  optimizer, abstract, step = _stage_step(config, stages[1], apply, constants, pretrained, mesh)
  state = jax.jit(unfreezing.next_state, static_argnums=(0, 3))(
      "gu", state, pretrained, optimizer)
  moments = _adam(state.opt_state)
  # Each iteration has its own schedule (the learning rate's and the decay's counts).
  schedules = _nodes(state.opt_state, (optax.ScaleByScheduleState,
                                       optimizers.ScaleByLearningRateState))
  assert [int(s.count) for s in schedules] == [0, 0]
  for field in ("mu", "nu", "count"):
    new, old = by_path(getattr(moments, field)), by_path(getattr(old_adam, field))
    for path, value in new.items():
      if path.startswith("encoder/layers/0/"):
        assert not np.any(np.asarray(value)), (field, path)
      else:
        np.testing.assert_array_equal(value, old[path])
    assert set(old) < set(new) and not [p for p in new if p.startswith("embeddings")]
  assert {int(c) for p, c in by_path(moments.count).items()
          if not p.startswith("encoder/layers/0/")} == {2}
  before = by_path(jax.device_get(state.params))
  state, _ = step(state, batch)
  moments = _adam(state.opt_state)
  counts = by_path(moments.count)
  assert {int(c) for p, c in counts.items() if p.startswith("encoder/layers/0/")} == {1}
  assert {int(c) for p, c in counts.items() if not p.startswith("encoder/layers/0/")} == {3}
  after = by_path(jax.device_get(state.params))
  for path in before:
    assert np.array_equal(after[path], before[path]) == path.startswith("embeddings"), path


def test_gu_restart_starts_each_iteration_from_the_pretrained_weights():
  config = gu_config("gu_restart")
  apply, constants, pretrained, mesh, batch = _tiny_setup()
  stages = unfreezing.stages(config, 2, steps_per_epoch=2)
  optimizer, abstract, step = _stage_step(config, stages[0], apply, constants, pretrained, mesh)
  state = step_lib.init_state(pretrained, optimizer, 0, abstract)
  for _ in range(2):
    state, _ = step(state, batch)
  assert not np.array_equal(state.params["classifier"]["kernel"],
                            pretrained["classifier"]["kernel"])
  optimizer, abstract, _ = _stage_step(config, stages[1], apply, constants, pretrained, mesh)
  state = state._replace(opt_state=state.opt_state._replace(total_notfinite=jnp.asarray(3)))
  state = jax.jit(unfreezing.next_state, static_argnums=(0, 3))(
      "gu_restart", state, pretrained, optimizer)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), pretrained)
  # A fresh optimizer state (zero moments and counts), but the step and the skip count go on.
  assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state.inner_state))
  assert (int(state.step), int(step_lib.skipped(state))) == (2, 3)


def test_stop_gradient_cuts_the_backward_pass_of_frozen_layers():
  """The trained tensors' gradients are those of full backprop; frozen ones get exact zeros,
  and the compiled step does fewer FLOPs (XLA drops the frozen layers' backward pass)."""
  apply, constants, params, mesh, batch = _tiny_setup(num_layers=4)
  stage = unfreezing.stages(gu_config(), 4, 1)[0]  # trains layer 3 and the head

  def grads(fn):
    loss = lambda p: step_lib.masked_mean_cross_entropy(
        fn(p, constants, batch), batch["labels"], batch["example_mask"])
    return jax.jit(jax.grad(loss))

  full, cut = grads(apply), grads(unfreezing.stage_apply(apply, stage))
  full_grads, cut_grads = by_path(full(params)), by_path(cut(params))
  trained = stage.trained_layers(4)
  for path, value in cut_grads.items():
    if paths.layer_of(path) in trained:
      np.testing.assert_allclose(value, full_grads[path], rtol=1e-5, atol=1e-7)
    else:
      assert not np.any(np.asarray(value)) and np.any(np.asarray(full_grads[path])), path
  flops = lambda fn: fn.lower(params).compile().cost_analysis()["flops"]
  # Forward (4 layers) + backward of 1 of 4 layers vs forward + backward of all of them.
  assert flops(cut) < 0.6 * flops(full), (flops(cut), flops(full))


# -- Whole runs. ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
  """train.py's environment: a token cache of this module's own, and the session's XLA
  compilation cache (conftest.py), which every worker and process shares (GU restart's
  iterations compile to GU's, a resumed run's to the first run's)."""
  return {**os.environ, "PYTHONPATH": str(REPO),
          "CWGNC_CACHE": str(tmp_path_factory.mktemp("cache") / "tokens")}


def train_py(args, workdir, env) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "train.py", *args, "--workdir", str(workdir)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def results_of(workdir: Path) -> dict:
  return json.loads((workdir / "results.json").read_text())


def moved(drift: dict) -> set[str]:
  """The layers whose parameters differ from the reference."""
  return {layer for layer, d in drift.items() if d["max_rms"] > 0}


ALL = {"embeddings", "encoder/layers/0", "encoder/layers/1", "head"}


@pytest.fixture(scope="module")
def tiny_args(tiny_bert_dir, tiny_rte_dir) -> list[str]:
  """A tiny GU run: 2 layers, so 3 iterations of 1 epoch (4 steps of 8 examples) each."""
  return ["--config", "rte_gu", f"--config.model={tiny_bert_dir}",
          f"--config.glue_dir={tiny_rte_dir}", "--config.batch_size=8",
          "--config.eval_batch_size=8", "--config.unfreezing.epochs_per_iteration=1",
          "--config.layout=padded",  # one batch shape: one compilation per iteration
          "--config.checkpoint_every=2", "--config.keep_checkpoints=10",
          "--config.progress=false", "--config.optimizer.learning_rate=1e-3"]


@pytest.fixture(scope="module")
def gu_run(tiny_args, env, tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp("gu") / "run"
  done = train_py(tiny_args, workdir, env)
  assert done.returncode == 0, done.stderr
  return workdir


@pytest.mark.real
@pytest.mark.slow
def test_gu_run_records_each_iteration(gu_run):
  results = results_of(gu_run)
  records = results["unfreezing"]["iterations"]
  assert results["unfreezing"]["mode"] == "gu" and results["steps"] == 12
  assert [(r["iteration"], r["start_step"], r["end_step"]) for r in records] == [
      (0, 0, 4), (1, 4, 8), (2, 8, 12)]
  evals = {e["step"]: e for e in results["evaluations"]}
  for r in records:
    end = evals[r["end_step"]]
    assert (r["score"], r["loss"]) == (end["score"], end["loss"])
  assert results["score"] == records[-1]["score"]
  # Frozen layers never move; every trained one does (GU: from the previous iteration too).
  assert [set(r["trained_layers"]) for r in records] == [
      {"head", "encoder/layers/1"}, {"head", "encoder/layers/1", "encoder/layers/0"}, ALL]
  for r in records:
    assert moved(r["drift_from_previous"]) == set(r["trained_layers"])
    assert moved(r["drift_from_pretrained"]) == set(r["trained_layers"])
    assert all(math.isclose(d["min_cos"], 1.0, rel_tol=1e-12) for layer, d
               in r["drift_from_pretrained"].items() if layer not in r["trained_layers"])
  # Training continued from the previous iteration: it is closer than the pretrained model.
  last = records[-1]
  assert (last["drift_from_previous"]["head"]["max_rms"]
          < last["drift_from_pretrained"]["head"]["max_rms"])


@pytest.mark.real
@pytest.mark.slow
def test_gu_run_resumed_mid_iteration_is_bit_identical(gu_run, tiny_args, env, tmp_path):
  """Killed in iteration 1 (after its checkpoint of step 6), the rerun resumes there: the
  finished iteration 0 is not redone and everything ends as in the uninterrupted run."""
  workdir = tmp_path / "resumed"
  shutil.copytree(gu_run, workdir)
  (workdir / "results.json").unlink()
  done = train_py([*tiny_args, "--config.resume_step=6"], workdir, env)
  assert done.returncode == 0, done.stderr
  assert f"resumed from {workdir / 'checkpoints' / '6'}" in done.stderr
  expected = results_of(gu_run)
  results = results_of(workdir)
  strip = lambda r: {k: v for k, v in r.items() if k not in ("timings", "config")}
  assert strip(results) == strip(expected)
  assert [s["start_step"] for s in results["timings"]["sessions"]] == [0, 6]
  for name in ("metrics.jsonl",):
    assert (workdir / name).read_text() == (gu_run / name).read_text()


@pytest.mark.real
@pytest.mark.slow
def test_gu_restart_run_starts_each_iteration_from_the_pretrained_model(tiny_args, env,
                                                                        gu_run, tmp_path):
  args = [*tiny_args, "--config.unfreezing.mode=gu_restart", "--config.unfreezing.iterations=2"]
  done = train_py(args, tmp_path / "restart", env)
  assert done.returncode == 0, done.stderr
  records = results_of(tmp_path / "restart")["unfreezing"]["iterations"]
  assert [r["end_step"] for r in records] == [4, 8]
  # Iteration 1 restarted from the pretrained weights: the layer frozen in iteration 0 and
  # trained in iteration 1 moved from both; the embeddings (frozen) from neither.
  assert moved(records[1]["drift_from_pretrained"]) == {"head", "encoder/layers/1",
                                                         "encoder/layers/0"}
  assert moved(records[1]["drift_from_previous"]) == {"head", "encoder/layers/1",
                                                       "encoder/layers/0"}
  # The same sets as GU's, whose iteration 1 continues from iteration 0 (it is the same
  # iteration with 2 or 3 of them): only the restart makes its drift from the pretrained
  # model another.
  gu = results_of(gu_run)["unfreezing"]["iterations"][1]
  assert moved(gu["drift_from_pretrained"]) == moved(records[1]["drift_from_pretrained"])
  assert gu["drift_from_pretrained"] != records[1]["drift_from_pretrained"]


@pytest.mark.slow
@pytest.mark.real
def test_real_minilm_gu_records_a_dev_metric_per_iteration(glue_dir, env, tmp_path):
  """MiniLM-L6 on 16 real RTE examples, 2 GU iterations of one step: a dev score per iteration
  on all 277 dev examples; only the trained layers move."""
  args = ["--config", "rte_gu", "--config.model=minilm-l6", f"--config.glue_dir={glue_dir}",
          "--config.train_limit=16", "--config.unfreezing.iterations=2",
          "--config.unfreezing.epochs_per_iteration=1", "--config.eval_batch_size=64",
          "--config.optimizer.learning_rate=1e-4", "--config.optimizer.warmup_fraction=0",
          "--config.progress=false"]
  done = train_py(args, tmp_path / "minilm", env)
  assert done.returncode == 0, done.stderr
  results = results_of(tmp_path / "minilm")
  records = results["unfreezing"]["iterations"]
  assert [(r["iteration"], r["end_step"]) for r in records] == [(0, 1), (1, 2)]
  assert [e["examples"] for e in results["evaluations"]] == [277, 277]
  for r, e in zip(records, results["evaluations"]):
    # An accuracy of the 277 dev examples: k of 277, not merely a number in [0, 100].
    correct = r["score"] * 277 / 100
    assert r["score"] == e["score"] and 0 <= correct <= 277
    assert correct == pytest.approx(round(correct), abs=1e-9)
    assert moved(r["drift_from_previous"]) == set(r["trained_layers"])
  assert records[1]["trained_layers"] == ["head", "encoder/layers/5", "encoder/layers/4"]
  assert len(records[0]["drift_from_pretrained"]) == 8  # embeddings, 6 layers, head
