"""Adam's direction as Optax transforms: without bias correction, and in transformers' form.

Every transform here keeps Adam's moments and update count, all starting at 0::

  m = b1*m + (1-b1)*g,   v = b2*v + (1-b2)*g^2,   t = t + 1

and returns, per tensor, a direction of them (the learning rate and weight decay come after,
``optimizers``):

  no bias correction (BertAdam):  m / (sqrt(v) + eps)
  form 'transformers':            sqrt(1-b2^t) / (1-b1^t) * m / (sqrt(v) + eps)
  form 'optax':                   (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)

transformers' ``AdamW`` folds the bias correction into the step size and adds eps to the raw
``sqrt(v)``; ``optax.scale_by_adam`` adds eps to ``sqrt(v_hat) = sqrt(v / (1-b2^t))``. The two
agree except where eps is not negligible against ``sqrt(v)``: transformers' effective eps is
``eps / sqrt(1-b2^t)``, 31.6 times optax's at t = 1. CWGNC's clipped gradients are tiny (a
BERT-large FFN kernel clipped to 0.05 has entries ~2.4e-5), so there the forms differ most.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

ADAM_FORMS = ("transformers", "optax")

# A tensor's direction from its moments ``m``, ``v`` and its update count ``t`` (>= 1).
Direction = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class ScaleByAdamPerTensorState(NamedTuple):
  """Adam's moments with one update count per tensor (``count`` has the params' structure)."""
  count: Any
  mu: Any
  nu: Any


def _scale_by_adam(b1: Any, b2: Any, direction: Direction, *, per_tensor_count: bool = False
                   ) -> optax.GradientTransformation:
  """Adam's moments and update count (module docstring), and per tensor the update
  ``direction(m, v, t)``.

  One count for all tensors keeps the state an ``optax.ScaleByAdamState``, so tools that read
  ``mu``/``nu``/``count`` work; ``per_tensor_count`` keeps a count per tensor instead
  (:class:`ScaleByAdamPerTensorState`).
  """
  state_type = ScaleByAdamPerTensorState if per_tensor_count else optax.ScaleByAdamState
  zero = lambda _=None: jnp.zeros([], jnp.int32)

  def init_fn(params):
    return state_type(count=jax.tree.map(zero, params) if per_tensor_count else zero(),
                      mu=optax.tree_utils.tree_zeros_like(params),
                      nu=optax.tree_utils.tree_zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree_utils.tree_update_moment(updates, state.mu, b1, 1)
    nu = optax.tree_utils.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = jax.tree.map(optax.safe_increment, state.count)
    counts = count if per_tensor_count else jax.tree.map(lambda _: count, mu)
    updates = jax.tree.map(direction, mu, nu, counts)
    return updates, state_type(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def _one_minus_power(beta: Any, count: jax.Array) -> jax.Array:
  """``1 - beta**count`` in float32, accurate where ``beta`` is near 1.

  PyTorch optimizers form it in float64 from Python floats; ``1 - float32(0.999)**t`` loses
  ~1e-5 to cancellation. ``-expm1(t * log(beta))`` with the log taken in float64 keeps it to
  float32 rounding (a traced ``beta``, under ``inject_hyperparams``, is taken as it comes).
  """
  t = jnp.asarray(count, jnp.float32)
  if isinstance(beta, (int, float)):
    if beta == 0:
      return jnp.ones_like(t)
    return -jnp.expm1(t * jnp.float32(math.log(beta)))
  return -jnp.expm1(t * jnp.log(beta))


def bias_corrected_direction(b1: Any, b2: Any, eps: Any, form: str) -> Direction:
  """One tensor's bias-corrected Adam direction after ``t`` >= 1 updates, in ``form``
  (module docstring: 'transformers' or 'optax')."""
  if form not in ADAM_FORMS:
    raise ValueError(f"unknown Adam form {form!r}; valid: {', '.join(ADAM_FORMS)}")

  def direction(mu: jax.Array, nu: jax.Array, count: jax.Array) -> jax.Array:
    correction1, correction2 = _one_minus_power(b1, count), _one_minus_power(b2, count)
    if form == "transformers":
      return jnp.sqrt(correction2) / correction1 * mu / (jnp.sqrt(nu) + eps)
    return (mu / correction1) / (jnp.sqrt(nu / correction2) + eps)

  return direction


def scale_by_adam_no_bias_correction(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
  """Adam's direction without bias correction: ``m / (sqrt(v) + eps)`` (BertAdam)."""
  return _scale_by_adam(b1, b2, lambda m, v, t: m / (jnp.sqrt(v) + eps))


def scale_by_adam_transformers(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
  """Adam's direction as transformers' ``AdamW`` computes it (the authors' and Mosbach et
  al.'s optimizer)::

    u = sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

  The bias correction is folded into the step size and eps is added to the raw ``sqrt(v)``.
  This equals ``optax.scale_by_adam`` with eps replaced by ``eps / sqrt(1 - b2^t)`` (31.6x at
  t = 1, 1.01x by t = 10^4), so the two differ only where ``sqrt(v)`` is within a few orders
  of eps: tiny (e.g. component-clipped) gradients early in training. The state is
  ``optax.ScaleByAdamState``, so tools that read ``mu``/``nu``/``count`` work unchanged.
  """
  return _scale_by_adam(b1, b2, bias_corrected_direction(b1, b2, eps, "transformers"))


def scale_by_adam_per_tensor_count(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, *, form: str = "transformers"
) -> optax.GradientTransformation:
  """Bias-corrected Adam with a count per tensor instead of one per chain.

  For every tensor ``i`` with its own count ``c_i`` (the updates it has had)::

    m_i = b1*m_i + (1-b1)*g_i,  v_i = b2*v_i + (1-b2)*g_i^2,  c_i = c_i + 1
    u_i = sqrt(1-b2^c_i) / (1-b1^c_i) * m_i / (sqrt(v_i) + eps)          form 'transformers'
    u_i = (m_i / (1-b1^c_i)) / (sqrt(v_i / (1-b2^c_i)) + eps)            form 'optax'

  While all tensors train from the start, every ``c_i`` equals the single count and the
  updates are :func:`scale_by_adam_transformers`' or ``optax.scale_by_adam``'s (up to float
  rounding). It exists for gradual unfreezing: a tensor unfrozen later starts with zero
  moments and count 0, so its bias correction is that of a fresh Adam (a shared count would
  make its first steps up to ``(1-b1)/sqrt(1-b2)`` = 3.2 times too large, as BertAdam's
  are), while tensors already training keep theirs.
  """
  return _scale_by_adam(b1, b2, bias_corrected_direction(b1, b2, eps, form),
                        per_tensor_count=True)
