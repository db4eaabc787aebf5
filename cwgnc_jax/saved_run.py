"""A finished training run read back from its directory: its config, task, model and result.

A run directory (``train.py --workdir DIR``, or a study's ``seed_<s>/``) holds ``config.json``
(the run's config, ``identity.run_identity``), ``results.json`` (written when the run ends) and
``checkpoints/<step>/`` (``training/checkpoint.py``). The result parameters are the ones
``results.json`` scored: with ``result == 'final'`` the TrainState's parameters in the
checkpoint of the run's last step, with ``'best'`` (``keep_best``) the ``best`` item of that
checkpoint (the loop saves at every evaluation, and the last step always is one, so that
checkpoint holds both).

The model is the plain BERT of the run's base model and task, in the run's compute dtype,
with the run's model choices (dropout's bits, the [CLS]-only last layer). A
Mixout run has the same parameter names and evaluates with its weights unmixed, so the plain
model computes what the run's evaluation computed.

Bad input (not a run, an unfinished run, a missing checkpoint, a base model that cannot be
found) raises ``RunDirError`` with one line naming the file and what was expected; a
checkpoint that is there but cannot be read raises ``checkpoint.CheckpointError``, also one
line (a command ends at once on it: ``command_line.fail``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cwgnc_jax import config as config_lib
from cwgnc_jax import files, paths, tasks
from cwgnc_jax.models import bert, loading
from cwgnc_jax.training import checkpoint

# What results.json says about the parameters it scored -> the checkpoint item holding them.
RESULT_ITEMS = {"final": checkpoint.STATE, "best": checkpoint.BEST}


class RunDirError(ValueError):
  """A folder is not a finished run, or a file of it is missing or wrong (one line)."""


_NOT_TRAIN_PY = "not as train.py writes it: rerun the run's train.py command"
# What is read of a run's config.json and results.json, with their types.
CONFIG_FIELDS = {"task": str, "model": str, "dtype": str, "max_length": int,
                 "eval_batch_size": int}
RESULTS_FIELDS = {"result": str, "steps": int}


def _read_json(path: Path, fields: dict[str, Any]) -> dict[str, Any]:
  """The JSON object in ``path``, checked to hold ``fields``; RunDirError otherwise."""
  try:
    values = files.read_json(path, _NOT_TRAIN_PY)
    files.check_fields(values, fields, path, "", _NOT_TRAIN_PY)
  except (ValueError, OSError) as e:
    raise RunDirError(str(e)) from None
  return values


@dataclasses.dataclass(frozen=True)
class SavedRun:
  """A finished run: its directory, its ``config.json`` and ``results.json``, and its task."""
  workdir: Path
  config: dict[str, Any]
  results: dict[str, Any]
  task: tasks.Task

  @property
  def model_name(self) -> str:
    """The base model the run fine-tuned (a name, a folder or a hub id)."""
    return self.config["model"]

  @property
  def result(self) -> str:
    """'final' or 'best': which parameters the run's score belongs to."""
    return self.results["result"]

  @property
  def checkpoint_dir(self) -> Path:
    """The checkpoint of the run's last step, which holds its result parameters."""
    return self.workdir / files.CHECKPOINTS_DIR / str(self.results["steps"])


def open_run(workdir: str | Path) -> SavedRun:
  """The finished run in ``workdir``; RunDirError (one line) when it is not one."""
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise RunDirError(f"no run directory at {workdir}")
  if not (workdir / files.CONFIG_FILE).is_file():
    raise RunDirError(f"{workdir} is not a run directory: it has no {files.CONFIG_FILE} "
                      f"(train.py writes {files.CONFIG_FILE}, {files.RESULTS_FILE} and "
                      f"{files.CHECKPOINTS_DIR}/ there)")
  if not (workdir / files.RESULTS_FILE).is_file():
    raise RunDirError(f"run {workdir} has not finished: it has no {files.RESULTS_FILE} (rerun its "
                      "train.py command to finish it)")
  config = _read_json(workdir / files.CONFIG_FILE, CONFIG_FIELDS)
  results = _read_json(workdir / files.RESULTS_FILE, RESULTS_FIELDS)
  try:
    jnp.dtype(config["dtype"])
  except TypeError:
    raise RunDirError(f"{workdir / files.CONFIG_FILE}: dtype {config['dtype']!r} is not a "
                      f"dtype; {_NOT_TRAIN_PY}") from None
  if results["result"] not in RESULT_ITEMS:
    raise RunDirError(f"{workdir / files.RESULTS_FILE} has result {results['result']!r}, expected "
                      f"one of {sorted(RESULT_ITEMS)}")
  try:
    task = tasks.get_task(config["task"])
  except ValueError as e:
    raise RunDirError(f"{workdir / files.CONFIG_FILE}: {e}") from e
  run = SavedRun(workdir, config, results, task)
  if not run.checkpoint_dir.is_dir():
    raise RunDirError(f"run {workdir} has no checkpoint of its last step: {run.checkpoint_dir} "
                      "is missing (its result parameters are saved there)")
  return run


def model_config(run: SavedRun) -> bert.BertConfig:
  """The architecture of the run's base model (from its ``config.json``), computing as the
  run computed (``config.model_overrides``: e.g. a run from before the [CLS]-only last layer
  evaluates with every token, as its own evaluations did)."""
  try:
    base = loading.load_config(run.model_name)
  except (OSError, ValueError) as e:
    raise RunDirError(f"run {run.workdir} fine-tuned the model {run.model_name!r}, which "
                      f"cannot be loaded: {e}") from e
  return dataclasses.replace(base, **config_lib.model_overrides(run.config))


def load_model(run: SavedRun) -> bert.BertForSequenceClassification:
  """The run's model with its result parameters, in the run's compute dtype."""
  abstract = nnx.eval_shape(lambda: bert.BertForSequenceClassification(
      model_config(run), run.task.num_labels, rngs=nnx.Rngs(0),
      dtype=jnp.dtype(run.config["dtype"])))
  graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
  expected = {paths.path_to_str(path): leaf.shape for path, leaf
              in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(abstract_params))}
  item = RESULT_ITEMS[run.result]
  stored = checkpoint.read_params(run.checkpoint_dir, item)
  restored = {paths.path_to_str(path): leaf
              for path, leaf in jax.tree_util.tree_leaves_with_path(stored)}
  differ = sorted(set(expected) ^ set(restored)) or sorted(
      path for path in expected if tuple(restored[path].shape) != tuple(expected[path]))
  if differ:
    raise RunDirError(f"the parameters in {run.checkpoint_dir / item} are not those of "
                      f"{run.model_name!r} with {run.task.num_labels} labels (they differ at "
                      f"{differ[:3]})")
  params = jax.tree_util.tree_map_with_path(
      lambda path, _: jnp.asarray(restored[paths.path_to_str(path)]),
      nnx.to_pure_dict(abstract_params))
  return nnx.merge(graphdef, params, rest)
