"""BertAdam, CWGNC, the Table 1 recipes and build_optimizer against NumPy references."""

import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cwgnc_jax import adam, methods, optimizers, paths
from cwgnc_jax.clipping import clip_by_component_norm, component_norm_stats
from cwgnc_jax.optimizers import (
    bert_adam,
    build_optimizer,
    cwgnc,
    decay_mask,
    linear_warmup_decay,
)
from cwgnc_jax.methods import recipe
from cwgnc_jax.adam import ADAM_FORMS

HIDDEN, VOCAB, LABELS = 4, 11, 2


def dense(rng, n_in, n_out):
  return {"kernel": rng.standard_normal((n_in, n_out)).astype(np.float32),
          "bias": rng.standard_normal((n_out,)).astype(np.float32)}


def layer_norm(rng):
  return {"scale": rng.standard_normal((HIDDEN,)).astype(np.float32),
          "bias": rng.standard_normal((HIDDEN,)).astype(np.float32)}


def bert_params(num_layers=2, seed=0):
  """A BERT-shaped parameter tree with exactly the contract's paths (tiny sizes)."""
  rng = np.random.default_rng(seed)
  emb = lambda n: {"embedding": rng.standard_normal((n, HIDDEN)).astype(np.float32)}
  layer = lambda: {
      "attention": {
          "query": dense(rng, HIDDEN, HIDDEN), "key": dense(rng, HIDDEN, HIDDEN),
          "value": dense(rng, HIDDEN, HIDDEN), "output": dense(rng, HIDDEN, HIDDEN),
          "layer_norm": layer_norm(rng),
      },
      "intermediate": dense(rng, HIDDEN, 4 * HIDDEN),
      "output": {**dense(rng, 4 * HIDDEN, HIDDEN), "layer_norm": layer_norm(rng)},
  }
  return {
      "embeddings": {"word_embeddings": emb(VOCAB), "position_embeddings": emb(8),
                     "token_type_embeddings": emb(2), "layer_norm": layer_norm(rng)},
      "encoder": {"layers": {i: layer() for i in range(num_layers)}},
      "pooler": dense(rng, HIDDEN, HIDDEN),
      "classifier": dense(rng, HIDDEN, LABELS),
  }


def by_path(tree):
  return {paths.path_to_str(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def expected_no_decay(path):
  """Independent statement of the rule: biases and LayerNorm parameters are not decayed."""
  return path.endswith("/bias") or "/layer_norm/" in path


def run_steps(optimizer, params, grads_list):
  state = optimizer.init(params)
  updates_list = []
  for grads in grads_list:
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    updates_list.append(updates)
  return params, state, updates_list


def test_bert_adam_matches_spec_update_rule():
  lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-6, 0.01
  rng = np.random.default_rng(1)
  params = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal((2,))}
  params = jax.tree.map(lambda x: x.astype(np.float32), params)
  grads = [jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
           for _ in range(3)]
  mask = {"w": True, "b": False}
  final, _, _ = run_steps(bert_adam(lr, b1, b2, eps, wd, mask), params, grads)

  theta = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  v = {k: np.zeros_like(x) for k, x in theta.items()}
  for g in grads:
    for k in theta:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      u = m[k] / (np.sqrt(v[k]) + eps) + (wd * theta[k] if mask[k] else 0.0)
      theta[k] = theta[k] - lr * u
  for k in theta:
    np.testing.assert_allclose(final[k], theta[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_bert_adam_differs_from_adam_by_bias_correction_factor():
  b1, b2 = 0.9, 0.999
  rng = np.random.default_rng(2)
  params = {"w": np.zeros((5,), np.float32)}
  grads = [{"w": rng.standard_normal((5,)).astype(np.float32)} for _ in range(3)]
  # eps = 0 makes the relation exact: Adam = BertAdam * sqrt(1 - b2^t) / (1 - b1^t).
  _, _, ours = run_steps(bert_adam(1.0, b1, b2, eps=0.0, weight_decay=0.0), params, grads)
  _, _, optax_adam = run_steps(optax.adam(1.0, b1, b2, eps=0.0), params, grads)
  for t, (u_ours, u_adam) in enumerate(zip(ours, optax_adam), start=1):
    factor = np.sqrt(1 - b2**t) / (1 - b1**t)
    # rtol: Optax forms 1 - b2^t in float32, and 1 - 0.999 loses ~1e-5 relative to cancellation.
    np.testing.assert_allclose(u_adam["w"], u_ours["w"] * factor, rtol=3e-5)
    assert not np.allclose(u_adam["w"], u_ours["w"], rtol=1e-2)


def test_cwgnc_is_clip_then_adamw():
  params = bert_params()
  rng = np.random.default_rng(3)
  grads = [jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
           for _ in range(2)]
  mask = decay_mask(params)
  reference = optax.chain(
      clip_by_component_norm(0.05),
      optax.adamw(1e-3, eps=1e-6, weight_decay=0.01, mask=mask),
  )
  ours, _, _ = run_steps(cwgnc(1e-3, adam_form="optax"), params, grads)
  theirs, _, _ = run_steps(reference, params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)


def test_decay_mask_excludes_exactly_biases_and_layer_norm():
  params = bert_params()
  mask = by_path(decay_mask(params))
  assert len(mask) == 5 + 2 * 16 + 4  # embeddings, 2 layers, pooler + classifier
  for path, decayed in mask.items():
    assert decayed == (not expected_no_decay(path)), path
  assert not mask["embeddings/layer_norm/scale"] and mask["embeddings/word_embeddings/embedding"]


@pytest.mark.parametrize("name", ["bertadam", "adamw", "cwgnc"])  # mosbach's is adamw's
def test_each_recipe_decays_exactly_the_masked_leaves(name):
  cfg = recipe(name)
  params = bert_params()
  zeros = jax.tree.map(np.zeros_like, params)
  # Zero gradients: the Adam direction is 0, so the update is -lr * wd * theta where decayed.
  # total_steps 10, warmup 1 step: lr is 0 at step 0 and the peak at step 1.
  _, _, updates = run_steps(build_optimizer(cfg, 10), params, [zeros, zeros])
  for path, update in by_path(updates[1]).items():
    expected = 0.0 if expected_no_decay(path) else -cfg.learning_rate * cfg.weight_decay
    np.testing.assert_allclose(update, expected * by_path(params)[path], rtol=1e-5, err_msg=path)


def test_released_cwgnc_recipe():
  released = recipe("cwgnc_released")
  assert released == optimizers.optimizer_config(
      **methods.METHODS["cwgnc"].optimizer, warmup_fraction=0.0, weight_decay=0.0, eps=1e-8)
  assert (released.warmup_fraction, released.weight_decay, released.eps) == (0.0, 0.0, 1e-8)
  assert released.clip_norm == 0.05 and released.max_grad_norm is None
  paper = recipe("cwgnc")
  assert (paper.warmup_fraction, paper.weight_decay, paper.eps) == (0.1, 0.01, 1e-6)


def test_recipe_table_values():
  rows = {name: recipe(name) for name in ("bertadam", "adamw", "mosbach", "cwgnc")}
  for cfg in rows.values():
    assert (cfg.learning_rate, cfg.b1, cfg.b2, cfg.components) == (2e-5, 0.9, 0.999, "tensor")
  assert not rows["bertadam"].bias_correction
  assert all(rows[n].bias_correction for n in ("adamw", "mosbach", "cwgnc"))
  assert [rows[n].max_grad_norm for n in rows] == [1.0, 1.0, 1.0, None]
  assert [rows[n].clip_norm for n in rows] == [None, None, None, 0.05]
  assert all(recipe(n).adam_form == "transformers" for n in methods.NAMES)


def random_grads(params, n, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda x: scale * rng.standard_normal(x.shape).astype(np.float32), params)
          for _ in range(n)]


@pytest.mark.parametrize("name", ["bertadam", "adamw", "cwgnc", "both_clips"])
def test_build_optimizer_equals_explicit_chain(name):
  """With ``adam_form='optax'`` the chain is optax's built-ins (the transformers form is
  tested against a port of transformers' AdamW below)."""
  cfg = recipe("cwgnc" if name == "both_clips" else name)
  cfg.adam_form = "optax"
  if name == "both_clips":
    cfg.max_grad_norm = 0.1
  total = 20
  schedule = linear_warmup_decay(cfg.learning_rate, total, cfg.warmup_fraction)
  mask = decay_mask
  parts = {
      "bertadam": [optax.clip_by_global_norm(1.0),
                   bert_adam(schedule, eps=1e-6, weight_decay=0.01, mask=mask)],
      "adamw": [optax.clip_by_global_norm(1.0),
                optax.adamw(schedule, eps=1e-6, weight_decay=0.01, mask=mask)],
      "cwgnc": [cwgnc(schedule, clip_norm=0.05, adam_form="optax")],
      "both_clips": [clip_by_component_norm(0.05), optax.clip_by_global_norm(0.1),
                     optax.adamw(schedule, eps=1e-6, weight_decay=0.01, mask=mask)],
  }[name]
  params = bert_params()
  grads = random_grads(params, 4, seed=4, scale=3.0)
  ours, _, _ = run_steps(build_optimizer(cfg, total), params, grads)
  theirs, _, _ = run_steps(optax.chain(*parts), params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), ours, theirs)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), ours, params)
  assert min(jax.tree.leaves(moved)) > 0


def test_schedule_values():
  schedule = linear_warmup_decay(1.0, 100, 0.1)
  for step, value in [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0), (120, 0.0)]:
    np.testing.assert_allclose(schedule(step), value, atol=1e-7, err_msg=str(step))
  pure_decay = linear_warmup_decay(2.0, 100, 0.0)
  for step, value in [(0, 2.0), (50, 1.0), (100, 0.0)]:
    np.testing.assert_allclose(pure_decay(step), value, atol=1e-7, err_msg=str(step))
  np.testing.assert_allclose(jax.jit(schedule)(jnp.asarray(55)), 0.5, atol=1e-7)


def test_frozen_leaves_have_no_state_and_zero_update():
  params = bert_params()
  frozen = ("embeddings", "encoder/layers/0")
  trainable = paths.map_paths(lambda p: not p.startswith(frozen), params)
  optimizer = build_optimizer(recipe("cwgnc"), 10, trainable=trainable)
  _, state, updates = run_steps(optimizer, params, random_grads(params, 2, seed=5))
  frozen = {p for p, t in by_path(trainable).items() if not t}
  assert frozen and len(frozen) < len(by_path(params))
  for path, update in by_path(updates[1]).items():
    assert (np.abs(update).max() == 0) == (path in frozen), path
  mu = optax.tree_utils.tree_get(state, "mu")
  assert set(by_path(mu)) == set(by_path(params)) - frozen
  assert set(component_norm_stats(state)["norms"]) == set(by_path(params)) - frozen


def test_component_norm_stats_from_full_build_optimizer_state():
  params = bert_params()
  grads = random_grads(params, 1, seed=6, scale=0.02)[0]
  optimizer = build_optimizer(recipe("cwgnc"), 10)
  state = optimizer.init(params)
  _, state = jax.jit(optimizer.update)(grads, state, params)
  stats = component_norm_stats(state)
  norms = {p: np.linalg.norm(np.asarray(g, np.float64)) for p, g in by_path(grads).items()}
  assert set(stats["norms"]) == set(norms)
  for path, norm in norms.items():
    np.testing.assert_allclose(stats["norms"][path], norm, rtol=1e-6, err_msg=path)
    assert bool(stats["clipped"][path]) == (norm + 1e-6 > 0.05), path
  flags = [bool(v) for v in stats["clipped"].values()]
  assert any(flags) and not all(flags)


def test_qkv_components_from_config():
  cfg = recipe("cwgnc")
  cfg.components = "qkv"
  params = bert_params()
  state = build_optimizer(cfg, 10).init(params)
  labels = set(component_norm_stats(state)["norms"])
  assert "encoder/layers/1/attention/qkv/kernel" in labels
  assert not any(re.search(r"attention/(query|key|value)/", label) for label in labels)


@pytest.mark.parametrize("field,value,message", [
    ("learning_rate", 0.0, "learning_rate"),
    ("learning_rate", -1e-5, "learning_rate"),
    ("clip_norm", 0.0, "clip_norm"),
    ("clip_norm", -0.05, "clip_norm"),
    ("components", "head", "components"),
    ("eps", 0.0, "eps"),
    ("b2", 1.0, "b2"),
    ("warmup_fraction", 1.5, "warmup_fraction"),
    ("weight_decay", -0.1, "weight_decay"),
    ("b1", None, "opt_config.b1 must be a finite number, got None"),
    ("bias_correction", None, "opt_config.bias_correction must be True or False, got None"),
    ("decay_exclude", ("bias", "("), "opt_config.decay_exclude holds the invalid regular "
     "expression '\\('"),
])
def test_invalid_config_raises_naming_field(field, value, message):
  cfg = recipe("cwgnc")
  cfg[field] = value
  with pytest.raises(ValueError, match=message):
    build_optimizer(cfg, 10)


def test_invalid_names_and_steps():
  with pytest.raises(ValueError, match="bertadam, adamw, mixout, mosbach, cwgnc"):
    recipe("lamb")
  with pytest.raises(ValueError, match="cwgnc, cwgnc_released"):
    recipe("adamw_released")  # the released script is a row of CWGNC's only
  with pytest.raises(ValueError, match="total_steps"):
    build_optimizer(recipe("adamw"), 0)
  with pytest.raises(ValueError, match="total_steps"):
    linear_warmup_decay(1.0, 0, 0.1)
  with pytest.raises(ValueError, match="peak"):
    linear_warmup_decay(0.0, 10, 0.1)
  with pytest.raises(ValueError, match="warmup_fraction"):
    linear_warmup_decay(1.0, 10, -0.1)
  incomplete = recipe("adamw").to_dict()
  del incomplete["decay_exclude"]
  with pytest.raises(ValueError, match="decay_exclude"):
    build_optimizer(ml_collections.ConfigDict(incomplete), 10)
  with pytest.raises(ValueError, match="unknown optimizer fields.*'lr'"):
    optimizers.optimizer_config(lr=1e-3)


# -- transformers' AdamW, as the authors ran it, against a NumPy port of its step. --------

def transformers_adamw_port(params, grads_list, *, lr_at, b1, b2, eps, weight_decay, decay,
                            clip_norm=None):
  """A line-by-line NumPy port, in float32 as PyTorch runs it, of the reference's step: per
  tensor ``clip_grad_norm_(p, clip_norm)`` (GradClipTrainer), then transformers' ``AdamW.step``
  (``ClipValueAdamW`` in yangalan123/FineTuningStability, ``adamw.py`` in Mosbach et al.)::

    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    denom = exp_avg_sq.sqrt().add_(eps)
    step_size = lr * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
    p.data.addcdiv_(exp_avg, denom, value=-step_size)
    p.data.add_(p.data, alpha=-lr * weight_decay)       # where decay applies

  ``lr_at(i)`` is the learning rate of the i-th step (0-based; the scheduler steps after the
  optimizer, so step 0 uses the schedule's value at 0).
  """
  f32 = np.float32
  theta = {k: np.array(v, f32) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  v = {k: np.zeros_like(x) for k, x in theta.items()}
  for i, grads in enumerate(grads_list):
    step, lr = i + 1, lr_at(i)
    for k in theta:
      g = np.array(grads[k], f32)
      if clip_norm is not None:
        norm = float(np.linalg.norm(g.astype(np.float64)))
        coef = clip_norm / (norm + 1e-6)
        if coef < 1:
          g = g * f32(coef)
      m[k] = m[k] * f32(b1) + g * f32(1 - b1)
      v[k] = v[k] * f32(b2) + g * g * f32(1 - b2)
      denom = np.sqrt(v[k]) + f32(eps)
      step_size = lr * math.sqrt(1.0 - b2**step) / (1.0 - b1**step)
      theta[k] = theta[k] + f32(-step_size) * (m[k] / denom)
      if decay[k] and weight_decay > 0:
        theta[k] = theta[k] + theta[k] * f32(-lr * weight_decay)
  return theta


def _tiny_gradient_case(seed=7, steps=12):
  """Parameters and gradients where eps matters: a 64x256 kernel whose raw gradient (norm ~5)
  CWGNC clips to 0.05 (entries ~2e-4), and a bias and a LayerNorm scale with raw gradients of
  ~1e-6 (below eps, unclipped)."""
  rng = np.random.default_rng(seed)
  params = {"layer/kernel": rng.standard_normal((64, 256)).astype(np.float32) * 0.05,
            "layer/bias": rng.standard_normal((256,)).astype(np.float32) * 0.05,
            "layer/layer_norm/scale": 1 + 0.1 * rng.standard_normal((256,)).astype(np.float32)}
  scales = {"layer/kernel": 0.04, "layer/bias": 1e-6, "layer/layer_norm/scale": 3e-6}
  grads = [{k: (scales[k] * rng.standard_normal(p.shape)).astype(np.float32)
            for k, p in params.items()} for _ in range(steps)]
  return params, grads


def _as_tree(flat):
  """``{'a/b': x}`` as the nested dict whose paths those are (the decay mask reads paths)."""
  tree = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = jnp.asarray(value)
  return tree


def _flat(tree):
  return {k: np.asarray(v) for k, v in by_path(tree).items()}


@pytest.mark.parametrize("name", ["cwgnc", "adamw", "cwgnc_released"])
def test_recipe_is_transformers_adamw_to_float32_precision(name):
  """build_optimizer(recipe(name)) takes the reference's steps: warmup over 10% of 12 steps,
  decay only off biases and LayerNorm, tiny gradients where eps is not negligible."""
  cfg = recipe(name)
  cfg.max_grad_norm = None  # the global clip is optax's own; this test is about Adam
  total = 12
  params, grads = _tiny_gradient_case(steps=total)
  schedule = linear_warmup_decay(cfg.learning_rate, total, cfg.warmup_fraction)
  decay = {k: not expected_no_decay("/" + k) for k in params}
  reference = transformers_adamw_port(
      params, grads, lr_at=lambda i: float(schedule(i)), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
      weight_decay=cfg.weight_decay, decay=decay, clip_norm=cfg.clip_norm)
  ours, _, _ = run_steps(build_optimizer(cfg, total), _as_tree(params),
                         [_as_tree(g) for g in grads])
  ours = _flat(ours)
  for k in params:
    change_ours, change_ref = ours[k] - params[k], reference[k] - params[k]
    assert np.abs(change_ref).max() > 0, k
    # Float32 precision: a few rounding steps of the parameters themselves per update.
    np.testing.assert_allclose(ours[k], reference[k], rtol=0, atol=4e-7 * total * max(
        1.0, np.abs(params[k]).max()), err_msg=k)
    np.testing.assert_allclose(change_ours.sum(), change_ref.sum(), rtol=1e-3, err_msg=k)


def test_optax_form_differs_from_the_reference_where_eps_matters():
  """The regime the issue measured: optax's Adam over tiny clipped gradients moves the
  parameters far more than transformers' AdamW; over gradients far above eps the two agree."""
  cfg = recipe("cwgnc")
  total = 12
  params, grads = _tiny_gradient_case(steps=total)
  moved = {}
  for form in ADAM_FORMS:
    cfg.adam_form = form
    final, _, _ = run_steps(build_optimizer(cfg, total), _as_tree(params),
                            [_as_tree(g) for g in grads])
    moved[form] = {k: np.abs(v - params[k]).sum() for k, v in _flat(final).items()}
  for k in ("layer/bias", "layer/layer_norm/scale"):  # |g| ~ 1e-6: eps dominates sqrt(v)
    assert moved["optax"][k] > 2.0 * moved["transformers"][k], k
  large = [jax.tree.map(lambda g: g * 1e4, g) for g in grads]  # |g| >> eps
  cfg.clip_norm = None
  finals = {}
  for form in ADAM_FORMS:
    cfg.adam_form = form
    finals[form], _, _ = run_steps(build_optimizer(cfg, total), _as_tree(params),
                                   [_as_tree(g) for g in large])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               finals["optax"], finals["transformers"])


def test_transformers_adam_is_optax_adam_with_eps_over_sqrt_of_correction():
  """``sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)`` = optax's direction with eps/sqrt(1-b2^t)."""
  b1, b2, eps = 0.9, 0.999, 1e-3
  rng = np.random.default_rng(8)
  params = {"w": np.zeros((6,), np.float32)}
  grads = [{"w": 1e-3 * rng.standard_normal((6,)).astype(np.float32)} for _ in range(4)]
  _, _, ours = run_steps(adam.scale_by_adam_transformers(b1, b2, eps), params, grads)
  for t, u in enumerate(ours, start=1):
    theirs = optax.scale_by_adam(b1, b2, eps / math.sqrt(1 - b2**t))
    _, _, expected = run_steps(theirs, params, grads[:t])
    np.testing.assert_allclose(u["w"], expected[-1]["w"], rtol=2e-5)


def test_decay_after_step_shrinks_the_stepped_parameters():
  """transformers decays ``theta + u``, optax's add_decayed_weights the pre-step ``theta``:
  at a large ``lr * wd`` the difference ``lr * wd * u`` shows."""
  lr, wd = 0.5, 0.4
  params = {"w": jnp.array([1.0, -2.0, 3.0]), "bias": jnp.array([1.0, 1.0, 1.0])}
  step = {"w": jnp.array([0.1, 0.2, -0.3]), "bias": jnp.array([0.1, 0.1, 0.1])}
  mask = {"w": True, "bias": False}
  decay = optimizers.add_decayed_weights_after_step(wd, lambda count: lr * (count + 1), mask)
  state = decay.init(params)
  for count in range(2):
    rate = lr * (count + 1) * wd
    updates, state = decay.update(step, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], (params["w"] + step["w"]) * (1 - rate), rtol=1e-6)
    np.testing.assert_allclose(new["bias"], params["bias"] + step["bias"], rtol=1e-6)
    pre_step = params["w"] + step["w"] - rate * params["w"]
    assert np.abs(np.asarray(new["w"] - pre_step)).min() > 1e-3


# -- optimizers.apply_if_finite: optax.apply_if_finite's rule, parameters updated in place. --

def _wrapper_steps(optimizer, params, grads_list, losses):
  """``optax.apply_if_finite`` then ``optax.apply_updates`` (a non-finite loss is passed as
  a NaN gradient entry), jitted: the reference for ``optimizers.apply_if_finite``."""
  wrapped = optax.apply_if_finite(optimizer, max_consecutive_errors=2**31 - 1)

  @jax.jit
  def step(params, state, grads, loss):
    grads = jax.tree.map(lambda g: g + jnp.where(jnp.isfinite(loss), 0.0, jnp.nan), grads)
    updates, state = wrapped.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state, out = wrapped.init(params), []
  for grads, loss in zip(grads_list, losses):
    params, state = step(params, state, grads, loss)
    out.append((params, state))
  return out


def _in_place_steps(optimizer, params, grads_list, losses):
  step = jax.jit(lambda p, s, g, l: optimizers.apply_if_finite(optimizer, g, s, p, l))
  state, out = optimizers.init_state(optimizer, params), []
  for grads, loss in zip(grads_list, losses):
    params, state = step(params, state, grads, loss)
    out.append((params, state))
  return out


def test_apply_if_finite_is_optax_apply_if_finite_then_apply_updates():
  """Same counts, moments and clip statistics bit for bit, and the same parameters up to the
  rounding of the step (one fused multiply-add where the wrapper rounds ``-lr * d`` first),
  over finite steps, a NaN gradient, an infinite loss with finite gradients, and finite
  gradients whose squared norm overflows float32 (applied: every entry is finite)."""
  params = bert_params()
  cfg = recipe("cwgnc")
  cfg.warmup_fraction = 0.0
  optimizer = build_optimizer(cfg, 10)
  grads = random_grads(params, 6, seed=11, scale=0.01)
  grads[1]["encoder"]["layers"][0]["intermediate"]["kernel"][1, 2] = np.nan
  grads[4]["pooler"]["kernel"][:] = 3e19  # sum of squares: inf in float32
  losses = [0.7, 0.7, np.inf, 0.6, 0.6, 0.5]
  ours = _in_place_steps(optimizer, params, grads, losses)
  reference = _wrapper_steps(optimizer, params, grads, losses)

  applied = [bool(s.last_finite) for _, s in ours]
  assert applied == [True, False, False, True, True, True]
  assert [int(s.total_notfinite) for _, s in ours] == [0, 1, 2, 2, 2, 2]
  assert [int(s.notfinite_count) for _, s in ours] == [0, 1, 2, 0, 0, 0]
  # Two programs: counts and flags exactly; float state (moments, clip norms) at rtol 1e-6,
  # as another CPU may contract a moment's update into a fused multiply-add in one program
  # and not the other, or sum a norm in another order (measured equal bit for bit here,
  # 2026-12-07); 1e-6 is a few float32 ulps, and a skipped or doubled step moves them by
  # far more.
  def same_state(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if not np.issubdtype(a.dtype, np.floating):
      return bool(np.array_equal(a, b))
    return bool(np.allclose(a, b, rtol=1e-6, atol=0, equal_nan=True))
  for (p, s), (p_ref, s_ref) in zip(ours, reference):
    assert jax.tree.all(jax.tree.map(same_state, s, s_ref))
    scale = max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(p_ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=scale * 2**-23),
                 p, p_ref)
  # A skipped step leaves parameters and state exactly as they were.
  for before, after in ((ours[0], ours[1]), (ours[1], ours[2])):
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                                     (before[0], before[1].inner_state),
                                     (after[0], after[1].inner_state)))
  # The overflowing step is applied, but its pooler kernel gradient clips to exactly zero: in
  # float32 the squared norm is inf, so the scale 0.05 / (inf + eps) is 0. The step is the one
  # a zero pooler kernel gradient gives, which moves the kernel by momentum and decay alone.
  assert np.isinf(component_norm_stats(ours[4][1])["norms"]["pooler/kernel"])
  zeroed = jax.tree.map(np.copy, grads[4])
  zeroed["pooler"]["kernel"][:] = 0.0
  step = jax.jit(lambda p, s, g, l: optimizers.apply_if_finite(optimizer, g, s, p, l))
  expected, _ = step(ours[3][0], ours[3][1], zeroed, losses[4])
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), ours[4][0], expected))
  assert not np.array_equal(ours[4][0]["pooler"]["kernel"], ours[3][0]["pooler"]["kernel"])


def test_all_finite():
  tree = {"a": np.ones((3, 4), np.float32), "b": np.zeros((5,), np.float32)}
  check = jax.jit(optimizers.all_finite)
  assert bool(check(tree))
  for bad in (np.nan, np.inf, -np.inf):
    broken = jax.tree.map(np.copy, tree)
    broken["a"][2, 1] = bad
    assert not bool(check(broken)), bad
  huge = {"a": np.full((3, 4), 1e30, np.float32)}  # finite entries, overflowing sum
  assert bool(check(huge))
