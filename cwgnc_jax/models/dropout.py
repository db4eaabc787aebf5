"""Dropout that is pure and fusible: keys in, masks out, no RNG state.

Inverted dropout keeps each entry with probability 1 - rate, independently across entries,
heads, layers and steps, from one of two sources of bits (``BertConfig.dropout_bits``):

  "hash"      a keyed integer hash of each entry's flat index (``hash_bernoulli``): 4 multiplies
              and 6 shifts per entry, a bijection of the indices for each key;
  "threefry"  ``jax.random.bernoulli(key, 1 - rate, shape)`` bit for bit (``threefry_bernoulli``).

Both are straight-line elementwise ops that XLA fuses into the dropout's multiply (JAX's own
CPU lowering of threefry is a rolled loop, 10x slower). ``take`` draws only the entries a
computation keeps (the [CLS]-only last layer), with the masks the whole tensor would get.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


# Selects some entries of a tensor, e.g. ``lambda full: full[rows]``.
Take = Callable[[jax.Array], jax.Array]

def split_rng(rng: jax.Array | None, num: int) -> tuple[jax.Array | None, ...]:
  """``num`` independent keys from ``rng``, or ``num`` Nones when dropout is off."""
  if rng is None:
    return (None,) * num
  return tuple(jax.random.split(rng, num))


# Threefry-2x32's rotation constants and key-schedule parity (Salmon et al. 2011; as in JAX).
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA


def _rotate_left(x: jax.Array, d: int) -> jax.Array:
  return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array,
                 x2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 (20 rounds) of the counters ``(x1, x2)`` under the key ``(k1, k2)``, as
  straight-line elementwise ops: the same function as JAX's ``threefry2x32`` primitive,
  whose CPU lowering is a rolled 5-iteration loop that XLA can neither fuse nor vectorise
  across iterations (10x slower here for a dropout mask)."""
  ks = (k1, k2, k1 ^ k2 ^ np.uint32(_THREEFRY_PARITY))
  x = [x1 + ks[0], x2 + ks[1]]
  for i in range(5):
    for r in _THREEFRY_ROTATIONS[i % 2]:
      x[0] = x[0] + x[1]
      x[1] = x[0] ^ _rotate_left(x[1], r)
    x[0] = x[0] + ks[(i + 1) % 3]
    x[1] = x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x[0], x[1]


def _fast_bernoulli_applies(rng: jax.Array, p: float, shape: tuple[int, ...]) -> bool:
  """Whether ``threefry_bernoulli`` below reproduces ``jax.random.bernoulli(rng, p, shape)`` here:
  a threefry key, JAX's partitionable counter layout, float32 uniforms, < 2^32 entries."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    if rng.shape or str(jax.random.key_impl(rng)) != "threefry2x32":
      return False
  elif (rng.shape != (2,) or rng.dtype != jnp.uint32
        or jax.config.jax_default_prng_impl != "threefry2x32"):
    return False
  return (jax.config.jax_threefry_partitionable and not jax.config.jax_enable_x64
          and math.prod(shape) < 2**32 and isinstance(p, float))


def _flat_index(shape: tuple[int, ...], take: Take | None) -> jax.Array:
  """uint32 flat index of every entry of ``shape``, or of the entries ``take`` selects (XLA
  fuses the iota into the gather, so only those are computed)."""
  index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  return index if take is None else take(index)


def threefry_bernoulli(rng: jax.Array, p: float, shape: tuple[int, ...],
                       take: Take | None = None) -> jax.Array:
  """``jax.random.bernoulli(rng, p, shape)``, bit for bit, as one fusible elementwise
  expression (``threefry2x32`` above on the flat index of each entry; the uniform is
  ``(bits >> 9) / 2^23``, JAX's float32 recipe). Where it could differ (another PRNG
  implementation, ``jax_threefry_partitionable`` off, 64-bit floats, 2^32 entries or more)
  it calls ``jax.random.bernoulli`` itself. ``take``: only the entries it selects, as
  ``take(threefry_bernoulli(rng, p, shape))``."""
  if not _fast_bernoulli_applies(rng, p, shape):
    keep = jax.random.bernoulli(rng, p, shape)
    return keep if take is None else take(keep)
  key = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  index = _flat_index(shape, take)
  bits1, bits2 = threefry2x32(key[0], key[1], jnp.zeros_like(index), index)
  bits = bits1 ^ bits2
  one = np.array(1.0, np.float32).view(np.uint32)
  uniform = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | one, jnp.float32) - 1.0
  return uniform < np.float32(p)


def _lowbias32(x: jax.Array) -> jax.Array:
  """Wellons' ``lowbias32`` (hash-prospector), searched for avalanche: a bijection of uint32,
  since each xor-shift and each multiply by an odd constant is invertible."""
  x = x ^ (x >> np.uint32(16))
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> np.uint32(15))
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> np.uint32(16))


def hash_bits(rng: jax.Array, shape: tuple[int, ...], take: Take | None = None) -> jax.Array:
  """uint32 bits of ``shape`` from a keyed hash of each entry's flat index ``i``::

    h(i) = lowbias32(lowbias32(i ^ k0) ^ k1)

  with ``(k0, k1)`` the first two 32-bit words of the key (each module's own, split from the
  step's). For one key, ``h`` is a bijection of the 2^32 indices, so n entries get n
  distinct values. ``take``: only the entries it selects, as ``take(hash_bits(rng, shape))``."""
  key = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  if key.size < 2 or math.prod(shape) > 2**32:
    raise ValueError(f"hash_bits needs a key of 2 or more 32-bit words and at most 2^32 "
                     f"entries, got key data of shape {key.shape} and shape {shape}")
  k0, k1 = key.reshape(-1)[:2].astype(jnp.uint32)
  index = _flat_index(shape, take)
  return _lowbias32(_lowbias32(index ^ k0) ^ k1)


def hash_bernoulli(rng: jax.Array, p: float, shape: tuple[int, ...],
                   take: Take | None = None) -> jax.Array:
  """Bernoulli(p) entries of ``shape``: ``keep_i = hash_bits(rng)_i < round(p * 2^32)``, so
  ``P(keep) = p`` to 2^-33. 4 multiplies and 6 shifts per entry against threefry's 20 rounds
  (an attention dropout's forward and backward: 0.55-0.57x the time). The masks differ from
  ``jax.random.bernoulli``'s (``threefry_bernoulli`` draws those) but follow the same
  distribution (``tests/test_bert.py`` checks keep rates, neighbours and keys;
  ``tools/check_dropout_hash.py`` the bits). ``take`` as in ``hash_bits``."""
  bits = hash_bits(rng, shape, take)
  if p >= 1.0:
    return jnp.ones(bits.shape, bool)
  return bits < np.uint32(min(round(p * 2**32), 2**32 - 1))


def dropout(x: jax.Array, rate: float, rng: jax.Array | None, bits: str = "hash", *,
            full_shape: tuple[int, ...] | None = None, take: Take | None = None) -> jax.Array:
  """Inverted dropout: ``x * keep / (1 - rate)`` with ``keep ~ Bernoulli(1 - rate)``, drawn
  by ``hash_bernoulli`` (``bits="hash"``) or ``threefry_bernoulli`` (``"threefry"``).

  ``x = take(full)`` for a tensor ``full`` of ``full_shape`` (some of its entries): ``x`` gets
  the entries of the mask ``full`` would get, so dropping what is computed is the same as
  computing everything, dropping, then selecting."""
  if rng is None or rate == 0.0:
    return x
  bernoulli = {"hash": hash_bernoulli, "threefry": threefry_bernoulli}[bits]
  with jax.named_scope("dropout"):  # names in profiles only (benchmarks/profile_step.py)
    keep = bernoulli(rng, 1.0 - rate, full_shape or x.shape, take)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)
