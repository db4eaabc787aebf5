"""Component-wise gradient norm clipping (CWGNC, Yang and Ma), as an Optax transformation.

A *component* is a set of gradient leaves; by default every leaf (parameter tensor) is its
own component. Each component ``k`` with gradient tensors ``g_k`` is rescaled on its own::

  g_k <- g_k * min(1, c_k / (||g_k||_2 + eps)),   ||g_k||_2 = sqrt(sum over its leaves of |g|^2)

This is PyTorch's ``clip_grad_norm_(param, c)`` applied to one component at a time. ``c_k``
is an absolute L2 norm, not an RMS and not relative to the parameter norm.

Relation to Optax:
  * ``optax.clip_by_global_norm(c)`` is the special case of a single component holding every
    leaf (up to ``eps``: Optax divides by the bare norm).
  * ``optax.clip_by_block_rms(t)`` clips each leaf's RMS ``||g||_2 / sqrt(n)`` to ``t``; it
    equals per-tensor L2 clipping only with a different threshold ``t = c / sqrt(n)`` for
    each tensor of ``n`` entries (again up to ``eps``).
  * ``optax.adaptive_grad_clip`` is unit-wise (rows of a kernel) and its threshold is
    relative to the parameter norm, so it is a different method.

The state keeps the last step's pre-clip norm of every component and whether it was
clipped (one float32 and one bool scalar per component), so a training loop can log them
with :func:`component_norm_stats` without a second pass over the gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cwgnc_jax import paths

Labels = Any  # a pytree of hashable labels with the structure of the parameters
ComponentSpec = str | Callable[[Any], Labels] | Labels | None


class ComponentClipState(NamedTuple):
  """The last step's pre-clip L2 norm (float32) and clipped flag (bool) per component."""
  norms: dict[Hashable, jax.Array]
  clipped: dict[Hashable, jax.Array]


# -- Component label functions: params -> pytree of labels, one label per leaf. ---------


def tensor_components(params: Any) -> Labels:
  """Every parameter tensor is its own component (the paper's choice); label = its path."""
  return paths.tree_paths(params)


def layer_components(params: Any) -> Labels:
  """One component per layer: ``embeddings``, ``encoder/layers/i`` or ``head``."""
  return paths.map_paths(paths.layer_of, params)


def _qkv_label(path: str) -> str:
  parent, _, leaf_name = path.rpartition("/")
  module_path, _, module = parent.rpartition("/")
  if module in ("query", "key", "value") and module_path.endswith("attention"):
    return f"{module_path}/qkv/{leaf_name}"
  return path


def qkv_components(params: Any) -> Labels:
  """Query, key and value of one attention layer form one component per parameter kind.

  ``.../attention/{query,key,value}/kernel`` share the label ``.../attention/qkv/kernel``
  (and likewise the biases); every other tensor is its own component.
  """
  return paths.map_paths(_qkv_label, params)


COMPONENT_KINDS: dict[str, Callable[[Any], Labels]] = {
    "tensor": tensor_components,
    "layer": layer_components,
    "qkv": qkv_components,
}


def component_labels(kind: str) -> Callable[[Any], Labels]:
  """The label function of a named component kind: 'tensor', 'layer' or 'qkv'."""
  if kind not in COMPONENT_KINDS:
    raise ValueError(f"components must be one of {sorted(COMPONENT_KINDS)}, got {kind!r}")
  return COMPONENT_KINDS[kind]


# -- The transformation. ------------------------------------------------------------------


def _check_threshold(name: str, value: Any) -> None:
  """Raises on a concrete threshold that is not finite and > 0 (traced values pass)."""
  if isinstance(value, jax.core.Tracer):
    return
  array = np.asarray(value)
  if array.shape != () or not np.issubdtype(array.dtype, np.number):
    raise ValueError(f"{name} must be a scalar number, got {value!r}")
  if not (math.isfinite(float(array)) and float(array) > 0):
    raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def _resolve_labels(components: ComponentSpec, tree: Any) -> Labels:
  if components is None:
    return tensor_components(tree)
  if isinstance(components, str):
    return component_labels(components)(tree)
  if callable(components):
    return components(tree)
  return components


def _leaf_labels(components: ComponentSpec, tree: Any) -> tuple[list[Any], list[Hashable], Any]:
  """The leaves of ``tree``, the label of each leaf, and the tree structure."""
  leaves, treedef = jax.tree.flatten(tree)
  try:
    labels = treedef.flatten_up_to(_resolve_labels(components, tree))
  except (ValueError, TypeError) as error:
    raise ValueError(
        f"components must give one label per gradient leaf (structure {treedef}): {error}"
    ) from None
  return leaves, labels, treedef


def _thresholds(max_norm: Any, labels: list[Hashable]) -> dict[Hashable, jax.Array]:
  """The float32 threshold of every component label."""
  if isinstance(max_norm, Mapping):
    missing = sorted({str(label) for label in labels if label not in max_norm})
    if missing:
      raise ValueError(f"max_norm has no threshold for the component labels {missing}")
    return {label: jnp.asarray(max_norm[label], jnp.float32) for label in set(labels)}
  threshold = jnp.asarray(max_norm, jnp.float32)
  return {label: threshold for label in set(labels)}


def clip_by_component_norm(
    max_norm: float | jax.Array | Mapping[Hashable, float | jax.Array],
    *,
    components: ComponentSpec = None,
    eps: float = 1e-6,
) -> optax.GradientTransformation:
  """Clips the L2 norm of every gradient component to ``max_norm`` on its own.

  For component ``k`` (the leaves sharing label ``k``) with joint norm
  ``n_k = sqrt(sum_{leaves in k} sum |g|^2)`` computed in float32::

    g <- g * min(1, c_k / (n_k + eps))

  The result keeps each leaf's dtype. An all-zero component stays zero (the scale is 1).

  Args:
    max_norm: the threshold ``c`` (an absolute L2 norm), a scalar for every component or a
      mapping label -> threshold. Only jnp arithmetic touches a scalar threshold, so
      ``optax.inject_hyperparams(clip_by_component_norm)(max_norm=schedule)`` works (pass
      ``static_args=('components',)`` when ``components`` is a function, and
      ``hyperparam_dtype=jnp.float32`` for low-precision params, or the injected threshold
      takes their dtype).
    components: None (every leaf is its own component, labelled by its path), a kind
      name ('tensor', 'layer', 'qkv': see ``COMPONENT_KINDS``), a label function
      ``params -> pytree of labels`` (e.g. :func:`layer_components`,
      :func:`qkv_components`), or such a label pytree. Leaves sharing a label form one
      component with a joint norm.
    eps: added to the norm before dividing, as PyTorch's ``clip_grad_norm_`` does.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`ComponentClipState`.
  """
  if isinstance(max_norm, Mapping):
    for label, value in max_norm.items():
      _check_threshold(f"max_norm[{label!r}]", value)
  else:
    _check_threshold("max_norm", max_norm)
  if not isinstance(eps, jax.core.Tracer) and not (math.isfinite(eps) and eps >= 0):
    raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
  if isinstance(components, str):
    component_labels(components)  # raises on an unknown kind

  def init_fn(params):
    _, labels, _ = _leaf_labels(components, params)
    _thresholds(max_norm, labels)  # fails early on a label without a threshold
    unique = set(labels)
    return ComponentClipState(
        norms={label: jnp.zeros([], jnp.float32) for label in unique},
        clipped={label: jnp.zeros([], jnp.bool_) for label in unique},
    )

  def update_fn(updates, state, params=None):
    del params
    leaves, labels, treedef = _leaf_labels(components, updates)
    thresholds = _thresholds(max_norm, labels)
    squared_norms: dict[Hashable, jax.Array] = {}
    for leaf, label in zip(leaves, labels):
      squared = jnp.sum(jnp.square(leaf.astype(jnp.float32)))
      squared_norms[label] = squared_norms[label] + squared if label in squared_norms else squared
    norms = {label: jnp.sqrt(squared) for label, squared in squared_norms.items()}
    scales = {
        label: jnp.minimum(1.0, thresholds[label] / (norm + eps)) for label, norm in norms.items()
    }
    clipped_leaves = [
        (leaf.astype(jnp.float32) * scales[label]).astype(leaf.dtype)
        for leaf, label in zip(leaves, labels)
    ]
    new_state = ComponentClipState(
        norms={**state.norms, **norms},
        clipped={**state.clipped, **{label: scale < 1.0 for label, scale in scales.items()}},
    )
    return jax.tree.unflatten(treedef, clipped_leaves), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def component_norm_stats(opt_state: Any) -> dict[str, dict[Hashable, jax.Array]]:
  """The last step's pre-clip component norms and clipped flags, from an optimizer state.

  Finds every :class:`ComponentClipState` anywhere inside ``opt_state`` (a chain, a
  partition, an inject_hyperparams state, ...) and merges them.

  Returns:
    ``{'norms': {label: float32 scalar}, 'clipped': {label: bool scalar}}``; both empty
    when the optimizer has no component clip.
  """
  found = optax.tree_utils.tree_get_all_with_path(opt_state, ComponentClipState.__name__)
  norms: dict[Hashable, jax.Array] = {}
  clipped: dict[Hashable, jax.Array] = {}
  for _, state in found:
    norms.update(state.norms)
    clipped.update(state.clipped)
  return {"norms": norms, "clipped": clipped}
