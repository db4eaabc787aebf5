"""The optimizers of Table 1 and the one place an optimizer is built from a config.

Recipes (SPEC section 2; Devlin, "+ bias correction", Mosbach et al., CWGNC):

  BertAdam:  m = b1*m + (1-b1)*g,  v = b2*v + (1-b2)*g^2           (no bias correction, ever)
             u = m / (sqrt(v) + eps) + wd * theta   (wd only where the decay mask is True)
             theta <- theta - lr_t * u
  AdamW:     as the authors (and Mosbach et al.) ran it, transformers' ``AdamW``:
             theta <- theta - lr_t * sqrt(1-b2^t) / (1-b1^t) * m / (sqrt(v) + eps)
             theta <- theta * (1 - lr_t * wd)                  (decay after the step, masked)
  CWGNC:     AdamW on gradients clipped component-wise first (``clip_by_component_norm``).

Adam's direction is ``cwgnc_jax.adam``'s; ``adam_form`` picks transformers' form (the default
of every bias-corrected recipe) or optax's, which differ where eps is not negligible against
``sqrt(v)``, as it is for CWGNC's clipped gradients (``adam``'s docstring).

Learning rates follow ``linear_warmup_decay``; a global-norm clip (``max_grad_norm``)
precedes Adam where the recipe has one (after the component clip, if a config sets both).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from cwgnc_jax import paths
from cwgnc_jax.adam import (ADAM_FORMS, scale_by_adam_no_bias_correction,
                            scale_by_adam_per_tensor_count, scale_by_adam_transformers)
from cwgnc_jax.clipping import COMPONENT_KINDS, clip_by_component_norm

if TYPE_CHECKING:  # configs are the train extra's; the optimizers need jax and optax only
  import ml_collections

# Regular expressions searched in parameter paths: biases and LayerNorm parameters.
DECAY_EXCLUDE = (r"(^|/)bias$", r"(^|/)layer_norm/")


def decay_mask(params: Any, exclude: Iterable[str] = DECAY_EXCLUDE) -> Any:
  """Weight-decay mask: False on paths matching any ``exclude`` pattern, True elsewhere.

  With the default patterns: False exactly on biases and LayerNorm parameters.
  """
  patterns = [re.compile(pattern) for pattern in exclude]
  return paths.map_paths(lambda path: not any(p.search(path) for p in patterns), params)


def linear_warmup_decay(
    peak: float, total_steps: int, warmup_fraction: float
) -> optax.Schedule:
  """Linear warmup from 0 to ``peak`` over ``ceil(warmup_fraction * total_steps)`` steps,
  then linear decay to 0 at ``total_steps`` (HF ``get_linear_schedule_with_warmup``).

  ``lr(t) = peak * t / w`` for ``t < w``, else ``peak * max(0, T - t) / max(1, T - w)``; with
  ``warmup_fraction = 0`` it is a pure decay starting at ``peak``.
  """
  if not (math.isfinite(peak) and peak > 0):
    raise ValueError(f"peak learning rate must be finite and > 0, got {peak!r}")
  if not (isinstance(total_steps, int) and total_steps > 0):
    raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
  if not 0 <= warmup_fraction <= 1:
    raise ValueError(f"warmup_fraction must be in [0, 1], got {warmup_fraction!r}")
  warmup_steps = math.ceil(warmup_fraction * total_steps)
  decay = optax.linear_schedule(peak, 0.0, max(1, total_steps - warmup_steps))
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


class ScaleByLearningRateState(NamedTuple):
  """The updates applied so far, and the learning rate of the last one."""
  count: jax.Array
  learning_rate: jax.Array


def scale_by_learning_rate(learning_rate: optax.ScalarOrSchedule
                           ) -> optax.GradientTransformation:
  """``optax.scale_by_learning_rate`` (``u <- -lr_t * u``, ``lr_t = learning_rate(count)``)
  that keeps the rate it applied in its state, so a training loop reads the learning rate
  of a step from the optimizer (:func:`applied_learning_rate`) instead of evaluating the
  schedule a second time against a count of its own."""

  def init_fn(params):
    del params
    return ScaleByLearningRateState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
    rate = jnp.asarray(rate, jnp.float32)
    updates = jax.tree.map(lambda u: jnp.asarray(-rate, u.dtype) * u, updates)
    return updates, ScaleByLearningRateState(optax.safe_increment(state.count), rate)

  return optax.GradientTransformation(init_fn, update_fn)


def applied_learning_rate(opt_state: Any) -> jax.Array:
  """The learning rate of the last update an optimizer of this module applied."""
  return optax.tree_utils.tree_get(opt_state, "learning_rate")


def skipped_steps(opt_state: Any) -> jax.Array:
  """The steps :func:`apply_if_finite` has skipped (non-finite gradients or loss)."""
  return opt_state.total_notfinite


def add_decayed_weights_after_step(
    weight_decay: float, learning_rate: optax.ScalarOrSchedule, mask: Any = None
) -> optax.GradientTransformation:
  """transformers' ``AdamW`` weight decay: the parameters shrink *after* the Adam step.

  Placed after ``scale_by_learning_rate`` (``updates`` are the signed, scaled step ``u``)::

    theta_new = (theta + u) * (1 - lr_t * wd)    i.e.   u <- u - lr_t * wd * (theta + u)

  ``optax.add_decayed_weights`` before the learning rate decays the pre-step ``theta``
  instead; the two differ by ``lr_t * wd * u``, below float32 resolution at fine-tuning
  learning rates, but this is the reference's arithmetic. ``lr_t`` is ``learning_rate``
  at this transform's own update count (the same count ``scale_by_learning_rate`` keeps).
  ``mask`` as for ``optax.add_decayed_weights``.
  """

  def init_fn(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_decayed_weights_after_step needs the parameters")
    rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
    rate = rate * weight_decay
    updates = jax.tree.map(lambda u, p: u - rate * (p + u), updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  decay = optax.GradientTransformation(init_fn, update_fn)
  return decay if mask is None else optax.masked(decay, mask)


def bert_adam(
    learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
    eps: float = 1e-6, weight_decay: float = 0.01, mask: Any = None
) -> optax.GradientTransformation:
  """BertAdam (google-research/bert ``AdamWeightDecayOptimizer``): see the module docstring.

  ``mask`` (pytree of bool or params -> pytree) selects where decay applies; None = all,
  as in ``optax.adamw``. Pass :func:`decay_mask` for the paper's setting.
  """
  return optax.chain(
      scale_by_adam_no_bias_correction(b1, b2, eps),
      optax.add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate),
  )


def adamw(
    learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
    eps: float = 1e-6, weight_decay: float = 0.01, mask: Any = None, *,
    form: str = "transformers", per_tensor_count: bool = False
) -> optax.GradientTransformation:
  """AdamW with bias correction ("+ bias correction", Mosbach et al., CWGNC's optimizer).

  ``form='transformers'`` (default) is transformers' ``AdamW``, the reference code's::

    scale_by_adam_transformers -> scale_by_learning_rate -> add_decayed_weights_after_step

  ``form='optax'`` is ``optax.adamw``'s arithmetic (eps on ``sqrt(v_hat)``, decay of the
  pre-step parameters)::

    scale_by_adam -> add_decayed_weights -> scale_by_learning_rate

  ``mask`` selects where decay applies (None = everywhere, as ``optax.adamw``; pass
  :func:`decay_mask` for the paper's setting). ``per_tensor_count``: one bias-correction
  count per tensor (:func:`scale_by_adam_per_tensor_count`; gradual unfreezing).
  """
  if form not in ADAM_FORMS:
    raise ValueError(f"unknown Adam form {form!r}; valid: {', '.join(ADAM_FORMS)}")
  if per_tensor_count:
    adam = scale_by_adam_per_tensor_count(b1, b2, eps, form=form)
  else:
    adam = scale_by_adam_transformers(b1, b2, eps) if form == "transformers" else (
        optax.scale_by_adam(b1, b2, eps))
  if form == "transformers":
    return optax.chain(adam, scale_by_learning_rate(learning_rate),
                       add_decayed_weights_after_step(weight_decay, learning_rate, mask))
  return optax.chain(adam, optax.add_decayed_weights(weight_decay, mask),
                     scale_by_learning_rate(learning_rate))


def cwgnc(
    learning_rate: optax.ScalarOrSchedule,
    clip_norm: float = 0.05,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    mask: Any = decay_mask,
    components: Any = None,
    *,
    adam_form: str = "transformers",
) -> optax.GradientTransformation:
  """AdamW (bias-corrected) on component-wise clipped gradients, the paper's optimizer.

  ``clip_by_component_norm(clip_norm)`` -> :func:`adamw` (``adam_form``: transformers' AdamW,
  as the authors ran it, or 'optax'): the clip acts on the raw gradient, before the moments
  and their bias correction. ``components`` is passed to :func:`clip_by_component_norm`
  (None or 'tensor' = one component per tensor; 'layer'; 'qkv'; a label function).
  """
  return optax.chain(
      clip_by_component_norm(clip_norm, components=components),
      adamw(learning_rate, b1, b2, eps, weight_decay, mask, form=adam_form),
  )


# -- Recipes and the config-driven builder. ----------------------------------------------

# Devlin et al.'s BertAdam fields (SPEC section 2), the base of every Table 1 row. None: a
# float that is off unless set (a ``config_dict.placeholder(float)`` in the config). A new
# field enters the run identity: its value before it existed goes in ``identity.LATER_KEYS``.
_DEVLIN = MappingProxyType(dict(
    learning_rate=2e-5,
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    weight_decay=0.01,
    warmup_fraction=0.1,
    bias_correction=False,
    # With bias correction: transformers' AdamW (the PyTorch reference) or optax's form.
    adam_form="transformers",
    max_grad_norm=None,
    clip_norm=None,
    components="tensor",
    decay_exclude=DECAY_EXCLUDE,
))


def optimizer_config(**fields: Any) -> ml_collections.ConfigDict:
  """An optimizer config for :func:`build_optimizer`: Devlin et al.'s BertAdam (lr 2e-5, eps
  1e-6, weight decay 0.01 off biases and LayerNorm, 10% warmup then linear decay, no clip)
  with ``fields`` replaced. The Table 1 rows: ``methods.recipe(name)``."""
  # Imported here, not with the module: configs are the train extra's (cwgnc_jax[train]),
  # and ``import cwgnc_jax`` needs jax and optax only.
  import ml_collections  # pylint: disable=import-outside-toplevel
  unknown = sorted(set(fields) - set(_DEVLIN))
  if unknown:
    raise ValueError(f"unknown optimizer fields {unknown}; valid: {', '.join(_DEVLIN)}")
  values = {field: ml_collections.config_dict.placeholder(float) if value is None else value
            for field, value in _DEVLIN.items()}
  values.update(fields)
  return ml_collections.ConfigDict(values)


def _number(cfg: ml_collections.ConfigDict, field: str, name: str) -> float:
  """``cfg[field]`` if it is a finite int or float (not a bool: True is not a rate)."""
  value = cfg[field]
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{name}.{field} must be a finite number, got {value!r}")
  return value


def _check_range(cfg: ml_collections.ConfigDict, field: str, name: str,
                 ok: Callable[[float], bool], expected: str) -> None:
  """``cfg[field]`` must be a finite number for which ``ok`` holds (``expected`` says it)."""
  if not ok(_number(cfg, field, name)):
    raise ValueError(f"{name}.{field} must be {expected}, got {cfg[field]!r}")


def _check_decay_exclude(patterns: Any, name: str) -> None:
  """Every pattern must compile now: :func:`decay_mask` would fail only once the params exist."""
  if not (isinstance(patterns, (tuple, list)) and all(isinstance(p, str) for p in patterns)):
    raise ValueError(f"{name}.decay_exclude must be a tuple of regular expressions (strings), "
                     f"got {patterns!r}")
  for pattern in patterns:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"{name}.decay_exclude holds the invalid regular expression "
                       f"{pattern!r} ({e})") from None


def _check_config(cfg: ml_collections.ConfigDict, total_steps: int,
                  name: str = "opt_config") -> None:
  """Raises ValueError (one line, naming ``name.field``) on a field of the wrong type or range.

  Types are checked, not only ranges: None or a bool where a number belongs would fail later
  with a TypeError, and a None ``bias_correction`` would silently mean BertAdam.
  """
  missing = [field for field in _DEVLIN if field not in cfg]
  if missing:
    raise ValueError(f"{name} lacks the fields {missing}; start from "
                     "methods.recipe(name) or optimizer_config()")
  for field in ("learning_rate", "eps"):
    _check_range(cfg, field, name, lambda v: v > 0, "> 0")
  for field in ("b1", "b2"):
    _check_range(cfg, field, name, lambda v: 0 <= v < 1, "in [0, 1)")
  _check_range(cfg, "weight_decay", name, lambda v: v >= 0, ">= 0")
  _check_range(cfg, "warmup_fraction", name, lambda v: 0 <= v <= 1, "in [0, 1]")
  if cfg.clip_norm is not None and not _number(cfg, "clip_norm", name) > 0:
    raise ValueError(f"{name}.clip_norm (the CWGNC threshold) must be > 0, got {cfg.clip_norm!r}")
  if cfg.max_grad_norm is not None:  # <= 0: no global clip
    _number(cfg, "max_grad_norm", name)
  if not isinstance(cfg.bias_correction, bool):
    raise ValueError(f"{name}.bias_correction must be True or False, got "
                     f"{cfg.bias_correction!r}")
  if cfg.adam_form not in ADAM_FORMS:
    raise ValueError(f"{name}.adam_form must be one of {list(ADAM_FORMS)}, "
                     f"got {cfg.adam_form!r}")
  if cfg.components not in tuple(COMPONENT_KINDS):  # by ==: a list is no key
    raise ValueError(
        f"{name}.components must be one of {sorted(COMPONENT_KINDS)}, got {cfg.components!r}"
    )
  _check_decay_exclude(cfg.decay_exclude, name)
  if not (isinstance(total_steps, int) and total_steps > 0):
    raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")


def build_optimizer(
    opt_config: ml_collections.ConfigDict,
    total_steps: int,
    *,
    trainable: Any = None,
    per_tensor_count: bool = False,
) -> optax.GradientTransformation:
  """The optimizer an ``opt_config`` (``methods.recipe``, ``optimizer_config``) describes.

  Chain, each part present only when configured::

    clip_by_component_norm(clip_norm)   # clip_norm not None (CWGNC), on the raw gradient
    clip_by_global_norm(max_grad_norm)  # max_grad_norm not None and > 0
    bias_correction:   adamw(lr_t, b1, b2, eps, weight_decay, mask, form=adam_form)
    otherwise:         bert_adam(lr_t, b1, b2, eps, weight_decay, mask)

  with ``lr_t = linear_warmup_decay(learning_rate, total_steps, warmup_fraction)`` and
  ``mask = decay_mask(exclude=decay_exclude)``. The result is that ``optax.chain``, inside
  ``optax.selective_transform`` when ``trainable`` is given. It applies every step it is
  given: the train step skips non-finite steps around it (:func:`apply_if_finite`, whose
  state :func:`init_state` makes); in a loop of your own, ``optax.apply_if_finite`` does the
  same.

  Args:
    opt_config: the optimizer config (the fields of :func:`optimizer_config`).
    total_steps: the number of optimizer steps of the run (the schedule ends there).
    trainable: optional pytree of bool; False leaves are frozen
      (``optax.selective_transform``: routed to ``optax.set_to_zero``), so they have no
      optimizer state, no weight decay and a zero update.
    per_tensor_count: Adam with bias correction counts each tensor's updates on its own
      (:func:`scale_by_adam_per_tensor_count`; gradual unfreezing) instead of optax's one
      count for all tensors.
  """
  cfg = opt_config
  _check_config(cfg, total_steps)
  parts = []
  if cfg.clip_norm is not None:
    parts.append(
        clip_by_component_norm(cfg.clip_norm, components=cfg.components)
    )
  if cfg.max_grad_norm is not None and cfg.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
  schedule = linear_warmup_decay(cfg.learning_rate, total_steps, cfg.warmup_fraction)
  exclude = tuple(cfg.decay_exclude)
  mask = lambda p: decay_mask(p, exclude)
  if cfg.bias_correction:
    parts.append(adamw(schedule, cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay, mask,
                       form=cfg.adam_form, per_tensor_count=per_tensor_count))
  else:
    parts.append(bert_adam(schedule, cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay, mask))
  optimizer = optax.chain(*parts)
  if trainable is not None:
    optimizer = optax.selective_transform(
        optimizer, freeze_mask=jax.tree.map(lambda flag: not flag, trainable))
  return optimizer


# -- Skipping non-finite steps. -----------------------------------------------------------

def init_state(optimizer: optax.GradientTransformation, params: Any) -> optax.ApplyIfFiniteState:
  """The state :func:`apply_if_finite` carries: ``optimizer``'s, with the counts of
  ``optax.apply_if_finite`` around it (the same type and layout as
  ``optax.apply_if_finite(optimizer, n).init(params)``)."""
  return optax.ApplyIfFiniteState(
      notfinite_count=jnp.zeros([], jnp.int32),
      last_finite=jnp.array(True, jnp.bool_),
      total_notfinite=jnp.zeros([], jnp.int32),
      inner_state=optimizer.init(params),
  )


def all_finite(tree: Any) -> jax.Array:
  """Whether every entry of ``tree`` is finite, read off its squared global norm.

  A finite ``sum(g^2)`` means every entry is finite (an infinity or a NaN makes the sum
  one), and the norm is what a train step reports anyway, so the check shares its pass
  over the gradients. Only when the sum is not finite, which finite entries above ~1e19
  (float32) can also cause, are the entries checked one by one.
  """
  exact = lambda: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
  return lax.cond(jnp.isfinite(optax.tree.norm(tree, squared=True)),
                  lambda: jnp.array(True), exact)


def apply_if_finite(optimizer: optax.GradientTransformation, grads: Any,
                    opt_state: optax.ApplyIfFiniteState, params: Any,
                    loss: jax.Array | None = None) -> tuple[Any, optax.ApplyIfFiniteState]:
  """One step of ``optimizer`` applied to ``params``, or none if a gradient (or ``loss``)
  is not finite. Returns the new ``(params, opt_state)``; ``opt_state`` is
  :func:`init_state`'s::

    finite = every entry of grads is finite (and loss is, if given)
    finite:      u, inner = optimizer.update(grads, inner, params);  params = params + u
    otherwise:   params and inner unchanged
    last_finite = finite;  total_notfinite += not finite;  notfinite_count: the run of them

  The rule and state of ``optax.apply_if_finite(optimizer, n)`` (for any ``n`` not reached)
  followed by ``optax.apply_updates``. The difference is where the parameters are updated:
  here inside the ``lax.cond`` branch that updates the moments, so XLA does the moments, the
  step and the new parameters in one pass per tensor, in place. Across the wrapper's branch
  the updates are written out and read back in a pass of their own: MiniLM-L6's CWGNC update
  takes 1.4 times as long that way (``benchmarks/bench_optimizer.py``). The state comes out
  the same bit for bit; the parameters can differ in the last bit, because in one loop
  XLA's CPU code generator computes ``theta + (-lr_t * d)`` as a fused multiply-add (one
  rounding) where the wrapper rounds ``-lr_t * d`` first. Under ``vmap`` (several seeds in
  one program) the ``lax.cond`` becomes a select, as the wrapper's does.
  """
  finite = all_finite(grads)
  if loss is not None:
    finite = jnp.logical_and(finite, jnp.isfinite(loss))

  def step(_):
    updates, inner = optimizer.update(grads, opt_state.inner_state, params)
    return optax.apply_updates(params, updates), inner

  params, inner = lax.cond(finite, step, lambda _: (params, opt_state.inner_state), None)
  count_if_not = lambda count, zero: jnp.where(finite, zero, optax.safe_increment(count))
  return params, optax.ApplyIfFiniteState(
      notfinite_count=count_if_not(opt_state.notfinite_count, jnp.zeros([], jnp.int32)),
      last_finite=finite,
      total_notfinite=count_if_not(opt_state.total_notfinite, opt_state.total_notfinite),
      inner_state=inner,
  )
