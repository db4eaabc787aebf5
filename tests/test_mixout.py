"""Mixout: the mixed weight and its mask, both gradients against their formulas, p = 0 is the
plain model, evaluation is unmixed, targets outside the parameters, and real MiniLM-L6 steps.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cwgnc_jax import config as config_lib
from cwgnc_jax import command_line, identity, methods, optimizers
from cwgnc_jax.data import batching, glue
from cwgnc_jax.models import bert, loading, mixout
from cwgnc_jax.training import loop
from cwgnc_jax.training import program as program_lib
from cwgnc_jax.training import run as run_lib
from cwgnc_jax.training import rundir
from cwgnc_jax.training import step as step_lib

IN, OUT = 64, 8


def layer(p: float = 0.9, gradient: str = "reference") -> mixout.MixoutLinear:
  """A Mixout layer whose kernel has moved away from its target."""
  linear = mixout.MixoutLinear(IN, OUT, p=p, gradient=gradient, rngs=nnx.Rngs(0))
  linear.kernel[...] = linear.target[...] + jax.random.normal(jax.random.key(1), (IN, OUT))
  linear.bias[...] = jnp.arange(OUT, dtype=jnp.float32)
  return linear


def test_mixed_weight_is_target_or_rescaled_weight_per_input_unit():
  linear = layer(p=0.75)
  w, u = np.asarray(linear.kernel[...]), np.asarray(linear.target[...])
  mixed = np.asarray(linear.mixed_kernel(jax.random.key(2)))
  dropped = np.all(mixed == u, axis=1)  # every output of the input unit takes the target
  kept = np.all(np.isclose(mixed, u + (w - u) / 0.25, rtol=1e-5, atol=1e-6), axis=1)
  assert np.all(dropped ^ kept)
  assert 0.55 < dropped.mean() < 0.95  # ~p of 64 units
  # The reference formula ((1-M) u + M w - p u) / (1-p), with M the kept rows.
  m = kept[:, None].astype(np.float32)
  np.testing.assert_allclose(mixed, ((1 - m) * u + m * w - 0.75 * u) / 0.25, rtol=1e-5,
                             atol=1e-5)
  other = np.asarray(linear.mixed_kernel(jax.random.key(3)))
  assert not np.array_equal(other, mixed)  # a new mask with a new key


def test_mixed_weight_averages_to_the_current_weight():
  linear = layer(p=0.9)
  w, u = np.asarray(linear.kernel[...]), np.asarray(linear.target[...])
  n = 20000
  mean = np.asarray(jax.jit(jax.vmap(linear.mixed_kernel))(
      jax.random.split(jax.random.key(4), n)).mean(0))
  # Each entry's mean has std sqrt(p / (1-p) / n) |w - u| = 0.021 |w - u|.
  np.testing.assert_array_less(np.abs(mean - w), 5 * 0.0213 * np.abs(w - u) + 1e-6)
  assert np.abs(mean - w).mean() < 0.3 * np.abs(mean - u).mean()


def test_one_mask_for_the_whole_batch_and_evaluation_unmixed():
  linear = layer(p=0.9)
  x = jax.random.normal(jax.random.key(5), (3, 7, IN))  # batch 3, 7 tokens
  key = jax.random.key(6)
  y = linear(x, key)
  mixed = linear.mixed_kernel(key)
  np.testing.assert_allclose(y, x @ mixed + linear.bias[...], rtol=1e-5, atol=1e-5)
  # Every example alone gets the same output: the mask does not depend on the batch. A batch
  # of 3 and of 1 are products of other shapes, which a CPU's kernels may sum in another
  # order (measured equal bit for bit here, 2026-12-07), so 1e-6 (outputs ~1; another mask
  # moves them by ~1, the reference check above).
  for i in range(3):
    np.testing.assert_allclose(linear(x[i:i + 1], key), y[i:i + 1], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(linear(x), x @ linear.kernel[...] + linear.bias[...], rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("gradient, scale", [("reference", 1.0), ("autodiff", 1 / (1 - 0.9))])
def test_gradients_match_their_formulas(gradient, scale):
  """d loss / d w = G * M * scale, where G = d loss / d W_mix, for loss = sum(c * (x W_mix))."""
  linear = layer(p=0.9, gradient=gradient)
  x = jax.random.normal(jax.random.key(7), (5, IN))
  c = jax.random.normal(jax.random.key(8), (5, OUT))
  key = jax.random.key(9)
  graphdef, params, rest = nnx.split(linear, nnx.Param, ...)

  def loss(params):
    return jnp.sum(c * nnx.merge(graphdef, params, rest)(x, key))

  grads = jax.grad(loss)(params)
  keep = np.asarray(linear.mask(key))  # [IN, 1]
  expected = np.asarray(x.T @ c) * keep * scale
  np.testing.assert_allclose(grads["kernel"][...], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grads["bias"][...], np.asarray(c.sum(0)), rtol=1e-5)  # unmixed
  assert 0 < keep.sum() < IN


def test_p_zero_is_the_plain_model():
  config = bert.tiny_config()
  plain = bert.BertForSequenceClassification(config, 2, rngs=nnx.Rngs(0))
  mixed = bert.BertForSequenceClassification(config, 2, rngs=nnx.Rngs(0),
                                             linear=mixout.linear_factory(0.0))
  rng = np.random.default_rng(0)
  batch = {"input_ids": rng.integers(1, 100, (2, 8)).astype(np.int32),
           "token_type_ids": np.zeros((2, 8), np.int32),
           "position_ids": np.tile(np.arange(8, dtype=np.int32), (2, 1)),
           "segment_ids": np.ones((2, 8), np.int32), "cls_index": np.array([0, 8], np.int32)}
  (mixed_graph, targets, _), (plain_graph, none, params) = map(bert.split_params, (mixed, plain))
  forwards = [(bert.apply_fn(mixed_graph), targets), (bert.apply_fn(plain_graph), none)]
  both = jax.jit(lambda params, key: [apply(params, c, batch, key) for apply, c in forwards]
                 + [apply(params, c, batch) for apply, c in forwards])
  logits = both(params, jax.random.key(0))  # with dropout, then without
  np.testing.assert_array_equal(logits[0], logits[1])
  np.testing.assert_array_equal(logits[2], logits[3])
  assert not np.array_equal(logits[0], logits[2])


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match=r"Mixout p must be in \[0, 1\), got 1.0"):
    mixout.MixoutLinear(2, 2, p=1.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown Mixout gradient 'exact'"):
    mixout.MixoutLinear(2, 2, p=0.5, gradient="exact", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("task", ["rte", "mrpc", "cola"])
def test_mixout_configs_are_the_mosbach_row_with_p(task, monkeypatch):
  monkeypatch.delenv("GLUE_DIR", raising=False)
  config = config_lib.load(f"{task}_mixout")
  config_lib.validate(config)
  assert (config.task, config.method, config.num_epochs) == (task, "mixout", 20)
  assert (config.evals_per_epoch, config.keep_best) == (3, True)  # Mosbach's evaluation
  assert config.mixout.to_dict() == {"p": 0.9, "gradient": "reference"}
  assert config.optimizer.to_dict() == methods.recipe("mosbach").to_dict()
  assert config_lib.load(f"{task}_mosbach").mixout.p == 0.0  # off everywhere else


@pytest.mark.parametrize("overrides, message", [
    (["--config.mixout.p=1.0"], "config.mixout.p must be in [0, 1), got 1.0"),
    (["--config.mixout.p=0"],
     "config.mixout.p must be > 0 for method 'mixout' (Lee et al.: 0.7, 0.8 or 0.9)"),
    (["--config.mixout.gradient=exact"],
     "unknown config.mixout.gradient 'exact'; valid: reference, autodiff"),
])
def test_bad_mixout_config_names_the_key(overrides, message, monkeypatch):
  monkeypatch.delenv("GLUE_DIR", raising=False)
  with pytest.raises(config_lib.ConfigError) as error:
    command_line.train_config(["--config", "rte_mixout", *overrides])
  assert str(error.value) == message


def test_run_dirs_from_before_the_mixout_and_unfreezing_keys_still_resume(tmp_path):
  """A config.json without the ``mixout`` and ``unfreezing`` groups was trained with both
  off: it matches a config with both off, and not one that turns either on."""
  config = config_lib.load("rte_cwgnc")
  older = identity.run_identity(config)
  del older["mixout"], older["unfreezing"]
  (tmp_path / "config.json").write_text(json.dumps(older))
  rundir.check_run_dir(tmp_path, config)
  for key, value, differ in (("mixout", {"p": 0.5, "gradient": "reference"},
                              "mixout.gradient, mixout.p"),
                             ("unfreezing", {"mode": "gu", "iterations": None,
                                             "epochs_per_iteration": 3},
                              "unfreezing.epochs_per_iteration, unfreezing.mode")):
    other = config.copy_and_resolve_references()
    other[key] = value
    with pytest.raises(config_lib.ConfigError, match=f"differs in {differ}\\)"):
      rundir.check_run_dir(tmp_path, other)


def test_mixout_config_trains_through_the_loop(tiny_bert_dir, tiny_rte_dir, tmp_path):
  """``rte_mixout`` on a tiny BERT: the run's model has Mixout layers targeting the loaded
  weights and no dropout; two steps of the loop train it, evaluate and write the results."""
  config, _ = command_line.train_config([
      "--config", "rte_mixout", f"--config.model={tiny_bert_dir}",
      f"--config.glue_dir={tiny_rte_dir}", "--config.batch_size=8",
      "--config.eval_batch_size=8", "--config.train_limit=16", "--config.num_epochs=1",
      "--config.layout=padded", "--config.progress=false"])
  model = run_lib.load_model(config, 2)
  assert isinstance(model.classifier, mixout.MixoutLinear) and model.classifier.p == 0.9
  assert isinstance(model.encoder.layers[1].attention.value, mixout.MixoutLinear)
  assert (model.config.hidden_dropout_prob, model.config.attention_probs_dropout_prob,
          model.config.classifier_dropout_rate) == (0.0, 0.0, 0.0)
  plain = loading.from_pretrained(str(tiny_bert_dir), 2, seed=1)
  np.testing.assert_array_equal(model.encoder.layers[1].attention.value.target[...],
                                plain.encoder.layers[1].attention.value.kernel[...])
  run = run_lib.prepare(config, tmp_path / "run")
  results = loop.train(run)
  assert (results["method"], results["steps"], results["skipped_steps"]) == ("mixout", 2, 0)
  # Mosbach et al.'s evaluation: 3 per epoch (steps 1, 2, 2 of a 2-step epoch: 2 distinct),
  # the best is the result.
  assert [(e["step"], e["examples"]) for e in results["evaluations"]] == [(1, 19), (2, 19)]
  best = max(results["evaluations"], key=lambda e: e["score"])
  assert (results["result"], results["score"]) == ("best", best["score"])
  losses = [json.loads(line)["loss"] for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  # Printed once (2026-12-07): step 1, its evaluation, step 2, its evaluation. Just under
  # ln 2 (0.6931), as a barely trained 2-class model's; rtol 1e-5 for another CPU's rounding.
  # The dev score is 12 of 19 (one class everywhere).
  np.testing.assert_allclose(losses, [0.69283187, 0.69281507, 0.69283170, 0.69278316],
                             rtol=1e-5)
  assert results["score"] == pytest.approx(100 * 12 / 19)


def test_mixout_seeds_share_one_compiled_step_that_takes_the_targets(tiny_bert_dir,
                                                                      tiny_rte_dir, tmp_path):
  """The targets are a step argument, not compiled in: two seeds (whose classifier targets
  differ) share one compiled train step, the second seed trained with the first seed's step
  gets what it gets with a step of its own, and the traced step closes over none of them."""
  def run(seed, name):
    config, _ = command_line.train_config([
        "--config", "rte_mixout", f"--config.model={tiny_bert_dir}",
        f"--config.glue_dir={tiny_rte_dir}", "--config.batch_size=8",
        "--config.eval_batch_size=8", "--config.train_limit=16", "--config.num_epochs=1",
        "--config.layout=padded", "--config.progress=false", f"--config.seed={seed}"])
    return run_lib.prepare(config, tmp_path / name)

  first, second = run(1, "first"), run(2, "second")
  assert not np.array_equal(first.constants["classifier"]["target"][...],
                            second.constants["classifier"]["target"][...])
  assert program_lib.steps_key(first, (1, 1), True) == program_lib.steps_key(second, (1, 1), True)
  shared: dict = {}
  loop.train(first, shared)
  together = loop.train(second, shared)
  alone = loop.train(run(2, "alone"))
  train_steps = [v for k, v in shared.items() if k[-1] != "eval"]
  assert len(train_steps) == 1 and train_steps[0]._cache_size() == 1  # one shape: padded
  for key in ("score", "evaluations", "skipped_steps"):
    assert together[key] == alone[key], key

  # The traced step closes over no array of a target's size (a closed-over array would be
  # compiled into the program as a literal).
  optimizer = optimizers.build_optimizer(first.config.optimizer, first.total_steps)
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  abstract = step_lib.abstract_state(first.params, optimizer, 1, mesh, 2**62)
  state = step_lib.init_state(first.params, optimizer, 1, abstract)
  batch = next(iter(batching.train_batches(first.train_data, 8, seed=1, epoch=0,
                                           layout="padded", max_length=128)))
  jaxpr = jax.make_jaxpr(step_lib.train_step_fn(first.apply, optimizer))(
      state, batch, first.constants)
  smallest = min(x.size for x in jax.tree.leaves(first.constants))
  assert smallest >= 32 * 2  # the tiny classifier's [hidden, 2] kernel
  assert all(np.size(c) < smallest for c in jaxpr.consts), [np.shape(c) for c in jaxpr.consts]


@pytest.mark.slow
@pytest.mark.real
def test_real_minilm_mixout_targets_and_steps(minilm_dir, glue_dir):
  """MiniLM-L6 with Mixout p = 0.9: every dense layer targets its loaded weight, no dropout;
  the targets are not parameters; a few SGD steps on real RTE examples lower the loss, move
  the parameters and leave the targets; evaluation is the plain model's forward pass."""
  model = mixout.from_pretrained(str(minilm_dir), 2, p=0.9, seed=1)
  plain = loading.from_pretrained(str(minilm_dir), 2, seed=1)
  assert (model.config.hidden_dropout_prob, model.config.attention_probs_dropout_prob,
          model.config.classifier_dropout_rate) == (0.0, 0.0, 0.0)
  graphdef, constants, params = bert.split_params(model)
  plain_graph, no_constants, plain_params = bert.split_params(plain)
  jax.tree.map(np.testing.assert_array_equal, params, plain_params)
  assert not jax.tree.leaves(no_constants)
  targets = {path: leaf for path, leaf in jax.tree_util.tree_leaves_with_path(constants)}
  assert len(targets) == 6 * 6 + 2  # 6 dense layers per encoder layer, pooler, classifier
  np.testing.assert_array_equal(model.classifier.target[...], params["classifier"]["kernel"])
  np.testing.assert_array_equal(model.encoder.layers[5].output.target[...],
                                params["encoder"]["layers"][5]["output"]["kernel"])

  tokenizer = loading.load_tokenizer(str(minilm_dir))
  data = glue.load_tokenized("rte", "train", tokenizer, source=str(glue_dir), max_length=128)
  batch = next(iter(batching.train_batches(run_lib.head(data, 16), 16, seed=0, epoch=0,
                                           layout="packed", max_length=128)))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  apply = bert.apply_fn(graphdef)

  def loss(params, key):
    logits = apply(params, constants, batch, dropout_rng=key)
    losses = -jax.nn.log_softmax(logits)[jnp.arange(16), batch["labels"]]
    return jnp.sum(losses * batch["example_mask"]) / jnp.sum(batch["example_mask"])

  step = jax.jit(lambda p, key: jax.tree.map(lambda w, g: w - 0.5 * g, p,
                                             jax.grad(loss)(p, key)))
  evaluate = jax.jit(lambda p: loss(p, None))
  before = float(evaluate(params))
  trained = params
  for i in range(3):
    trained = step(trained, jax.random.key(i))
  assert float(evaluate(trained)) < before - 0.03, (float(evaluate(trained)), before)
  assert not np.array_equal(trained["classifier"]["kernel"], params["classifier"]["kernel"])
  np.testing.assert_array_equal(model.classifier.target[...], params["classifier"]["kernel"])
  # Evaluation: no mixing, the plain model's logits with the same weights.
  plain_apply = bert.apply_fn(plain_graph)
  ours, theirs = jax.jit(lambda p: (apply(p, constants, batch),
                                    plain_apply(p, no_constants, batch)))(trained)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
