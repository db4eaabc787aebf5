"""BertAdam, CWGNC, the Table 1 recipes and build_optimizer against NumPy references."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cwgnc_jax import optimizers, paths
from cwgnc_jax.clipping import clip_by_component_norm, component_norm_stats
from cwgnc_jax.optimizers import (
    bert_adam,
    build_optimizer,
    cwgnc,
    decay_mask,
    linear_warmup_decay,
    recipe,
)

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
  _, _, adam = run_steps(optax.adam(1.0, b1, b2, eps=0.0), params, grads)
  for t, (u_ours, u_adam) in enumerate(zip(ours, adam), start=1):
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
  ours, _, _ = run_steps(cwgnc(1e-3), params, grads)
  theirs, _, _ = run_steps(reference, params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)


def test_decay_mask_excludes_exactly_biases_and_layer_norm():
  params = bert_params()
  mask = by_path(decay_mask(params))
  assert len(mask) == 5 + 2 * 16 + 4  # embeddings, 2 layers, pooler + classifier
  for path, decayed in mask.items():
    assert decayed == (not expected_no_decay(path)), path
  assert not mask["embeddings/layer_norm/scale"] and mask["embeddings/word_embeddings/embedding"]


@pytest.mark.parametrize("name", ["bertadam", "adamw", "mosbach", "cwgnc"])
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
  assert released == recipe("cwgnc", released_code=True)
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


def random_grads(params, n, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda x: scale * rng.standard_normal(x.shape).astype(np.float32), params)
          for _ in range(n)]


@pytest.mark.parametrize("name", ["bertadam", "adamw", "cwgnc", "both_clips"])
def test_build_optimizer_equals_explicit_chain(name):
  cfg = recipe("cwgnc" if name == "both_clips" else name)
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
      "cwgnc": [cwgnc(schedule, clip_norm=0.05)],
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
])
def test_invalid_config_raises_naming_field(field, value, message):
  cfg = recipe("cwgnc")
  cfg[field] = value
  with pytest.raises(ValueError, match=message):
    build_optimizer(cfg, 10)


def test_invalid_names_and_steps():
  with pytest.raises(ValueError, match="bertadam, adamw, mosbach, cwgnc"):
    recipe("lamb")
  with pytest.raises(ValueError, match="released_code"):
    recipe("adamw", released_code=True)
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
  assert optimizers.RECIPES[:4] == ("bertadam", "adamw", "mosbach", "cwgnc")
