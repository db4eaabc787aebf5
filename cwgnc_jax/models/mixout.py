"""Mixout (Lee et al., 2019; reference implementation bloodwass/mixout), SPEC section 2.

In training, every dense layer computes with the mixed weight

  W_mix = ((1 - M) * u + M * w - p * u) / (1 - p)  =  u + M * (w - u) / (1 - p)

where ``w`` is the current weight, ``u`` the target (the pretrained weight; for the fresh
classifier its own initial value), and ``M ~ Bernoulli(1 - p)`` one draw per input unit: a
mask row over the kernel's input dimension, shared by all output units and by the whole
batch, drawn anew at every forward pass (from the layer's dropout key). ``E[W_mix] = w``.
Biases are not mixed; evaluation (no key) uses ``w`` unmixed. A Mixout model has every
other dropout rate set to 0, as the reference sets every ``nn.Dropout`` to p = 0.

Gradients with respect to ``w`` (``gradient``):
  * ``'reference'`` (default): ``g * M``, what the reference's hand-written backward returns
    (without the ``1/(1-p)`` of the forward pass); a custom VJP.
  * ``'autodiff'``: ``g * M / (1 - p)``, the true derivative of the forward pass.
The default is the reference implementation's; which of the two produced Lee et al.'s
published numbers is not stated.
The two differ by the constant factor ``1/(1-p)`` (10 at p = 0.9) on every kernel's gradient;
Adam's normalisation cancels most of it, but not its interaction with the global-norm clip
(1.0 in the recipe) or with eps.

The target is a ``MixoutTarget`` variable: one of the model's constants, which
``split_params`` keeps apart from the parameters (the optimizer never sees them) and the
train step takes as an argument; ``from_pretrained`` sets every target to the loaded weight.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cwgnc_jax.models import bert, loading

GRADIENTS = ("reference", "autodiff")
# Every dropout rate of a Mixout model's config (the reference sets each nn.Dropout to 0).
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
              "classifier_dropout": 0.0}


class MixoutTarget(nnx.Variable):
  """The weight a Mixout layer mixes toward: model state, not a parameter (never trained)."""


def _mix(weight: jax.Array, target: jax.Array, keep: jax.Array, p: float) -> jax.Array:
  return target + keep * (weight - target) / (1.0 - p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _mix_reference(weight: jax.Array, target: jax.Array, keep: jax.Array,
                   p: float) -> jax.Array:
  return _mix(weight, target, keep, p)


def _mix_reference_fwd(weight, target, keep, p):
  return _mix(weight, target, keep, p), keep


def _mix_reference_bwd(p, keep, grad):
  del p
  return grad * keep, None, None  # the reference's backward: no 1/(1-p)


_mix_reference.defvjp(_mix_reference_fwd, _mix_reference_bwd)


def mix(weight: jax.Array, target: jax.Array, keep: jax.Array, p: float,
        gradient: str = "reference") -> jax.Array:
  """``target + keep * (weight - target) / (1 - p)``, differentiated as ``gradient`` says.

  ``keep`` is the float mask M (broadcast against ``weight``).
  """
  if gradient == "reference":
    return _mix_reference(weight, target, keep, p)
  if gradient == "autodiff":
    return _mix(weight, target, keep, p)
  raise ValueError(f"unknown Mixout gradient {gradient!r}; valid: {', '.join(GRADIENTS)}")


class MixoutLinear(bert.Linear):
  """A dense layer (kernel [in, out]) that mixes its kernel toward ``target`` in training.

  Called as ``layer(x, rng)``: with a key and ``p > 0`` it draws ``M`` over the ``in`` input
  units and computes ``x @ W_mix + bias``; without a key it is the plain ``bert.Linear``.
  """

  def __init__(self, in_features: int, out_features: int, *, p: float,
               gradient: str = "reference", **kwargs: Any):
    if not 0.0 <= p < 1.0:
      raise ValueError(f"Mixout p must be in [0, 1), got {p!r}")
    if gradient not in GRADIENTS:
      raise ValueError(f"unknown Mixout gradient {gradient!r}; valid: {', '.join(GRADIENTS)}")
    super().__init__(in_features, out_features, **kwargs)
    self.p = p
    self.gradient = gradient
    self.target = MixoutTarget(jnp.copy(self.kernel[...]))  # its own initial value

  def mask(self, rng: jax.Array) -> jax.Array:
    """M: float [in, 1], one Bernoulli(1 - p) draw per input unit."""
    keep = jax.random.bernoulli(rng, 1.0 - self.p, (self.in_features, 1))
    return keep.astype(self.kernel[...].dtype)

  def mixed_kernel(self, rng: jax.Array) -> jax.Array:
    return mix(self.kernel[...], self.target[...], self.mask(rng), self.p, self.gradient)

  def __call__(self, inputs: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    if rng is None or self.p == 0.0:
      return super().__call__(inputs)
    return self.product(inputs, self.mixed_kernel(rng))


def linear_factory(p: float, gradient: str = "reference") -> bert.LinearFactory:
  """The ``linear=`` constructor of a Mixout BERT."""
  return functools.partial(MixoutLinear, p=p, gradient=gradient)


def set_targets(model: nnx.Module) -> int:
  """Sets every Mixout layer's target to its current kernel; returns how many it set."""
  count = 0
  for _, module in nnx.iter_graph(model):
    if isinstance(module, MixoutLinear):
      module.target = MixoutTarget(jnp.copy(module.kernel[...]))
      count += 1
  return count


def from_pretrained(name_or_path: str | os.PathLike, num_labels: int, *, p: float,
                    gradient: str = "reference", seed: int = 0, dtype: Any = jnp.float32,
                    config_overrides: Mapping[str, Any] | None = None
                    ) -> bert.BertForSequenceClassification:
  """A pretrained BERT whose dense layers all mix toward their loaded weights (the fresh
  classifier toward its initial value), with every dropout rate 0 (``loading.from_pretrained``
  for the arguments)."""
  model = loading.from_pretrained(name_or_path, num_labels, seed=seed, dtype=dtype,
                                  linear=linear_factory(p, gradient),
                                  config_overrides={**(config_overrides or {}), **NO_DROPOUT})
  set_targets(model)
  return model
