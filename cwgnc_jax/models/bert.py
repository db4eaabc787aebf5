"""BERT for sequence classification in Flax NNX, numerically the same as HF ``BertModel``.

One transformer layer (post-LayerNorm, as in BERT):

  a = LN(x + drop(W_o * attention(W_q x, W_k x, W_v x)))     attention = softmax(q k^T / sqrt(d)) v
  y = LN(a + drop(W_2 * gelu(W_1 a)))                         gelu(z) = z/2 (1 + erf(z/sqrt 2))

over the embeddings ``LN(word[id] + position[pos] + token_type[tt])``. The head gathers each
example's [CLS] state ``h``, then ``logits = W_c drop(tanh(W_p h))`` (pretrained pooler W_p,
fresh classifier W_c).

The head reads the last layer at the [CLS] tokens only, so with ``cls_only_last_layer`` (the
default) that layer computes only them: keys and values of every token, and for the B [CLS]
queries alone the attention, output projection, feed-forward and LayerNorms. The logits and
gradients are those of the whole layer up to float rounding (the matmuls' shapes differ), and
the dropout masks are the whole layer's entries (``dropout``'s ``take``).

Batches are in the contract's padded or packed layout: attention goes from query q to key k iff
``segment_ids[q] == segment_ids[k] != 0`` (block-diagonal for packed rows, the padding mask for
padded rows), positions and token types come from the batch, and ``cls_index`` is each
example's flat index into the ``R * T`` tokens.

Dropout is pure: it is on exactly when a ``dropout_rng`` is passed, and every module derives
its keys from it by ``jax.random.split``; no RNG state lives in the model. The masks come from
``dropout.py`` (``BertConfig.dropout_bits``: a keyed hash, the default, or JAX's threefry bit
for bit); with the hash a MiniLM training step takes 0.95x the time
(``benchmarks/bench_dropout.py``). With dropout off (or an attention dropout rate of
0) attention runs through ``jax.nn.dot_product_attention``; because that function has no
dropout on the attention probabilities, training with attention dropout computes the same
softmax explicitly and drops probabilities before multiplying by v.

Every dense layer (query, key, value, attention output, intermediate, output, pooler,
classifier) is built by the ``linear`` constructor argument, and is called as
``layer(x, rng)``: a Mixout variant can replace ``Linear`` without touching this file's math.
Parameters are float32; ``dtype`` is the compute dtype (bfloat16 on accelerators, and on CPUs
with AMX, where ``low_precision_dense`` puts the dense layers on XLA's bfloat16 kernels), and
the logits are returned in float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from cwgnc_jax.models.dropout import Take, dropout, split_rng

# The batch keys the forward pass reads (the contract's layout; labels are ignored here).
INPUT_KEYS = ("input_ids", "token_type_ids", "position_ids", "segment_ids", "cls_index")
# The keep masks' generators (dropout.py): ``hash_bernoulli`` and ``threefry_bernoulli``.
DROPOUT_BITS = ("hash", "threefry")
# The ``BertConfig`` fields that are this model's choices, not an HF config.json's.
NOT_HF_FIELDS = ("dropout_bits", "cls_only_last_layer", "gelu")
# The forms of the exact GELU: ``gelu`` (PyTorch's, with erf) and ``jax.nn.gelu`` (erfc).
GELU_FORMS = ("erf", "erfc")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture and dropout rates of a BERT encoder (HF ``config.json`` field names)."""
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  classifier_dropout: float | None = None  # None: hidden_dropout_prob (as HF)
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  # Not HF fields (NOT_HF_FIELDS): the generator of dropout's keep masks, one of DROPOUT_BITS;
  # whether the logits' forward pass runs the last layer at the [CLS] tokens alone (the same
  # logits up to float rounding, for less work: ``outputs``); the exact GELU's form, one of
  # GELU_FORMS (the same function up to float rounding: ``gelu``).
  dropout_bits: str = "hash"
  cls_only_last_layer: bool = True
  gelu: str = "erf"

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
      rate = getattr(self, name)
      if rate is not None and not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    if self.dropout_bits not in DROPOUT_BITS:
      raise ValueError(f"dropout_bits must be one of {DROPOUT_BITS}, got {self.dropout_bits!r}")
    if self.gelu not in GELU_FORMS:
      raise ValueError(f"gelu must be one of {GELU_FORMS}, got {self.gelu!r}")
    if not isinstance(self.cls_only_last_layer, bool):
      raise ValueError(f"cls_only_last_layer must be a bool, got {self.cls_only_last_layer!r}")

  @property
  def classifier_dropout_rate(self) -> float:
    return (self.hidden_dropout_prob if self.classifier_dropout is None
            else self.classifier_dropout)

  @classmethod
  def from_dict(cls, hf_config: Mapping[str, Any]) -> BertConfig:
    """From an HF BERT config dict; other fields are ignored, unsupported variants rejected."""
    activation = hf_config.get("hidden_act", "gelu")
    if activation != "gelu":
      raise ValueError(f"hidden_act {activation!r} is not supported: expected 'gelu' (erf)")
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise ValueError(f"position_embedding_type {position_type!r} is not supported: "
                       "expected 'absolute'")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in hf_config.items() if k in fields})


def tiny_config(**overrides: Any) -> BertConfig:
  """A 2-layer, 32-wide BERT for unit tests (forward and backward in milliseconds)."""
  fields = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=128)
  return BertConfig(**{**fields, **overrides})


def _row_major_transpose(a: jax.Array) -> jax.Array:
  """``a.T`` of a matrix, on CPU computed so that XLA must store it row-major.

  XLA's layout assignment folds a plain transpose into the dot that reads it (a column-major
  operand), and XLA:CPU's fast bfloat16 kernels (YNNPACK's, on AMX) take row-major operands
  only: such a dot is computed in float32 instead, about 5x slower on this project's
  AVX-512/AMX host. A reshape after the transpose is not a bitcast of a column-major array,
  so the transpose is materialised. Exact: only the storage order differs. Columns go in
  chunks of at most 128 (a [1280, 1536] transpose in chunks of 128 took half the time of two
  chunks of 768); a prime column count has no chunks and gets the plain transpose, as every
  other platform does (``lax.platform_dependent``: the platform the program is lowered for).
  """
  m, n = a.shape
  chunk = max(d for d in range(1, min(n - 1, 128) + 1) if n % d == 0) if n > 1 else 1
  if chunk == 1:
    return a.T
  row_major = lambda a: a.reshape(m, n // chunk, chunk).transpose(1, 2, 0).reshape(n, m)
  return jax.lax.platform_dependent(a, cpu=row_major, default=lambda a: a.T)


@jax.custom_vjp
def low_precision_dense(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """``x @ w + b`` for x [..., in], w [in, out] and b [out] of one low-precision dtype; each
  product and sum is accumulated in float32 and rounded to that dtype::

    y = round(round(x w) + b)    dx = round(dy w^T)    dw = round(x^T dy)    db = round(sum dy)

  These are the products of ``nnx.Linear`` in bfloat16 on GPUs, TPUs and XLA:CPU (which
  upcasts); its bias gradient, a bfloat16 reduction, can be a few ulps farther from the exact
  sum. Spelled out so that XLA:CPU runs all three products in its bfloat16 kernels (YNNPACK's,
  on AMX where the CPU has it): a dot reaches them only with a float32 result and row-major
  operands, and autodiff's transposed operands are not row-major (``_row_major_transpose``);
  and so that the bias gradient is one float32 sum, where XLA splits a bfloat16 sum into
  slow windowed reductions. A MiniLM dense layer's forward and backward take about a quarter
  of ``nnx.Linear``'s time on AMX (``benchmarks/bench_kernels_vs_torch.py``).
  """
  if not x.dtype == w.dtype == b.dtype:
    raise TypeError(f"low_precision_dense takes one dtype, got x {x.dtype}, w {w.dtype}, "
                    f"b {b.dtype}")
  return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype) + b


def _low_precision_dense_fwd(x: jax.Array, w: jax.Array,
                             b: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  return low_precision_dense(x, w, b), (x, w)


def _low_precision_dense_bwd(residuals: tuple[jax.Array, jax.Array],
                             dy: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(dx, dw, db)`` of ``low_precision_dense`` (its docstring), with row-major operands."""
  x, w = residuals
  dy_rows = dy.reshape(-1, dy.shape[-1])
  dx = jnp.dot(dy, _row_major_transpose(w), preferred_element_type=jnp.float32)
  x_t = _row_major_transpose(x.reshape(-1, x.shape[-1]))
  dw = jnp.dot(x_t, dy_rows, preferred_element_type=jnp.float32)
  db = jnp.sum(dy_rows, axis=0, dtype=jnp.float32)
  return dx.astype(x.dtype), dw.astype(w.dtype), db.astype(dy.dtype)


low_precision_dense.defvjp(_low_precision_dense_fwd, _low_precision_dense_bwd)


class Linear(nnx.Linear):
  """``nnx.Linear`` (kernel [in, out]) called as ``layer(x, rng)``; this one ignores ``rng``.

  The key is the hook for layers that are random in training, such as Mixout's mixing Linear,
  which call ``product`` with a kernel of their own.
  """

  def product(self, inputs: jax.Array, kernel: jax.Array) -> jax.Array:
    """``inputs @ kernel + bias`` in the layer's dtype: ``nnx.Linear``'s computation, and in
    bfloat16 (with nnx's default dot, precision and result type) ``low_precision_dense``, a
    bias-less layer's bias taken as zeros."""
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    if (inputs.dtype == jnp.bfloat16 and self.dot_general is jax.lax.dot_general
        and self.precision is None and self.preferred_element_type is None):
      zeros = jnp.zeros(kernel.shape[-1:], kernel.dtype)
      return low_precision_dense(inputs, kernel, zeros if bias is None else bias)
    result_type = ({} if self.preferred_element_type is None
                   else {"preferred_element_type": self.preferred_element_type})
    y = self.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())),
                         precision=self.precision, **result_type)
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y

  def __call__(self, inputs: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    del rng  # a plain dense layer is deterministic
    return self.product(inputs, self.kernel[...])


# Builds a dense layer: linear(in_features, out_features, *, kernel_init, dtype, rngs) -> module
# whose call is module(x, rng). ``Linear`` above is the default.
LinearFactory = Callable[..., nnx.Module]


_SQRT_HALF = math.sqrt(0.5)


def gelu(x: jax.Array) -> jax.Array:
  """The exact GELU as PyTorch computes it: ``x * 0.5 * (1 + erf(x * sqrt(1/2)))``.

  HF BERT's ``"gelu"`` is ``torch.nn.functional.gelu``, whose CPU and CUDA kernels evaluate
  this form. ``jax.nn.gelu(approximate=False)`` is the same function written with
  ``erfc(-x * sqrt(1/2))``, which keeps the left tail's relative precision: where float32
  ``erf(x / sqrt 2)`` is -1 (x below about -5.2 with XLA:CPU's erf) this form gives exactly 0
  and ``erfc`` a value near -1e-8. Elsewhere the two differ by a few float32 steps of
  ``1 + erf`` times x/2, and this form takes about 0.64x the time in XLA:CPU (erf is cheaper
  than erfc). The gradient is JAX's derivative of this expression. ``BertConfig.gelu`` picks
  the form ('erf', this one; 'erfc' for runs made before it was the model's).
  """
  return x * 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))


def attention_mask(segment_ids: jax.Array) -> jax.Array:
  """bool [R, 1, T, T]: query q may attend to key k iff ``seg[q] == seg[k] != 0``."""
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return (same & (segment_ids[:, :, None] != 0))[:, None]


def attention_with_dropout(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array,
                           rate: float, rng: jax.Array, bits: str = "hash", *,
                           full_shape: tuple[int, ...] | None = None,
                           take: Take | None = None) -> jax.Array:
  """``drop(softmax(q k^T / sqrt(d), masked)) v`` for [R, T, heads, d] inputs (``full_shape``
  and ``take``: the probabilities are some of a larger tensor's, as in ``dropout``).

  The softmax is that of ``jax.nn.dot_product_attention`` (float32, masked logits set to the
  dtype's minimum, so a fully masked padding query gets uniform weights, never NaN).
  """
  scale = query.shape[-1] ** -0.5
  with jax.named_scope("attention_scores"):
    logits = jnp.einsum("rqhd,rkhd->rhqk", query, key, preferred_element_type=jnp.float32)
  with jax.named_scope("softmax"):
    logits = jnp.where(mask, logits * scale, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
  probs = dropout(probs, rate, rng, bits, full_shape=full_shape, take=take)
  with jax.named_scope("attention_scores"):
    return jnp.einsum("rhqk,rkhd->rqhd", probs.astype(value.dtype), value)


def cls_rows(cls_index: jax.Array) -> Take:
  """Takes the tokens ``cls_index`` [B] (flat indices into the R * T tokens) of an [R, T, ...]
  tensor, each as a row of length 1: [B, 1, ...]."""
  return lambda full: full.reshape(-1, *full.shape[2:])[cls_index][:, None]


def _normal(config: BertConfig) -> nnx.Initializer:
  return nnx.initializers.normal(config.initializer_range)


class Embeddings(nnx.Module):
  """``LN(word[input_ids] + position[position_ids] + token_type[token_type_ids])``, dropout."""

  def __init__(self, config: BertConfig, *, dtype: Any, rngs: nnx.Rngs):
    embed = lambda n: nnx.Embed(n, config.hidden_size, embedding_init=_normal(config), rngs=rngs)
    self.word_embeddings = embed(config.vocab_size)
    self.position_embeddings = embed(config.max_position_embeddings)
    self.token_type_embeddings = embed(config.type_vocab_size)
    self.layer_norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps,
                                    dtype=dtype, rngs=rngs)
    self.dropout_rate = config.hidden_dropout_prob
    self.dropout_bits = config.dropout_bits

  def __call__(self, input_ids, position_ids, token_type_ids, rng=None) -> jax.Array:
    summed = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
              + self.token_type_embeddings(token_type_ids))
    return dropout(self.layer_norm(summed), self.dropout_rate, rng, self.dropout_bits)


class Attention(nnx.Module):
  """Multi-head self-attention with its output projection, residual and LayerNorm."""

  def __init__(self, config: BertConfig, *, linear: LinearFactory, dtype: Any, rngs: nnx.Rngs):
    hidden = config.hidden_size
    dense = lambda: linear(hidden, hidden, kernel_init=_normal(config), dtype=dtype, rngs=rngs)
    self.query, self.key, self.value, self.output = dense(), dense(), dense(), dense()
    self.layer_norm = nnx.LayerNorm(hidden, epsilon=config.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.num_heads = config.num_attention_heads
    self.probs_dropout_rate = config.attention_probs_dropout_prob
    self.dropout_rate = config.hidden_dropout_prob
    self.dropout_bits = config.dropout_bits

  def __call__(self, x: jax.Array, mask: jax.Array, rng=None,
               cls_index: jax.Array | None = None) -> jax.Array:
    """[R, T, H] -> [R, T, H]; with ``cls_index`` [B] only those tokens' outputs, [B, 1, H]
    (``cls_rows``): the keys and values are every token's, the rest is computed for the B
    queries alone, with the dropout masks the whole layer would draw."""
    rng_q, rng_k, rng_v, rng_o, rng_probs, rng_drop = split_rng(rng, 6)
    heads = lambda y: y.reshape(*y.shape[:-1], self.num_heads, -1)
    key, value = heads(self.key(x, rng_k)), heads(self.value(x, rng_v))
    rows, length, _ = x.shape
    residual, take_tokens, take_probs = x, None, None
    if cls_index is not None:  # each query a row of length 1, over its own row's keys
      row, position = cls_index // length, cls_index % length
      take_tokens = cls_rows(cls_index)
      take_probs = lambda full: full[row, :, position][:, :, None]
      residual = take_tokens(x)
      key, value, mask = key[row], value[row], mask[row, :, position][:, :, None]
    query = heads(self.query(residual, rng_q))
    if rng_probs is None or self.probs_dropout_rate == 0.0:
      context = jax.nn.dot_product_attention(query, key, value, mask=mask)
    else:
      context = attention_with_dropout(
          query, key, value, mask, self.probs_dropout_rate, rng_probs, self.dropout_bits,
          full_shape=(rows, self.num_heads, length, length), take=take_probs)
    out = self.output(context.reshape(residual.shape), rng_o)
    out = dropout(out, self.dropout_rate, rng_drop, self.dropout_bits, full_shape=x.shape,
                  take=take_tokens)
    return self.layer_norm(residual + out)


class Layer(nnx.Module):
  """One transformer layer: attention, then the GELU feed-forward with residual and LayerNorm.

  The feed-forward LayerNorm is a child of the ``output`` dense layer, so its parameters sit at
  ``output/layer_norm/...`` beside ``output/kernel`` as the parameter contract lists them.
  """

  def __init__(self, config: BertConfig, *, linear: LinearFactory, dtype: Any, rngs: nnx.Rngs):
    hidden, inner = config.hidden_size, config.intermediate_size
    self.attention = Attention(config, linear=linear, dtype=dtype, rngs=rngs)
    self.intermediate = linear(hidden, inner, kernel_init=_normal(config), dtype=dtype, rngs=rngs)
    self.output = linear(inner, hidden, kernel_init=_normal(config), dtype=dtype, rngs=rngs)
    self.output.layer_norm = nnx.LayerNorm(hidden, epsilon=config.layer_norm_eps, dtype=dtype,
                                           rngs=rngs)
    self.dropout_rate = config.hidden_dropout_prob
    self.dropout_bits = config.dropout_bits
    self.activation = (gelu if config.gelu == "erf"
                       else functools.partial(jax.nn.gelu, approximate=False))

  def __call__(self, x: jax.Array, mask: jax.Array, rng=None,
               cls_index: jax.Array | None = None) -> jax.Array:
    """[R, T, H] -> [R, T, H], or [B, 1, H] at the tokens ``cls_index`` (``Attention``)."""
    rng_attention, rng_inner, rng_out, rng_drop = split_rng(rng, 4)
    full_shape, take = x.shape, None if cls_index is None else cls_rows(cls_index)
    x = self.attention(x, mask, rng_attention, cls_index)
    inner = self.activation(self.intermediate(x, rng_inner))
    out = dropout(self.output(inner, rng_out), self.dropout_rate, rng_drop, self.dropout_bits,
                  full_shape=full_shape, take=take)
    return self.output.layer_norm(x + out)


class Encoder(nnx.Module):
  """The stack of ``num_hidden_layers`` transformer layers."""

  def __init__(self, config: BertConfig, *, linear: LinearFactory, dtype: Any, rngs: nnx.Rngs):
    self.layers = nnx.List([Layer(config, linear=linear, dtype=dtype, rngs=rngs)
                            for _ in range(config.num_hidden_layers)])

  def __call__(self, x: jax.Array, mask: jax.Array, rng=None,
               stop_gradient_at: int | None = None,
               cls_index: jax.Array | None = None) -> jax.Array:
    """The last hidden state [R, T, H], or with ``cls_index`` only its [B, 1, H] rows at those
    tokens (the last layer's queries restricted to them, ``Attention``).

    ``stop_gradient_at=i``: the hidden state entering layer ``i`` is a constant for autodiff,
    so no gradient reaches the layers below it or the embeddings, and XLA drops their backward
    pass (gradual unfreezing trains only layers ``i`` and up)."""
    last = len(self.layers) - 1
    for i, (layer, layer_rng) in enumerate(zip(self.layers, split_rng(rng, len(self.layers)))):
      if i == stop_gradient_at:
        x = jax.lax.stop_gradient(x)
      x = layer(x, mask, layer_rng, cls_index if i == last else None)
    return x


class BertOutputs(NamedTuple):
  """What the forward pass computes: ``sequence_output`` [R, T, H] (the last hidden state, in
  the compute dtype), ``pooled_output`` [B, H] (tanh pooler on each [CLS]) and ``logits``
  [B, num_labels] (float32)."""
  sequence_output: jax.Array
  pooled_output: jax.Array
  logits: jax.Array


class BertForSequenceClassification(nnx.Module):
  """BERT encoder, pooler (dense + tanh on [CLS]), dropout and a linear classifier.

  A fresh model is initialised as BERT is: kernels and embeddings ~ N(0, initializer_range^2),
  biases 0, LayerNorm scale 1 and bias 0. ``from_pretrained`` loads all but the classifier.
  """

  def __init__(self, config: BertConfig, num_labels: int, *, rngs: nnx.Rngs,
               dtype: Any = jnp.float32, linear: LinearFactory = Linear):
    if not (isinstance(num_labels, int) and num_labels >= 1):
      raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    hidden = config.hidden_size
    self.config = config
    self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
    self.encoder = Encoder(config, linear=linear, dtype=dtype, rngs=rngs)
    self.pooler = linear(hidden, hidden, kernel_init=_normal(config), dtype=dtype, rngs=rngs)
    self.classifier = linear(hidden, num_labels, kernel_init=_normal(config), dtype=dtype,
                             rngs=rngs)

  def outputs(self, inputs: Mapping[str, jax.Array], *, dropout_rng: jax.Array | None = None,
              stop_gradient_at: int | None = None, sequence_output: bool = True) -> BertOutputs:
    """The last hidden state, the pooled [CLS] states and the logits of a batch.

    ``stop_gradient_at``: no gradient flows below encoder layer ``i`` (``Encoder``).
    ``sequence_output=False``: the last layer computes the [CLS] tokens alone (its keys and
    values are every token's; ``sequence_output`` is None), the same pooled states and logits
    for less work (a MiniLM-L6 RTE training step in 0.85-0.88x the time,
    ``benchmarks/bench_config_ab.py``).
    """
    missing = [key for key in INPUT_KEYS if key not in inputs]
    if missing:
      raise KeyError(f"the batch lacks {missing}: the model reads {list(INPUT_KEYS)}")
    rng_embed, rng_encoder, rng_pooler, rng_drop, rng_classifier = split_rng(dropout_rng, 5)
    x = self.embeddings(inputs["input_ids"], inputs["position_ids"], inputs["token_type_ids"],
                        rng_embed)
    cls_index = inputs["cls_index"]
    last = self.encoder(x, attention_mask(inputs["segment_ids"]), rng_encoder,
                        stop_gradient_at, None if sequence_output else cls_index)
    sequence = last if sequence_output else None
    cls = (cls_rows(cls_index)(last) if sequence_output else last)[:, 0]
    pooled = jnp.tanh(self.pooler(cls, rng_pooler))
    features = dropout(pooled, self.config.classifier_dropout_rate, rng_drop,
                       self.config.dropout_bits)
    logits = self.classifier(features, rng_classifier).astype(jnp.float32)
    return BertOutputs(sequence, pooled, logits)

  def __call__(self, inputs: Mapping[str, jax.Array], *, dropout_rng: jax.Array | None = None,
               stop_gradient_at: int | None = None) -> jax.Array:
    """Logits [B, num_labels], float32. ``dropout_rng`` None: deterministic (evaluation).
    The last layer runs at the [CLS] tokens alone if ``config.cls_only_last_layer``."""
    return self.outputs(inputs, dropout_rng=dropout_rng, stop_gradient_at=stop_gradient_at,
                        sequence_output=not self.config.cls_only_last_layer).logits


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, dict]:
  """``(graphdef, constants, params)``: the model's structure, the arrays it reads but never
  trains (Mixout targets; empty for plain BERT), and its parameters as a pure nested dict."""
  graphdef, params, constants = nnx.split(model, nnx.Param, ...)
  return graphdef, constants, nnx.to_pure_dict(params)


def apply_fn(graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
  """``fn(params, constants, inputs, dropout_rng=None, stop_gradient_at=None) -> logits``: the
  model as a pure function of its arrays.

  The constants are an argument, not closed over: a jitted step that closed over them would
  compile them into its program as literals (e.g. 1.3 GB of Mixout targets for BERT-large),
  and runs whose constants differ (seeds of Mixout, whose classifier target is its seed's
  initialisation) could not share one compiled step.
  """
  def apply(params: dict, constants: nnx.State, inputs: Mapping[str, jax.Array],
            dropout_rng: jax.Array | None = None,
            stop_gradient_at: int | None = None) -> jax.Array:
    return nnx.merge(graphdef, params, constants)(inputs, dropout_rng=dropout_rng,
                                                  stop_gradient_at=stop_gradient_at)

  return apply
