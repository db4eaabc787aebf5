"""clip_by_component_norm against independent NumPy computations and Optax's own clips."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cwgnc_jax import clipping, paths
from cwgnc_jax.clipping import clip_by_component_norm, component_norm_stats

EPS = 1e-6


def scaled_leaf(rng, shape, norm):
  """A random float32 array with exactly the given L2 norm."""
  x = rng.standard_normal(shape)
  return (x * norm / np.linalg.norm(x)).astype(np.float32)


def random_tree(c, seed=0):
  """Leaves far above, near (both sides) and below the threshold ``c``, one all-zero."""
  rng = np.random.default_rng(seed)
  return {
      "far_above": {"kernel": scaled_leaf(rng, (16, 8), 100 * c),
                    "bias": scaled_leaf(rng, (8,), 3 * c)},
      "near": {"above": scaled_leaf(rng, (5, 7), 1.001 * c),
               "below": scaled_leaf(rng, (7,), 0.999 * c)},
      "below": scaled_leaf(rng, (3, 4, 2), 0.01 * c),
      "zero": np.zeros((4,), np.float32),
  }


def leaves_by_path(tree):
  return {paths.path_to_str(k): np.asarray(v, np.float64)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def numpy_clip(g, c, eps=EPS):
  g = np.asarray(g, np.float64)
  return g * min(1.0, c / (np.linalg.norm(g) + eps))


def run(transform, grads):
  state = transform.init(grads)
  return transform.update(grads, state)


@pytest.mark.parametrize("c", [0.05, 1.0])
def test_per_leaf_matches_numpy(c):
  grads = random_tree(c)
  clipped, state = run(clip_by_component_norm(c), grads)
  clipped = leaves_by_path(clipped)
  for path, g in leaves_by_path(grads).items():
    out = clipped[path]
    np.testing.assert_allclose(out, numpy_clip(g, c), rtol=1e-6, atol=1e-12, err_msg=path)
    norm = np.linalg.norm(np.asarray(g, np.float64))
    np.testing.assert_allclose(state.norms[path], norm, rtol=1e-6, err_msg=path)
    assert bool(state.clipped[path]) == (norm + EPS > c), path
  assert bool(state.clipped["near/above"]) and not bool(state.clipped["near/below"])


def test_grouped_components_use_joint_norm():
  c = 1.0
  grads = random_tree(c, seed=1)
  groups = {"far_above": "g1", "near": "g2", "below": "g2", "zero": "g1"}
  label_tree = paths.map_paths(lambda path: groups[path.split("/")[0]], grads)
  by_tree, state = run(clip_by_component_norm(c, components=label_tree), grads)
  by_fn, _ = run(
      clip_by_component_norm(c, components=lambda g: paths.map_paths(
          lambda path: groups[path.split("/")[0]], g)),
      grads,
  )
  flat = leaves_by_path(grads)
  flat_out = leaves_by_path(by_tree)
  for label in ("g1", "g2"):
    members = [p for p in flat if groups[p.split("/")[0]] == label]
    joint = np.sqrt(sum(np.sum(flat[p] ** 2) for p in members))
    scale = min(1.0, c / (joint + EPS))
    np.testing.assert_allclose(state.norms[label], joint, rtol=1e-6)
    for p in members:
      np.testing.assert_allclose(flat_out[p], flat[p] * scale, rtol=1e-6, atol=1e-12, err_msg=p)
  jax.tree.map(np.testing.assert_array_equal, by_tree, by_fn)
  assert set(state.norms) == {"g1", "g2"}


def test_one_leaf_equals_clip_by_global_norm():
  g = scaled_leaf(np.random.default_rng(2), (32, 16), 7.0)
  ours, _ = run(clip_by_component_norm(0.5), g)
  theirs, _ = run(optax.clip_by_global_norm(0.5), g)
  # Optax divides by the bare norm, we by norm + 1e-6: relative difference ~1e-6 / 7.
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_every_leaf_equals_clip_by_block_rms_with_c_over_sqrt_n():
  c = 0.3
  grads = random_tree(c, seed=3)
  ours, _ = run(clip_by_component_norm(c), grads)
  for g, out in zip(jax.tree.leaves(grads), jax.tree.leaves(ours)):
    theirs, _ = run(optax.clip_by_block_rms(c / np.sqrt(g.size)), g)
    # Same scale up to eps: norm / (norm + 1e-6) with norms >= 3e-3 here.
    np.testing.assert_allclose(out, theirs, rtol=5e-4, atol=1e-12)


@pytest.mark.parametrize("eps", [EPS, 0.0])
def test_all_zero_gradients_stay_zero(eps):
  grads = {"a": jnp.zeros((3, 3)), "b": jnp.zeros((2,), jnp.bfloat16)}
  out, state = run(clip_by_component_norm(0.05, eps=eps), grads)
  for leaf in jax.tree.leaves(out):
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
    np.testing.assert_array_equal(np.asarray(leaf, np.float32), 0.0)
  assert not any(bool(v) for v in state.clipped.values())


def test_clipping_twice_changes_nothing():
  c = 1.0
  transform = clip_by_component_norm(c)
  once, _ = run(transform, random_tree(c, seed=4))
  twice, _ = run(transform, once)
  # After one clip a norm is c * n / (n + eps); the second scale is 1 - O(eps / c).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2 * EPS / c), once, twice)


def test_jit_and_eager_agree():
  transform = clip_by_component_norm(0.05, components="qkv")
  grads = jax.tree.map(jnp.asarray, random_tree(0.05, seed=5))
  state = transform.init(grads)
  eager, eager_state = transform.update(grads, state)
  jitted, jitted_state = jax.jit(transform.update)(grads, state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager_state, jitted_state)


def test_threshold_schedule_through_inject_hyperparams():
  thresholds = [4.0, 2.0, 0.5, 0.5]
  schedule = optax.piecewise_constant_schedule(4.0, {1: 0.5, 2: 0.25})
  transform = optax.inject_hyperparams(clip_by_component_norm)(max_norm=schedule)
  g = {"w": scaled_leaf(np.random.default_rng(6), (10,), 3.0)}
  state = transform.init(g)
  update = jax.jit(transform.update)
  for c in thresholds:
    out, state = update(g, state)
    np.testing.assert_allclose(out["w"], numpy_clip(g["w"], c), rtol=1e-6)
    np.testing.assert_allclose(component_norm_stats(state)["norms"]["w"], 3.0, rtol=1e-6)
    assert bool(component_norm_stats(state)["clipped"]["w"]) == (c < 3.0)


def test_bfloat16_stays_bfloat16_and_matches_float32():
  c = 1.0
  grads32 = {k: jnp.asarray(v) for k, v in random_tree(c, seed=7)["far_above"].items()}
  grads16 = jax.tree.map(lambda g: g.astype(jnp.bfloat16), grads32)
  out16, state16 = run(clip_by_component_norm(c), grads16)
  out32, _ = run(clip_by_component_norm(c), jax.tree.map(lambda g: g.astype(jnp.float32), grads16))
  for leaf16, leaf32 in zip(jax.tree.leaves(out16), jax.tree.leaves(out32)):
    assert leaf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(leaf16, np.float32), leaf32, rtol=1e-2, atol=1e-6)
  for path, norm in state16.norms.items():
    assert norm.dtype == jnp.float32
    exact = np.linalg.norm(np.asarray(grads16[path], np.float64))
    np.testing.assert_allclose(norm, exact, rtol=1e-6)


def test_first_adam_moment_is_clipped_gradient():
  c, b1 = 0.05, 0.9
  grads = random_tree(c, seed=8)
  transform = optax.chain(clip_by_component_norm(c), optax.scale_by_adam(b1=b1))
  params = jax.tree.map(jnp.zeros_like, grads)
  state = transform.init(params)
  _, state = transform.update(grads, state, params)
  mu = state[1].mu
  for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mu)):
    np.testing.assert_allclose(m, (1 - b1) * numpy_clip(g, c), rtol=1e-6, atol=1e-12)


def test_threshold_mapping_per_label():
  grads = {"a": np.full((4,), 1.0, np.float32), "b": np.full((4,), 1.0, np.float32)}
  out, _ = run(clip_by_component_norm({"a": 1.0, "b": 10.0, "unused": 3.0}), grads)
  np.testing.assert_allclose(out["a"], numpy_clip(grads["a"], 1.0), rtol=1e-6)
  np.testing.assert_allclose(out["b"], grads["b"])
  with pytest.raises(ValueError, match=r"max_norm .*\['b'\]"):
    clip_by_component_norm({"a": 1.0}).init(grads)


def tiny_bert_grads():
  layer = {
      "attention": {
          name: {"kernel": np.ones((2, 2), np.float32), "bias": np.ones((2,), np.float32)}
          for name in ("query", "key", "value", "output")
      },
      "output": {"kernel": np.ones((2, 2), np.float32), "bias": np.ones((2,), np.float32)},
  }
  return {
      "embeddings": {"word_embeddings": {"embedding": np.ones((3, 2), np.float32)}},
      "encoder": {"layers": {0: layer, 1: jax.tree.map(lambda x: 2 * x, layer)}},
      "classifier": {"kernel": np.ones((2, 2), np.float32)},
  }


def test_label_helpers():
  grads = tiny_bert_grads()
  qkv = clipping.qkv_components(grads)
  assert qkv["encoder"]["layers"][1]["attention"]["key"]["kernel"] == (
      "encoder/layers/1/attention/qkv/kernel")
  assert qkv["encoder"]["layers"][1]["attention"]["value"]["bias"] == (
      "encoder/layers/1/attention/qkv/bias")
  assert qkv["encoder"]["layers"][1]["attention"]["output"]["bias"] == (
      "encoder/layers/1/attention/output/bias")
  assert qkv["encoder"]["layers"][0]["output"]["kernel"] == "encoder/layers/0/output/kernel"
  _, state = run(clip_by_component_norm(1.0, components="qkv"), grads)
  # Three 2x2 kernels of 2s in layer 1: sqrt(3 * 4 * 4).
  np.testing.assert_allclose(state.norms["encoder/layers/1/attention/qkv/kernel"], np.sqrt(48.0))
  assert len(state.norms) == 1 + 2 * (4 + 1 + 1) + 1  # embeddings, 2 x (qkv kinds + rest), head
  _, state = run(clip_by_component_norm(1.0, components="layer"), grads)
  assert set(state.norms) == {"embeddings", "encoder/layers/0", "encoder/layers/1", "head"}
  # Layer 0: 5 kernels (4 entries) and 5 biases (2 entries) of ones.
  np.testing.assert_allclose(state.norms["encoder/layers/0"], np.sqrt(30.0))
  _, state = run(clip_by_component_norm(1.0, components="tensor"), grads)
  assert set(state.norms) == set(jax.tree.leaves(paths.tree_paths(grads)))


def test_component_norm_stats_inside_nested_states():
  grads = {"w": np.full((4,), 2.0, np.float32), "b": np.zeros((2,), np.float32)}
  transform = optax.chain(
      optax.inject_hyperparams(clip_by_component_norm)(max_norm=1.0),
      optax.scale_by_adam(),
  )
  state = transform.init(grads)
  _, state = transform.update(grads, state, grads)
  stats = component_norm_stats(state)
  np.testing.assert_allclose(stats["norms"]["w"], 4.0)
  np.testing.assert_allclose(stats["norms"]["b"], 0.0)
  assert bool(stats["clipped"]["w"]) and not bool(stats["clipped"]["b"])
  assert component_norm_stats(optax.adam(1e-3).init(grads)) == {"norms": {}, "clipped": {}}


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_invalid_threshold_names_argument(bad):
  with pytest.raises(ValueError, match="max_norm"):
    clip_by_component_norm(bad)
  with pytest.raises(ValueError, match=r"max_norm\['a'\]"):
    clip_by_component_norm({"a": bad})


def test_invalid_components_and_eps_name_argument():
  with pytest.raises(ValueError, match="components"):
    clip_by_component_norm(1.0, components="per_head")
  with pytest.raises(ValueError, match="components"):
    run(clip_by_component_norm(1.0, components={"only": "one"}), {"a": np.ones(2), "b": np.ones(2)})
  with pytest.raises(ValueError, match="eps"):
    clip_by_component_norm(1.0, eps=-1.0)
