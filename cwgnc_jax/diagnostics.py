"""How far fine-tuning moved the parameters, per layer (the paper's Figs. 2, 4 and 5).

For two parameter trees ``a`` and ``b`` of the same model and each component (tensor) ``c``:

  rms(c) = sqrt(mean((a_c - b_c)^2))
  cos(c) = <a_c, b_c> / (||a_c||_2 ||b_c||_2)     (flattened; 1.0 when both are zero)

and per layer (``paths.layer_of``: embeddings, encoder/layers/i, head) the maximum RMS
difference and the minimum cosine similarity over its components: one number per layer
that says how much its most-changed tensor moved. Computed in float64 on the host, once per
evaluation or GU iteration, so it costs nothing during training.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from cwgnc_jax import paths


def _by_path(tree: Any) -> dict[str, Any]:
  return {paths.path_to_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def component_drift(params: Any, reference: Any) -> dict[str, dict[str, float]]:
  """``{path: {"rms": rms, "cos": cos}}`` of every tensor of ``params`` against ``reference``."""
  ours, theirs = _by_path(params), _by_path(reference)
  if ours.keys() != theirs.keys():
    missing = sorted(ours.keys() ^ theirs.keys())[:3]
    raise ValueError(f"params and reference differ in their tensors, e.g. {missing}")
  drift = {}
  for path, value in ours.items():
    a = np.asarray(jax.device_get(value), np.float64).ravel()
    b = np.asarray(jax.device_get(theirs[path]), np.float64).ravel()
    if a.shape != b.shape:
      raise ValueError(f"tensor {path} has shape {a.shape} here and {b.shape} in the reference")
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    cos = float(a @ b / norms) if norms > 0 else float(np.array_equal(a, b))
    drift[path] = {"rms": float(np.sqrt(np.mean((a - b) ** 2))), "cos": cos}
  return drift


def layer_drift(params: Any, reference: Any) -> dict[str, dict[str, float]]:
  """``{layer: {"max_rms": ..., "min_cos": ...}}`` over each layer's components."""
  layers: dict[str, dict[str, float]] = {}
  for path, d in component_drift(params, reference).items():
    layer = layers.setdefault(paths.layer_of(path), {"max_rms": 0.0, "min_cos": 1.0})
    layer["max_rms"] = max(layer["max_rms"], d["rms"])
    layer["min_cos"] = min(layer["min_cos"], d["cos"])
  return layers
