"""Parameter paths: one readable string per parameter, and the layer it belongs to.

Every path-based choice in the project (weight-decay masks, CWGNC component labels,
gradual-unfreezing masks, diagnostics) goes through these two functions, so a parameter
is named the same way everywhere, e.g. ``encoder/layers/3/attention/query/kernel``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax

_LAYER_RE = re.compile(r"(?:^|/)layers/(\d+)(?:/|$)")

EMBEDDINGS = "embeddings"
HEAD = "head"


def path_to_str(keypath: tuple[Any, ...]) -> str:
  """A JAX key path as ``a/b/3/c``."""
  return jax.tree_util.keystr(keypath, simple=True, separator="/")


def tree_paths(tree: Any) -> Any:
  """A pytree of the same structure whose leaves are the leaves' path strings."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_to_str(p), tree)


def map_paths(fn: Callable[[str], Any], tree: Any) -> Any:
  """Applies ``fn(path_string)`` to every leaf position of ``tree``."""
  return jax.tree_util.tree_map_with_path(lambda p, _: fn(path_to_str(p)), tree)


def layer_index(path: str) -> int | None:
  """The encoder layer index of a parameter path, or None outside the encoder layers."""
  match = _LAYER_RE.search(path)
  return int(match.group(1)) if match else None


def layer_of(path: str) -> str:
  """The layer a parameter belongs to: ``embeddings``, ``encoder/layers/i`` or ``head``.

  The head is everything above the encoder: the (pretrained) pooler and the (fresh)
  classifier. Gradual unfreezing trains it from the first iteration, and treats the
  embeddings as the layer below encoder layer 0, unfrozen last.
  """
  index = layer_index(path)
  if index is not None:
    return f"encoder/layers/{index}"
  if path.startswith(EMBEDDINGS):
    return EMBEDDINGS
  return HEAD
