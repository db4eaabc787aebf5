"""Diagnostics of a run: how far fine-tuning moved the parameters, per layer (the paper's
Figs. 2, 4 and 5), and the gradient norms of every K-th step (Fig. 3).

For two parameter trees ``a`` and ``b`` of the same model and each component (tensor) ``c``:

  rms(c) = sqrt(mean((a_c - b_c)^2))
  cos(c) = <a_c, b_c> / (||a_c||_2 ||b_c||_2)     (flattened; 1.0 when both are zero)

and per layer (``paths.layer_of``: embeddings, encoder/layers/i, head) the maximum RMS
difference and the minimum cosine similarity over its components: one number per layer
that says how much its most-changed tensor moved. Computed in float64 on the host, outside
the train step, at every evaluation and GU iteration: a copy of both trees to the host and
a float64 pass over every parameter, which lengthens each evaluation in proportion to the
model (a MiniLM-L6-sized tree of 22M parameters: 3.3 s on one core of an EPYC host).

The gradient norms are computed inside the train step (``step.gradient_norms``);
:class:`GradientNormLog` keeps those of every K-th step and writes them to ``grad_norms.npz``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from cwgnc_jax import files, paths

# The train-step metrics (``step.gradient_norms``) that go to ``grad_norms.npz``.
GRADIENT_NORM_KEYS = ("tensor_norms", "component_norms", "clipped")
# The arrays every ``grad_norms.npz`` holds.
GRAD_NORMS_ARRAYS = ("step", "tensor_names", "tensor_norms")


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


# -- Gradient norms. -----------------------------------------------------------------------

class GradientNormLog:
  """``grad_norms.npz`` of a run: the gradient norms of every ``every``-th step.

  The file holds (R rows = logged steps, N tensors, C clip components)::

    step           int32 [R]      the step count after the step (as in metrics.jsonl)
    tensor_names   str [N]        parameter paths
    tensor_norms   float32 [R, N] pre-clip L2 norm of each tensor's gradient
    component_names str [C]       with a component clip (CWGNC): its component labels
    clipped        bool [R, C]    whether each component was clipped
    component_norms float32 [R, C] their pre-clip norms, only when the components are not
                                  the tensors themselves (else they repeat tensor_norms)

  Rows stay on the device until :meth:`save` (at every checkpoint and at the end) fetches
  them and rewrites the file atomically. A run resumed at step ``s`` drops the rows after
  ``s``, so the file ends as an uninterrupted run's would.
  """

  def __init__(self, workdir: Path, names: Mapping[str, list[str]], every: int,
               start_step: int, enabled: bool):
    self.every, self.enabled = every, enabled and every > 0
    self.path = Path(workdir) / files.GRAD_NORMS_FILE
    self.tensor_names = list(names["tensor_norms"])
    self.component_names = list(names.get("component_norms", []))
    # What each row holds, with its width.
    self.widths = {"tensor_norms": len(self.tensor_names)}
    if self.component_names:
      self.widths["clipped"] = len(self.component_names)
      if self.component_names != self.tensor_names:
        self.widths["component_norms"] = len(self.component_names)
    self.rows: list[tuple[int, dict[str, Any]]] = []
    if self.enabled and self.path.is_file():
      stored = read_gradient_norms(self.path,
                                   "move it away to resume without the norms logged so far",
                                   arrays=("step", *self.widths))
      for i, at in enumerate(stored["step"]):
        if at <= start_step:
          self.rows.append((int(at), {key: stored[key][i] for key in self.widths}))

  def take(self, step: int, step_metrics: dict[str, Any]) -> None:
    """Removes the gradient norms from a step's metrics; keeps them on every K-th step."""
    norms = {key: step_metrics.pop(key) for key in GRADIENT_NORM_KEYS if key in step_metrics}
    if self.enabled and step % self.every == 0:
      self.rows.append((step, {key: norms[key] for key in self.widths}))

  def save(self) -> None:
    """Fetches the rows and writes the file (atomically: a temporary file renamed)."""
    if not self.enabled:
      return
    self.rows = jax.device_get(self.rows)
    arrays = {"step": np.asarray([at for at, _ in self.rows], np.int32),
              "tensor_names": np.asarray(self.tensor_names, str)}
    if self.component_names:
      arrays["component_names"] = np.asarray(self.component_names, str)
    for key, width in self.widths.items():
      dtype = np.bool_ if key == "clipped" else np.float32
      arrays[key] = np.asarray([values[key] for _, values in self.rows],
                               dtype).reshape(len(self.rows), width)
    with files.writing(self.path):
      files.write_atomic(self.path, lambda f: np.savez_compressed(f, **arrays), binary=True)


def read_gradient_norms(path: str | Path, fix: str = "move it away, or rerun that seed", *,
                        arrays: Sequence[str] = GRAD_NORMS_ARRAYS) -> dict[str, np.ndarray]:
  """The arrays of a ``grad_norms.npz`` (:class:`GradientNormLog`); ValueError naming the
  file, and ``fix``, when it cannot be read as one (cut short, not a zip) or lacks one of
  ``arrays``."""
  try:
    with np.load(path, allow_pickle=False) as data:
      norms = {key: data[key] for key in data.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise ValueError(f"{path} is not a readable gradient-norm log ({type(error).__name__}: "
                     f"{error}); {fix}") from None
  missing = [key for key in arrays if key not in norms]
  if missing:
    raise ValueError(f"{path} lacks the arrays {missing}; {fix}")
  return norms
