"""The Flax BERT: parameter paths, the packed layout, dropout, dtypes, speed, HF parity."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cwgnc_jax import paths
from cwgnc_jax.data import batching, glue
from cwgnc_jax.models import bert
from cwgnc_jax.models import dropout as dropout_lib
from cwgnc_jax.models import (BertForSequenceClassification, apply_fn, from_pretrained,
                              load_tokenizer, read_bert_weights, split_params, tiny_config)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "minilm_parity.npz"


def tiny_model(num_labels=3, seed=0, **overrides):
  return BertForSequenceClassification(tiny_config(**overrides), num_labels,
                                       rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def tiny():
  """A tiny model, its parameters and its jitted pure forward ``(params, inputs, key=None)``
  (compiled once per shape)."""
  model = tiny_model()
  graph, constants, params = split_params(model)
  apply = apply_fn(graph)
  return model, params, jax.jit(lambda p, inputs, key=None: apply(p, constants, inputs, key))


def padded_batch(examples, length):
  """The contract's padded layout: one example per row, segment 1, [CLS] at column 0."""
  rows = len(examples)
  batch = {key: np.zeros((rows, length), np.int32)
           for key in ("input_ids", "token_type_ids", "position_ids", "segment_ids")}
  for row, (ids, types) in enumerate(examples):
    n = len(ids)
    batch["input_ids"][row, :n] = ids
    batch["token_type_ids"][row, :n] = types
    batch["position_ids"][row, :n] = np.arange(n)
    batch["segment_ids"][row, :n] = 1
  batch["cls_index"] = np.arange(rows, dtype=np.int32) * length
  return batch


def random_examples(rng, lengths, vocab=100):
  return [(rng.integers(1, vocab, n), (np.arange(n) >= n // 2).astype(np.int32))
          for n in lengths]


def test_parameter_paths_are_the_contract(tiny):
  _, params, _ = tiny
  expected = {"embeddings/word_embeddings/embedding", "embeddings/position_embeddings/embedding",
              "embeddings/token_type_embeddings/embedding", "embeddings/layer_norm/scale",
              "embeddings/layer_norm/bias", "pooler/kernel", "pooler/bias",
              "classifier/kernel", "classifier/bias"}
  for i in range(2):
    layer = f"encoder/layers/{i}"
    for name in ("attention/query", "attention/key", "attention/value", "attention/output",
                 "intermediate", "output"):
      expected |= {f"{layer}/{name}/kernel", f"{layer}/{name}/bias"}
    for name in ("attention/layer_norm", "output/layer_norm"):
      expected |= {f"{layer}/{name}/scale", f"{layer}/{name}/bias"}
  assert set(jax.tree_util.tree_leaves(paths.tree_paths(params))) == expected
  assert params["encoder"]["layers"][1]["intermediate"]["kernel"].shape == (32, 64)  # [in, out]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_apply_fn_is_the_model_as_a_pure_function(tiny):
  model, params, apply = tiny
  batch = padded_batch(random_examples(np.random.default_rng(0), [7, 4]), 8)
  np.testing.assert_allclose(apply(params, batch), model(batch), atol=1e-6)
  shifted = jax.tree_util.tree_map(lambda p: p + 0.01, params)
  assert not np.allclose(apply(shifted, batch), apply(params, batch), atol=1e-4)


def test_packed_rows_give_the_padded_logits(tiny):
  _, params, apply = tiny
  examples = random_examples(np.random.default_rng(1), [6, 3, 5])
  padded = padded_batch(examples, 8)
  # Packed by hand: examples 0 and 1 end to end in row 0 (segments 1, 2, positions restart),
  # example 2 alone in row 1, T = 10 with padding at the ends.
  length = 10
  packed = {key: np.zeros((2, length), np.int32)
            for key in ("input_ids", "token_type_ids", "position_ids", "segment_ids")}
  placements = [(0, 0, 1), (0, 6, 2), (1, 0, 1)]  # row, start column, segment
  for (ids, types), (row, start, segment) in zip(examples, placements):
    cols = slice(start, start + len(ids))
    packed["input_ids"][row, cols] = ids
    packed["token_type_ids"][row, cols] = types
    packed["position_ids"][row, cols] = np.arange(len(ids))
    packed["segment_ids"][row, cols] = segment
  packed["cls_index"] = np.array([0, 6, length], np.int32)
  np.testing.assert_allclose(apply(params, packed), apply(params, padded), atol=1e-5)


def test_attention_mask_is_block_diagonal_without_padding():
  mask = np.asarray(bert.attention_mask(jnp.array([[1, 1, 2, 0]])))[0, 0]
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])


def test_explicit_attention_equals_dot_product_attention():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 2, 4))
  mask = bert.attention_mask(jnp.array([[1, 1, 2, 2, 0], [1, 1, 1, 0, 0]]))
  explicit = bert.attention_with_dropout(q, k, v, mask, 0.0, jax.random.key(1))
  np.testing.assert_allclose(explicit, jax.nn.dot_product_attention(q, k, v, mask=mask),
                             atol=1e-6)


def test_gelu_is_pytorchs_kernel_down_to_its_zero_tail():
  """A NumPy port of PyTorch's exact GELU and of its backward kernel, in float32:
  ``x * 0.5 * (1 + erf(x a))`` and ``0.5 (1 + erf(x a)) + x * beta * exp(-x^2 / 2)``."""
  from scipy.special import erf
  x = np.linspace(-9, 4, 20001, dtype=np.float32)
  a, beta = np.float32(np.sqrt(0.5)), np.float32(np.sqrt(0.5) / np.sqrt(np.pi))
  one_plus_erf = np.float32(1) + erf(x * a).astype(np.float32)
  forward = x * np.float32(0.5) * one_plus_erf
  backward = np.float32(0.5) * one_plus_erf + x * (beta * np.exp(x * x * np.float32(-0.5)))
  ours = np.asarray(jax.jit(bert.gelu)(x))
  grad = np.asarray(jax.jit(jax.vmap(jax.grad(bert.gelu)))(x))
  # erf implementations differ by ulps near -1: a few float32 steps (2^-24) of 1 + erf
  steps = np.abs(ours - forward) / (np.abs(x) * 0.5 * 2.0 ** -24 + np.spacing(np.abs(forward)))
  assert steps.max() <= 5
  np.testing.assert_allclose(grad, backward, rtol=1e-5, atol=3e-7)
  # Where float32 erf(x a) is -1, PyTorch's GELU is exactly 0; erfc's (jax.nn.gelu) is not,
  # and its gradient there lacks 0.5 (1 + erf) = 0 by a few percent.
  tail = one_plus_erf == 0
  assert tail.sum() > 5000
  assert np.all(ours[tail] == 0)
  far = tail & (x > -8)  # where exp(-x^2 / 2) is still a normal float32
  np.testing.assert_allclose(grad[far], backward[far], rtol=1e-4)
  erfc_form = jax.vmap(jax.grad(functools.partial(jax.nn.gelu, approximate=False)))
  assert np.all(np.asarray(jax.nn.gelu(x[tail], approximate=False)) != 0)
  assert np.abs(np.asarray(erfc_form(x[far])) / backward[far] - 1).max() > 1e-2


@pytest.mark.parametrize("bits", bert.DROPOUT_BITS)
def test_dropout_scales_kept_units(bits):
  x = jnp.ones((200, 500))
  dropped = np.asarray(dropout_lib.dropout(x, 0.1, jax.random.key(0), bits))
  assert set(np.unique(dropped)) == {0.0, np.float32(1 / 0.9)}
  assert abs((dropped == 0).mean() - 0.1) < 0.005


@pytest.mark.parametrize("shape", [(1,), (7, 33), (2, 3, 16, 16)])
@pytest.mark.parametrize("p", [0.9, 0.5, 0.1])
def test_fused_threefry_bernoulli_is_jax_random_bernoulli_bit_for_bit(shape, p):
  """The straight-line threefry draws exactly jax's masks (typed, split, folded and raw
  keys; eagerly and under jit): ``dropout_bits='threefry'`` gives jax's random bits."""
  key = jax.random.key(5)
  for k in (key, jax.random.split(key, 3)[2], jax.random.fold_in(key, 11), jax.random.PRNGKey(7)):
    expected = np.asarray(jax.random.bernoulli(k, p, shape))
    np.testing.assert_array_equal(dropout_lib.threefry_bernoulli(k, p, shape), expected)
    np.testing.assert_array_equal(jax.jit(lambda kk: dropout_lib.threefry_bernoulli(kk, p, shape))(k),
                                  expected)
  # The straight-line path is the one taken here (else the test would compare jax to itself).
  assert dropout_lib._fast_bernoulli_applies(key, p, shape)  # pylint: disable=protected-access


def _lowbias32(x: np.ndarray) -> np.ndarray:
  """Wellons' lowbias32 in NumPy uint32 arithmetic (wrapping multiplies)."""
  x = x ^ (x >> np.uint32(16))
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> np.uint32(15))
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> np.uint32(16))


@pytest.mark.parametrize("p", [0.9, 0.5, 0.1, 1 - 2**-34])
def test_hash_bernoulli_is_the_documented_hash(p):
  """``keep_i = lowbias32(lowbias32(i ^ k0) ^ k1) < round(p 2^32)``, ported to NumPy, for a
  typed and a raw key, eagerly and under jit; a p within 2^-33 of 1 keeps nearly all."""
  shape = (3, 5, 7)
  # A bijection (no two of 2^20 inputs collide), as the docstring's distinctness rests on.
  assert len(np.unique(_lowbias32(np.arange(2**20, dtype=np.uint32)))) == 2**20
  for key in (jax.random.fold_in(jax.random.key(3), 2), jax.random.PRNGKey(9)):
    k0, k1 = np.asarray(jax.random.key_data(key) if key.dtype != jnp.uint32 else key)
    index = np.arange(np.prod(shape), dtype=np.uint32).reshape(shape)
    with np.errstate(over="ignore"):
      bits = _lowbias32(_lowbias32(index ^ k0) ^ k1)
    np.testing.assert_array_equal(dropout_lib.hash_bits(key, shape), bits)
    expected = bits < np.uint32(min(round(p * 2**32), 2**32 - 1))
    np.testing.assert_array_equal(dropout_lib.hash_bernoulli(key, p, shape), expected)
    np.testing.assert_array_equal(jax.jit(lambda k: dropout_lib.hash_bernoulli(k, p, shape))(key),
                                  expected)


@pytest.mark.parametrize("bernoulli", [dropout_lib.hash_bernoulli, dropout_lib.threefry_bernoulli])
def test_dropout_keep_rate_and_independence_across_keys(bernoulli):
  """Keep rate 0.9 within 4 standard errors over 2e6 draws; masks of different keys (layers,
  steps: ``split``, ``fold_in``; raw keys one bit apart) agree only as often as independent
  ones do (0.82); neighbouring entries along every axis are uncorrelated."""
  shape = (4, 12, 128, 128)
  step_key = jax.random.fold_in(jax.random.key(1), 3)
  keys = list(jax.random.split(step_key, 3)) + [jax.random.fold_in(jax.random.key(1), 4)]
  raw = np.asarray(jax.random.key_data(keys[0]))
  keys += [jnp.asarray(raw ^ np.array([1, 0], np.uint32)),
           jnp.asarray(raw ^ np.array([0, 1 << 31], np.uint32))]
  masks = [np.asarray(bernoulli(k, 0.9, shape)) for k in keys]
  n = masks[0].size
  for mask in masks:
    assert abs(mask.mean() - 0.9) < 4 * np.sqrt(0.09 / n)
    # No structure along any axis: per-head and per-query keep rates are all near 0.9.
    assert np.abs(mask.mean(axis=(0, 2, 3)) - 0.9).max() < 0.01
    centred = mask - mask.mean()
    for axis in range(len(shape)):  # lag-1 correlation along each axis
      a, b = np.moveaxis(centred, axis, 0)[1:], np.moveaxis(centred, axis, 0)[:-1]
      correlation = (a * b).mean() / centred.var()
      assert abs(correlation) < 4 / np.sqrt(a.size), (axis, correlation)
  for i in range(len(masks)):
    for j in range(i):
      agree = (masks[i] == masks[j]).mean()
      assert abs(agree - 0.82) < 4 * np.sqrt(0.82 * 0.18 / n), (i, j, agree)


@pytest.mark.parametrize("bits", bert.DROPOUT_BITS)
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])  # rbg: threefry via jax.random
def test_dropout_of_some_entries_takes_the_full_tensors_mask(bits, impl):
  """``dropout(take(x), full_shape=x.shape, take=take)`` is ``take(dropout(x))`` bit for bit:
  the [CLS]-only last layer drops exactly what the whole layer would have dropped."""
  x = jax.random.normal(jax.random.key(0), (3, 4, 6, 6))
  row, position = jnp.array([0, 0, 2, 1]), jnp.array([0, 3, 5, 0])
  take = lambda full: full[row, :, position][:, :, None]  # the attention probabilities' take
  key = jax.random.key(7, impl=impl)
  some = jax.jit(lambda y: dropout_lib.dropout(take(y), 0.3, key, bits, full_shape=y.shape, take=take))
  every = np.asarray(take(dropout_lib.dropout(x, 0.3, key, bits)))
  assert every.shape == (4, 4, 1, 6) and 0.1 < (every == 0).mean() < 0.5
  np.testing.assert_array_equal(some(x), every)


def test_a_cls_only_last_layer_gives_the_full_logits_and_gradients():
  """With ``cls_only_last_layer`` the last layer computes the [CLS] queries alone: the same
  logits and gradients in training (the same masks; either generator takes them alike, test
  above), the same logits in evaluation, for packed rows holding several examples."""
  config = tiny_config(attention_probs_dropout_prob=0.3, hidden_dropout_prob=0.3)
  full = BertForSequenceClassification(dataclasses.replace(config, cls_only_last_layer=False),
                                       3, rngs=nnx.Rngs(0))
  graph_full, constants, params = split_params(full)
  graph_cls, _, _ = split_params(BertForSequenceClassification(config, 3, rngs=nnx.Rngs(0)))
  batch = padded_batch(random_examples(np.random.default_rng(1), [6, 3, 5, 7]), 8)
  batch = {key: value.reshape(2, 16) for key, value in batch.items() if key != "cls_index"}
  batch["segment_ids"] = batch["segment_ids"] * np.array([1] * 8 + [2] * 8)  # 2 to a row
  batch["cls_index"] = np.array([0, 8, 16, 24], np.int32)

  @functools.partial(jax.jit, static_argnums=0)
  def train_and_eval(graph, params):
    loss = lambda p: jnp.sum(jnp.sin(apply_fn(graph)(p, constants, batch, jax.random.key(3)))
                             * jnp.arange(1, 4))
    return jax.value_and_grad(loss)(params), apply_fn(graph)(params, constants, batch)

  (loss_full, grads_full), eval_full = train_and_eval(graph_full, params)
  (loss_cls, grads_cls), eval_cls = train_and_eval(graph_cls, params)
  # Two computations (the last layer's products have other shapes), so tolerances. Measured
  # with XLA limited to AVX-512, AVX2 and SSE4.2 (2026-12-07): the losses equal, the logits
  # (~0.02) at most 2.8e-9 apart, the gradients (up to 12) 2.4e-7. Each bound is 10-35x that,
  # and far below what one differently dropped entry or a missing query would change.
  np.testing.assert_allclose(loss_cls, loss_full, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               grads_cls, grads_full)
  np.testing.assert_allclose(eval_cls, eval_full, rtol=1e-6, atol=1e-7)
  assert abs(loss_cls - jnp.sum(jnp.sin(eval_cls) * jnp.arange(1, 4))) > 1e-2  # masks drawn


def test_dropout_only_with_a_key_and_pure_in_the_key(tiny):
  _, params, apply = tiny
  batch = padded_batch(random_examples(np.random.default_rng(2), [8, 5]), 8)
  eval_logits = apply(params, batch)
  np.testing.assert_array_equal(apply(params, batch), eval_logits)
  train_a = apply(params, batch, jax.random.key(1))
  np.testing.assert_array_equal(apply(params, batch, jax.random.key(1)), train_a)
  assert not np.allclose(train_a, eval_logits, atol=1e-4)
  assert not np.allclose(apply(params, batch, jax.random.key(2)), train_a, atol=1e-4)


def test_attention_probability_dropout_alone_changes_the_output():
  model = tiny_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.2)
  batch = padded_batch(random_examples(np.random.default_rng(3), [8, 5]), 8)
  train = model.outputs(batch, dropout_rng=jax.random.key(0)).sequence_output
  evaluation = model.outputs(batch).sequence_output
  assert not np.allclose(train, evaluation, atol=1e-3)
  no_dropout = tiny_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  np.testing.assert_array_equal(no_dropout(batch, dropout_rng=jax.random.key(0)),
                                no_dropout(batch))


def test_bfloat16_compute_is_close_to_float32():
  batch = padded_batch(random_examples(np.random.default_rng(4), [8, 6, 3]), 8)
  full = tiny_model(seed=5)
  half = BertForSequenceClassification(tiny_config(), 3, rngs=nnx.Rngs(5), dtype=jnp.bfloat16)
  nnx.update(half, nnx.state(full, nnx.Param))
  logits_full, logits_half = full(batch), half(batch)
  assert logits_half.dtype == jnp.float32
  assert half.outputs(batch).sequence_output.dtype == jnp.bfloat16
  scale = float(jnp.abs(logits_full).max())
  np.testing.assert_allclose(logits_half, logits_full, atol=0.05 * scale)


def _spacing(values: np.ndarray, dtype) -> np.ndarray:
  """The distance between neighbouring ``dtype`` numbers at each of ``values`` (one ulp)."""
  info = jnp.finfo(dtype)
  exponent = np.floor(np.log2(np.maximum(np.abs(values), float(info.tiny))))
  return 2.0 ** (exponent - info.nmant)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dense_rounds_exact_sums_once(dtype):
  """y = round(round(x w) + b), dx = round(dy w^T), dw = round(x^T dy), db = round(sum dy),
  in NumPy float64 (exact for these sums) against the layer's float32 sums: nearly all equal,
  and the rest one ulp of the low precision apart, or within float32's summation error bound
  (n eps_32 sum |terms|, which is more only where the terms cancel). Shapes with a prime
  dimension take the plain transpose, the others the row-major one."""
  rng = np.random.default_rng(0)
  low = lambda a: np.asarray(a, np.float32).astype(dtype)
  eps32 = float(jnp.finfo(jnp.float32).eps)
  for shape in [(3, 40, 384, 96), (2, 5, 7, 11)]:
    rows, tokens, fan_in, fan_out = shape
    x, w = low(rng.normal(size=(rows, tokens, fan_in))), low(rng.normal(size=(fan_in, fan_out)))
    b, dy = low(rng.normal(size=fan_out)), low(rng.normal(size=(rows, tokens, fan_out)))
    y, vjp = jax.vjp(jax.jit(bert.low_precision_dense), x, w, b)
    got = [y, *vjp(dy)]
    x64, w64, dy64 = (np.asarray(a, np.float64).reshape(-1, a.shape[-1]) for a in (x, w, dy))
    xw = np.asarray(low(x64 @ w64), np.float64)
    want = [xw + np.asarray(b, np.float64), dy64 @ w64.T, x64.T @ dy64, dy64.sum(0)]
    # float32's summation error bound, n eps_32 sum |terms|, for each result
    bounds = [fan_in * eps32 * (abs(x64) @ abs(w64)), fan_out * eps32 * (abs(dy64) @ abs(w64.T)),
              len(x64) * eps32 * (abs(x64.T) @ abs(dy64)), len(dy64) * eps32 * abs(dy64).sum(0)]
    for name, ours, exact, bound in zip(["y", "dx", "dw", "db"], got, want, bounds, strict=True):
      assert ours.dtype == dtype and ours.shape[-1] == exact.shape[-1], name
      rounded = np.asarray(low(exact), np.float64)
      apart = np.abs(np.asarray(ours, np.float64).reshape(exact.shape) - rounded)
      # y is rounded twice: one ulp of x w can be more than one of x w + b
      ulp = _spacing(np.maximum(np.abs(rounded), np.abs(xw) if name == "y" else 0), dtype)
      assert np.all(apart <= np.maximum(ulp, bound)), (shape, name)
      assert np.mean(apart == 0) > 0.98, (shape, name)


def test_row_major_transpose_is_the_transpose():
  for shape in [(4, 6), (3, 7), (5, 384), (384, 1536)]:
    a = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
    np.testing.assert_array_equal(jax.jit(bert._row_major_transpose)(a), a.T)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's program")
def test_low_precision_dense_products_stay_bfloat16_on_cpu(monkeypatch):
  """What ``low_precision_dense`` is for: in the compiled forward and backward, all three
  products read bfloat16 operands. XLA:CPU upcasts them to float32 for ``nnx.Linear``'s
  bfloat16 layer, and for a backward product whose transpose is a plain one.

  The operand types are chosen by XLA:CPU's HLO passes, not by the CPU's kernels: this
  passed on an AVX2-only host without avx512_bf16 or AMX (issue 31's), and here with XLA
  limited to AVX2 and to SSE4.2 code (``--xla_cpu_max_isa``, 2026-12-07)."""
  def dot_operand_types(layer):
    x = jnp.ones((2, 64, 96), jnp.bfloat16)
    w, b = jnp.ones((96, 128), jnp.bfloat16), jnp.ones((128,), jnp.bfloat16)
    def layer_and_gradients(x, w, b):
      y, vjp = jax.vjp(layer, x, w, b)
      return y, *vjp(jnp.ones_like(y))
    hlo = jax.jit(layer_and_gradients).lower(x, w, b).compile().as_text()
    types = dict(re.findall(r"(%[\w.-]+) = (\w+)\[", hlo))
    return [types[name] for line in hlo.splitlines() if " dot(" in line
            for name in re.search(r" dot\(([^)]*)\)", line).group(1).split(", ")]
  assert dot_operand_types(bert.low_precision_dense) == ["bf16"] * 6
  assert set(dot_operand_types(lambda x, w, b: x @ w + b)) == {"f32"}
  monkeypatch.setattr(bert, "_row_major_transpose", lambda a: a.T)
  assert "f32" in dot_operand_types(bert.low_precision_dense)


def test_vmapped_dense_layers_are_the_seeds_one_by_one():
  """The step vmaps seeds in a program: per-seed gradients as if each ran alone."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, 2, 16, 48)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 48, 36)), jnp.bfloat16)
  b = jnp.asarray(rng.normal(size=(3, 36)), jnp.bfloat16)
  grad = jax.grad(lambda x, w, b: jnp.sum(jnp.sin(bert.low_precision_dense(x, w, b)
                                                  .astype(jnp.float32))), argnums=(0, 1, 2))
  together = jax.jit(jax.vmap(grad))(x, w, b)
  # Two programs: the vmapped products are batched dots, which another backend or CPU may
  # sum in another order. Each float32 sum is rounded to bfloat16 once, so the two can
  # differ by one bfloat16 ulp where a sum lies near a rounding midpoint; a seed mixed with
  # another would be off by far more. (Measured bit-identical under XLA:CPU's AVX-512, AVX2
  # and SSE4.2 code, 2026-12-07.)
  for seed in range(3):
    alone = jax.jit(grad)(x[seed], w[seed], b[seed])
    for a, t in zip(alone, together, strict=True):
      a, t = np.asarray(a, np.float64), np.asarray(t[seed], np.float64)
      assert np.all(np.abs(a - t) <= _spacing(np.maximum(np.abs(a), np.abs(t)), jnp.bfloat16))


def test_bias_less_and_float32_result_layers_keep_nnx_linear_arithmetic():
  """A float32 result takes nnx's own path (the same operations: bit for bit). A bias-less
  bfloat16 layer is ``low_precision_dense`` with a zero bias, a float32 sum rounded once, as
  nnx's product is, but summed by another kernel, so within one bfloat16 ulp of it (measured
  bit-identical under XLA:CPU's AVX-512, AVX2 and SSE4.2 code, 2026-12-07)."""
  x = jax.random.normal(jax.random.key(2), (5, 40))
  for options in [{"use_bias": False}, {"preferred_element_type": jnp.float32}]:
    ours = bert.Linear(40, 24, dtype=jnp.bfloat16, rngs=nnx.Rngs(3), **options)
    theirs = nnx.Linear(40, 24, dtype=jnp.bfloat16, rngs=nnx.Rngs(3), **options)
    assert ours(x).dtype == theirs(x).dtype
    if "preferred_element_type" in options:
      np.testing.assert_array_equal(ours(x), theirs(x))
      continue
    a, b = np.asarray(ours(x), np.float64), np.asarray(theirs(x), np.float64)
    assert np.all(np.abs(a - b) <= _spacing(b, jnp.bfloat16))


def test_dense_layers_keep_nnx_linear_arithmetic():
  """float32: bit for bit ``nnx.Linear``. bfloat16: the output and the input and kernel
  gradients within one ulp of it (its products sum in float32 too, in another order); the bias
  gradient is one rounding of a float32 sum, where nnx's (a bfloat16 reduction) can be several
  ulps off: closer to the exact sum, never farther."""
  x = jax.random.normal(jax.random.key(0), (4, 9, 48))
  for dtype in [jnp.float32, jnp.bfloat16]:
    ours = bert.Linear(48, 24, dtype=dtype, rngs=nnx.Rngs(1))
    theirs = nnx.Linear(48, 24, dtype=dtype, rngs=nnx.Rngs(1))
    nnx.update(ours, nnx.state(theirs, nnx.Param))
    outputs = []
    for layer in (ours, theirs):
      loss = lambda layer, x: jnp.sum(jnp.sin(layer(x).astype(jnp.float32)))
      grads = nnx.grad(loss, argnums=(0, 1))(layer, x)
      outputs.append([layer(x), grads[0]["kernel"][...], grads[0]["bias"][...], grads[1]])
    if dtype == jnp.float32:
      for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a, b)
      continue
    for a, b in zip(outputs[0][:2] + outputs[0][3:], outputs[1][:2] + outputs[1][3:], strict=True):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      assert np.all(np.abs(a - b) <= _spacing(b, jnp.bfloat16))
    dy = jax.grad(lambda y: jnp.sum(jnp.sin(y.astype(jnp.float32))))(theirs(x))
    exact = np.asarray(dy, np.float64).reshape(-1, 24).sum(0)
    ours_off, theirs_off = (np.abs(np.asarray(db, np.float64) - exact)
                            for db in (outputs[0][2], outputs[1][2]))
    assert np.all(ours_off <= _spacing(exact, jnp.bfloat16))
    assert np.all(ours_off <= theirs_off) and ours_off.sum() < theirs_off.sum()


def test_tiny_backward_reaches_every_layer_and_stays_finite_under_padding(tiny):
  model, params, _ = tiny
  graph, constants, _ = split_params(model)
  batch = padded_batch(random_examples(np.random.default_rng(6), [8, 3] * 8), 8)
  apply = apply_fn(graph)
  loss = lambda p, key: jnp.sum(apply(p, constants, batch, key) ** 2)
  grads = jax.jit(jax.grad(loss))(params, jax.random.key(1))
  # Each layer's query kernel gradient, its sum of magnitudes printed once (2026-12-07):
  # every layer is reached with its own gradient. rtol 1e-4: another CPU sums otherwise.
  sums = [float(jnp.abs(layer["attention"]["query"]["kernel"]).sum())
          for layer in grads["encoder"]["layers"].values()]
  np.testing.assert_allclose(sums, [2.6565880e-04, 2.9288410e-04], rtol=1e-4)
  # Fully masked padding queries get uniform attention weights: finite values and gradients.
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  del minilm_dir  # the fixture skips (or fails in CI) when the model package is missing
  return from_pretrained("minilm-l6", num_labels=2, seed=0)


def parity_batch(ref) -> dict[str, np.ndarray]:
  """The parity fixture's tokenized pairs, one per padded row."""
  rows, length = ref["input_ids"].shape
  return {"input_ids": ref["input_ids"], "token_type_ids": ref["token_type_ids"],
          "position_ids": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
          "segment_ids": ref["attention_mask"],
          "cls_index": np.arange(rows, dtype=np.int32) * length}


@pytest.mark.real
def test_parity_with_hf_pytorch_bert_on_minilm(minilm):
  """Last hidden state and pooler of HF's PyTorch BertModel (tools/make_parity_fixture.py)."""
  ref = np.load(FIXTURE)
  tokenized = load_tokenizer("minilm-l6")(list(ref["first"]), list(ref["second"]),
                                         padding=True, return_tensors="np")
  np.testing.assert_array_equal(tokenized["input_ids"], ref["input_ids"])
  np.testing.assert_array_equal(tokenized["token_type_ids"], ref["token_type_ids"])
  out = jax.jit(lambda b: minilm.outputs(b))(parity_batch(ref))
  real = ref["attention_mask"].astype(bool)  # padding queries differ by design (masked here)
  assert np.abs(np.asarray(out.sequence_output) - ref["last_hidden_state"])[real].max() <= 1e-4
  assert np.abs(np.asarray(out.pooled_output) - ref["pooler_output"]).max() <= 1e-4


@pytest.mark.real
def test_bfloat16_minilm_trains_in_float32s_direction(minilm):
  """The real MiniLM in bfloat16 (its dense layers through ``low_precision_dense``) on the
  parity batch: the last hidden state is HF PyTorch's to bfloat16 precision, and the gradient
  of the loss for every parameter tensor has float32's direction (cosine > 0.999) and length
  (to 5%)."""
  ref = np.load(FIXTURE)
  batch, labels = parity_batch(ref), np.arange(len(ref["input_ids"])) % 2
  half = from_pretrained("minilm-l6", num_labels=2, seed=0, dtype=jnp.bfloat16)
  out = jax.jit(lambda b: half.outputs(b))(batch)
  real = ref["attention_mask"].astype(bool)
  hidden = np.asarray(out.sequence_output, np.float32)[real]
  assert np.abs(hidden - ref["last_hidden_state"][real]).max() <= 0.1  # values up to ~5
  grads = []
  for model in (minilm, half):
    graph, constants, params = split_params(model)
    apply = apply_fn(graph)
    loss = lambda p, apply=apply, constants=constants: -jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(apply(p, constants, batch)), labels[:, None], axis=1))
    grads.append(jax.jit(jax.grad(loss))(params))
  paths = 0
  for (path, full), low in zip(jax.tree_util.tree_leaves_with_path(grads[0]),
                               jax.tree.leaves(grads[1]), strict=True):
    full, low = np.ravel(full).astype(np.float64), np.ravel(low).astype(np.float64)
    # the key bias adds q.b to all of a query's logits, which softmax ignores: its gradient is
    # rounding noise in both
    if jax.tree_util.keystr(path).endswith("['key']['bias']"):
      continue
    cosine = full @ low / (np.linalg.norm(full) * np.linalg.norm(low))
    scale = np.linalg.norm(low) / np.linalg.norm(full)
    assert cosine > 0.999 and abs(scale - 1) < 0.05, (jax.tree_util.keystr(path), cosine, scale)
    paths += 1
  assert paths > 90  # every other kernel, bias, LayerNorm parameter and embedding


@pytest.mark.real
@pytest.mark.parametrize("row_length_step", [0, 32])
def test_a_padded_tokenizer_batch_gives_the_packed_logits(minilm, row_length_step):
  """``batching.inputs_from_padded`` of the tokenizer's padded batch: the pooled [CLS] states
  and logits of the same pairs packed as training packs them (several to a row; rows of 128,
  or of the fewest slots)."""
  pairs = [("The cat sat on the mat.", "A cat is sitting."),
           ("It rained all day in Paris, and the streets were flooded by noon.", "Paris was dry."),
           ("Stocks fell.", "Markets dropped sharply on Monday after the report."),
           ("She wrote three novels before she turned thirty.", "She is a writer.")]
  first, second = map(list, zip(*pairs))
  tokenizer = load_tokenizer("minilm-l6")
  padded = batching.inputs_from_padded(tokenizer(first, second, padding=True,
                                                 return_tensors="np"))
  data = glue.tokenize([glue.Example(a, b, 0, str(i)) for i, (a, b) in enumerate(pairs)],
                       tokenizer)
  packed = batching.make_batch(data, np.arange(len(pairs)), len(pairs), layout="packed",
                               max_length=128, row_length_step=row_length_step)
  rows, length = packed["input_ids"].shape
  assert rows * length < len(pairs) * 128 and (length < 128) == (row_length_step > 0)
  outputs = jax.jit(lambda inputs: minilm.outputs(inputs))
  from_padded = outputs(padded)
  from_packed = outputs({key: packed[key] for key in bert.INPUT_KEYS})
  # Two layouts, two computations: tolerances. Measured equal bit for bit here under XLA
  # limited to AVX-512, AVX2 and SSE4.2 (2026-12-07; SSE4.2's logits themselves move by 4e-8);
  # 1e-6 is over 100 float32 ulps of these logits (< 0.08), and a layout that mixed examples
  # would move them by 1e-2 (the pairs differ, last line).
  np.testing.assert_allclose(from_padded.pooled_output, from_packed.pooled_output, atol=1e-5)
  np.testing.assert_allclose(from_padded.logits, from_packed.logits, atol=1e-6)
  assert np.ptp(np.asarray(from_padded.pooled_output)[:, 0]) > 1e-2  # the pairs differ


@pytest.mark.real
def test_pretrained_pooler_and_fresh_classifier(minilm, minilm_dir):
  config = minilm.config
  flat = {paths.path_to_str(p): leaf
          for p, leaf in jax.tree_util.tree_leaves_with_path(split_params(minilm)[2])}
  shapes = {path: leaf.shape for path, leaf in flat.items() if not path.startswith("classifier")}
  pretrained = read_bert_weights(minilm_dir / "model.safetensors", shapes)
  np.testing.assert_array_equal(minilm.pooler.kernel[...], pretrained["pooler/kernel"])
  np.testing.assert_array_equal(minilm.pooler.bias[...], pretrained["pooler/bias"])
  kernel = np.asarray(minilm.classifier.kernel[...])
  assert kernel.shape == (384, 2)
  assert abs(kernel.std() / config.initializer_range - 1) < 0.1 and abs(kernel.mean()) < 0.003
  np.testing.assert_array_equal(minilm.classifier.bias[...], np.zeros(2))
  other = from_pretrained("minilm-l6", num_labels=2, seed=1)
  assert not np.allclose(other.classifier.kernel[...], kernel)
  np.testing.assert_array_equal(other.pooler.kernel[...], minilm.pooler.kernel[...])
