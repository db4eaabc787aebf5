"""The optimizers of Table 1 and the one place an optimizer is built from a config.

Recipes (SPEC section 2; Devlin, "+ bias correction", Mosbach et al., CWGNC):

  BertAdam:  m = b1*m + (1-b1)*g,  v = b2*v + (1-b2)*g^2           (no bias correction, ever)
             u = m / (sqrt(v) + eps) + wd * theta   (wd only where the decay mask is True)
             theta <- theta - lr_t * u
  AdamW:     the same with bias-corrected m_hat = m/(1-b1^t), v_hat = v/(1-b2^t).
  CWGNC:     AdamW on gradients clipped component-wise first (``clip_by_component_norm``).

Learning rates follow ``linear_warmup_decay``; a global-norm clip (``max_grad_norm``)
precedes everything where the recipe has one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from ml_collections import config_dict

from cwgnc_jax import paths
from cwgnc_jax.clipping import COMPONENT_KINDS, clip_by_component_norm

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

  def schedule(count):
    step = jnp.asarray(count, jnp.float32)
    warmup = peak * step / max(1, warmup_steps)
    decay = peak * jnp.maximum(0.0, total_steps - step) / max(1, total_steps - warmup_steps)
    return jnp.where(step < warmup_steps, warmup, decay)

  return schedule


def scale_by_adam_no_bias_correction(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
  """Adam's direction without bias correction: ``m / (sqrt(v) + eps)`` (BertAdam).

  ``m = b1*m + (1-b1)*g`` and ``v = b2*v + (1-b2)*g^2``, both starting at 0. The state is
  ``optax.ScaleByAdamState`` so tools that read ``mu``/``nu`` work unchanged.
  """

  def init_fn(params):
    return optax.ScaleByAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree_utils.tree_zeros_like(params),
        nu=optax.tree_utils.tree_zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree_utils.tree_update_moment(updates, state.mu, b1, 1)
    nu = optax.tree_utils.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, optax.ScaleByAdamState(
        count=optax.safe_increment(state.count), mu=mu, nu=nu
    )

  return optax.GradientTransformation(init_fn, update_fn)


class ScaleByAdamPerTensorState(NamedTuple):
  """Adam's moments with one update count per tensor (``count`` has the params' structure)."""
  count: Any
  mu: Any
  nu: Any


def scale_by_adam_per_tensor_count(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
  """``optax.scale_by_adam`` with a bias-correction count per tensor instead of one per chain.

  For every tensor ``i`` with its own count ``c_i`` (the updates it has had)::

    m_i = b1*m_i + (1-b1)*g_i,  v_i = b2*v_i + (1-b2)*g_i^2,  c_i = c_i + 1
    u_i = (m_i / (1-b1^c_i)) / (sqrt(v_i / (1-b2^c_i)) + eps)

  While all tensors train from the start, every ``c_i`` equals optax's single count and the
  updates are ``optax.scale_by_adam``'s (up to float rounding). It exists for gradual
  unfreezing: a tensor unfrozen later starts with zero moments and count 0, so its bias
  correction is that of a fresh Adam (a shared count would make its first steps up to
  ``(1-b1)/sqrt(1-b2)`` = 3.2 times too large, as BertAdam's are), while tensors already
  training keep theirs.
  """

  def init_fn(params):
    return ScaleByAdamPerTensorState(
        count=jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
        mu=optax.tree_utils.tree_zeros_like(params),
        nu=optax.tree_utils.tree_zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree_utils.tree_update_moment(updates, state.mu, b1, 1)
    nu = optax.tree_utils.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = jax.tree.map(optax.safe_increment, state.count)
    correct = lambda decay: lambda moment, c: optax.tree_utils.tree_bias_correction(
        moment, decay, c)
    mu_hat = jax.tree.map(correct(b1), mu, count)
    nu_hat = jax.tree.map(correct(b2), nu, count)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
    return updates, ScaleByAdamPerTensorState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def bert_adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    mask: Any = None,
) -> optax.GradientTransformation:
  """BertAdam (google-research/bert ``AdamWeightDecayOptimizer``): see the module docstring.

  ``mask`` (pytree of bool or params -> pytree) selects where decay applies; None = all,
  as in ``optax.adamw``. Pass :func:`decay_mask` for the paper's setting.
  """
  return optax.chain(
      scale_by_adam_no_bias_correction(b1, b2, eps),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def cwgnc(
    learning_rate: optax.ScalarOrSchedule,
    clip_norm: float = 0.05,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    mask: Any = decay_mask,
    components: Any = None,
) -> optax.GradientTransformation:
  """AdamW (bias-corrected) on component-wise clipped gradients, the paper's optimizer.

  ``clip_by_component_norm(clip_norm)`` -> ``scale_by_adam`` -> ``add_decayed_weights`` ->
  ``scale_by_learning_rate``: the clip acts on the raw gradient, before the moments and
  their bias correction. ``components`` is passed to :func:`clip_by_component_norm`
  (None or 'tensor' = one component per tensor; 'layer'; 'qkv'; a label function).
  """
  return optax.chain(
      clip_by_component_norm(clip_norm, components=components),
      optax.scale_by_adam(b1, b2, eps),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


# -- Recipes and the config-driven builder. ----------------------------------------------

RECIPES = ("bertadam", "adamw", "mosbach", "cwgnc", "cwgnc_released", "mixout")


def _devlin() -> dict[str, Any]:
  return dict(
      learning_rate=2e-5,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      weight_decay=0.01,
      warmup_fraction=0.1,
      bias_correction=False,
      max_grad_norm=config_dict.placeholder(float),
      clip_norm=config_dict.placeholder(float),
      components="tensor",
      decay_exclude=DECAY_EXCLUDE,
      released_code=False,
  )


def recipe(name: str, *, released_code: bool = False) -> ml_collections.ConfigDict:
  """The optimizer config of a Table 1 row (SPEC section 2).

  Args:
    name: 'bertadam' (Devlin et al.: BertAdam, global clip 1.0), 'adamw' (+ bias
      correction), 'mosbach' (same optimizer as 'adamw'; more epochs, set in the training
      config), 'cwgnc' (paper: 'adamw' with per-tensor clip 0.05 and no global clip),
      'cwgnc_released' (= 'cwgnc' with ``released_code=True``) or 'mixout' (Lee et al.: the
      'mosbach' optimizer; the model's Mixout is set in the training config).
    released_code: for 'cwgnc', the authors' released script instead of the paper: no
      warmup, weight decay 0.0, eps 1e-8.
  """
  if name not in RECIPES:
    raise ValueError(f"unknown optimizer recipe {name!r}; valid: {', '.join(RECIPES)}")
  if name == "cwgnc_released":
    name, released_code = "cwgnc", True
  if released_code and name != "cwgnc":
    raise ValueError(f"released_code applies to the 'cwgnc' recipe only, got {name!r}")
  values = _devlin()
  values["max_grad_norm"] = 1.0
  if name != "bertadam":
    values["bias_correction"] = True
  if name == "cwgnc":
    values.update(max_grad_norm=config_dict.placeholder(float), clip_norm=0.05)
  if released_code:
    values.update(warmup_fraction=0.0, weight_decay=0.0, eps=1e-8, released_code=True)
  return ml_collections.ConfigDict(values)


_FIELDS = tuple(_devlin())


def _check_config(cfg: ml_collections.ConfigDict, total_steps: int) -> None:
  missing = [field for field in _FIELDS if field not in cfg]
  if missing:
    raise ValueError(f"opt_config lacks the fields {missing}; start from recipe(name)")

  def positive(name):
    value = cfg[name]
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise ValueError(f"opt_config.{name} must be finite and > 0, got {value!r}")

  positive("learning_rate")
  positive("eps")
  for name in ("b1", "b2"):
    if not 0 <= cfg[name] < 1:
      raise ValueError(f"opt_config.{name} must be in [0, 1), got {cfg[name]!r}")
  if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
    raise ValueError(f"opt_config.weight_decay must be finite and >= 0, got {cfg.weight_decay!r}")
  if not 0 <= cfg.warmup_fraction <= 1:
    raise ValueError(f"opt_config.warmup_fraction must be in [0, 1], got {cfg.warmup_fraction!r}")
  if cfg.clip_norm is not None:
    positive("clip_norm")
  if cfg.max_grad_norm is not None and not math.isfinite(cfg.max_grad_norm):
    raise ValueError(f"opt_config.max_grad_norm must be finite or None, got {cfg.max_grad_norm!r}")
  if cfg.components not in COMPONENT_KINDS:
    raise ValueError(
        f"opt_config.components must be one of {sorted(COMPONENT_KINDS)}, got {cfg.components!r}"
    )
  if not (isinstance(total_steps, int) and total_steps > 0):
    raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")


def build_optimizer(
    opt_config: ml_collections.ConfigDict,
    total_steps: int,
    *,
    trainable: Any = None,
    per_tensor_count: bool = False,
) -> optax.GradientTransformation:
  """The optimizer an ``opt_config`` (from :func:`recipe`) describes.

  Chain, each part present only when configured::

    clip_by_component_norm(clip_norm)   # clip_norm not None (CWGNC), on the raw gradient
    clip_by_global_norm(max_grad_norm)  # max_grad_norm not None and > 0
    scale_by_adam (bias_correction) | scale_by_adam_no_bias_correction (BertAdam)
    add_decayed_weights(weight_decay, mask=decay_mask(exclude=decay_exclude))
    scale_by_learning_rate(linear_warmup_decay(learning_rate, total_steps, warmup_fraction))

  Args:
    opt_config: the optimizer config (fields as :func:`recipe` returns them).
    total_steps: the number of optimizer steps of the run (the schedule ends there).
    trainable: optional pytree of bool (or params -> pytree of bool); False leaves are
      frozen: routed through ``optax.partition`` to ``optax.set_to_zero``, so they have no
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
  if cfg.bias_correction:
    adam = scale_by_adam_per_tensor_count if per_tensor_count else optax.scale_by_adam
    parts.append(adam(cfg.b1, cfg.b2, cfg.eps))
  else:
    parts.append(scale_by_adam_no_bias_correction(cfg.b1, cfg.b2, cfg.eps))
  exclude = tuple(cfg.decay_exclude)
  parts.append(optax.add_decayed_weights(cfg.weight_decay, lambda p: decay_mask(p, exclude)))
  schedule = linear_warmup_decay(cfg.learning_rate, total_steps, cfg.warmup_fraction)
  parts.append(optax.scale_by_learning_rate(schedule))
  optimizer = optax.chain(*parts)
  if trainable is None:
    return optimizer

  def labels(params):
    flags = trainable(params) if callable(trainable) else trainable
    return jax.tree.map(lambda flag: "trainable" if flag else "frozen", flags)

  return optax.partition({"trainable": optimizer, "frozen": optax.set_to_zero()}, labels)
