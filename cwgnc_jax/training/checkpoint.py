"""Checkpoints of a training run with orbax: the train state, best parameters, loop metadata.

A checkpoint of step ``s`` is the folder ``<workdir>/checkpoints/<s>/`` with the items

  state   the TrainState (parameters, optimizer state, step, RNG key data, skip count)
  best    the parameters of the best evaluation so far (only with ``keep_best``)
  previous  the parameters at the end of the previous gradual-unfreezing iteration (only
          from GU's second iteration on: its layer drift is measured against them)
  meta    JSON: the data position (epoch, step in epoch) and the loop's history (evaluations)

orbax writes a checkpoint into ``<s>.orbax-checkpoint-tmp-*`` and renames it to ``<s>`` only
when complete, so a process killed while saving leaves the previous checkpoints as they were
(the partial folder is ignored, and removed when the checkpoints are next opened). Saves are
synchronous: the train step donates its state buffers, which an asynchronous save could still
be reading.

``read_params`` reads the parameters of one checkpoint without a ``Checkpointer`` (for export
and prediction): read-only, and without the optimizer.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from cwgnc_jax import files

STATE, BEST, META, PREVIOUS = "state", "best", "meta", "previous"

# orbax logs every save at INFO; the run's own log says what matters.
logging.getLogger("absl").setLevel(logging.WARNING)


def _not_a_disk_error(record: logging.LogRecord) -> bool:
  """False for orbax's log records of a disk's error (a full disk: one traceback per thread
  that wrote), which ``Checkpointer.save`` reports in one line."""
  error = record.exc_info[1] if record.exc_info else RuntimeError(record.getMessage())
  return files.disk_error(error) is None


logging.getLogger("absl").addFilter(_not_a_disk_error)


def _is_closed_loop_callback(kind: type, value: BaseException, traceback) -> bool:
  """Whether an error is the ``RuntimeError: Event loop is closed`` that tensorstore reports
  for each write still pending when orbax gave a failed save up and closed its asyncio loop
  (a full disk: a handful, before ``Checkpointer.save``'s one line, as the thread timing
  falls). Only that error, raised by asyncio's own check."""
  last = traceback
  while last is not None and last.tb_next is not None:
    last = last.tb_next
  return (kind is RuntimeError and str(value) == "Event loop is closed" and last is not None
          and last.tb_frame.f_code.co_filename.endswith("base_events.py"))


def _without_closed_loop_callbacks(hook: Callable[..., None]) -> Callable[..., None]:
  """``hook`` (``sys.excepthook``, which tensorstore's ``PyErr_Print`` calls), less the
  closed-loop callbacks."""
  def excepthook(kind, value, traceback) -> None:
    if not _is_closed_loop_callback(kind, value, traceback):
      hook(kind, value, traceback)
  return excepthook


def _without_unraisable_closed_loop_callbacks(hook: Callable[..., None]
                                              ) -> Callable[..., None]:
  """``hook`` (``sys.unraisablehook``, which tensorstore's ``PyErr_WriteUnraisable`` calls:
  with no object, Python prints a bare traceback), less the closed-loop callbacks."""
  def unraisablehook(unraisable) -> None:
    if not _is_closed_loop_callback(unraisable.exc_type, unraisable.exc_value,
                                    unraisable.exc_traceback):
      hook(unraisable)
  return unraisablehook


sys.excepthook = _without_closed_loop_callbacks(sys.excepthook)
sys.unraisablehook = _without_unraisable_closed_loop_callbacks(sys.unraisablehook)


def _not_a_failed_read_of_a_failed_restore(record: logging.LogRecord) -> bool:
  """False for asyncio's "Task exception was never retrieved" of an orbax read task: a
  restore of a corrupt checkpoint fails on its first bad array, and the reads of its other
  bad arrays fail in tasks nobody awaits any more, logged when they are garbage-collected
  (at shutdown, after ``Checkpointer.restore``'s one line). Only tasks raised from orbax."""
  error = record.exc_info[1] if record.exc_info else None
  if error is None or not record.getMessage().startswith("Task exception was never retrieved"):
    return True
  frames = _traceback_files(error.__traceback__)
  return not any(f"orbax{sep}checkpoint" in name for name in frames for sep in "/\\")


def _traceback_files(tb) -> list[str]:
  """The file names of a traceback's frames, outermost first."""
  names = []
  while tb is not None:
    names.append(tb.tb_frame.f_code.co_filename)
    tb = tb.tb_next
  return names


logging.getLogger("asyncio").addFilter(_not_a_failed_read_of_a_failed_restore)


def saved_steps(directory: str | Path) -> list[int]:
  """The steps of the complete checkpoints in ``directory``, ascending, read without opening
  an orbax manager (which would create the folder): orbax renames a checkpoint to its bare
  step number only when it is complete."""
  directory = Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored; the message names it and the way out."""
  leaves_orbax_work = True  # the reads of its other arrays: command_line.fail_on


class Checkpointer:
  """The checkpoints of one run directory, the last ``keep`` of them kept."""

  def __init__(self, directory: str | Path, *, keep: int):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """The steps of complete checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def path(self, step: int) -> Path:
    return self.directory / str(step)

  def save(self, step: int, state: Any, meta: dict[str, Any], best: Any = None,
           previous: Any = None) -> None:
    """Saves the checkpoint of ``step`` (complete on return), unless it exists already."""
    if step in self.steps():
      return
    items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
    if best is not None:
      items[BEST] = ocp.args.StandardSave(best)
    if previous is not None:
      items[PREVIOUS] = ocp.args.StandardSave(previous)
    # A full or read-only disk: one line with what the checkpoint needs. orbax leaves the
    # partial save under its temporary name, which is never taken for a checkpoint.
    needed = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves((state, best, previous)))
    with files.writing(self.path(step), needed=needed, fix=
                       "free space, keep fewer checkpoints (--config.keep_checkpoints) or "
                       "pass another --workdir; a rerun resumes from the last complete one"):
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
      self._manager.wait_until_finished()

  def _unusable(self, step: int, error: Exception) -> CheckpointError:
    older = [s for s in self.steps() if s < step]
    hint = (f"resume from an older one with --config.resume_step={older[-1]} "
            f"(available: {older})" if older else "delete it to start over")
    reason = (str(error).splitlines() or [""])[0][:200]
    return CheckpointError(f"checkpoint {self.path(step)} cannot be restored "
                           f"({type(error).__name__}: {reason}); {hint}")

  def read_meta(self, step: int) -> dict[str, Any]:
    """The loop metadata of the checkpoint of ``step``."""
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**{
          META: ocp.args.JsonRestore()}))
    except Exception as e:  # orbax raises many kinds; all mean "unusable".
      raise self._unusable(step, e) from e
    return dict(restored[META])

  def restore(self, step: int, abstract_state: Any, abstract_best: Any = None
              ) -> tuple[Any, Any]:
    """``(state, best)`` of the checkpoint of ``step``, laid out as the abstract trees say
    (shapes, dtypes, shardings); ``best`` is None when ``abstract_best`` is."""
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if abstract_best is not None:
      items[BEST] = ocp.args.StandardRestore(abstract_best)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax and tensorstore raise many kinds; all mean "unusable".
      raise self._unusable(step, e) from e
    return restored[STATE], restored[BEST] if abstract_best is not None else None

  def restore_previous(self, step: int, abstract_params: Any) -> Any:
    """The ``previous`` parameters of the checkpoint of ``step``, laid out as
    ``abstract_params`` says."""
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**{
          PREVIOUS: ocp.args.StandardRestore(abstract_params)}))
    except Exception as e:  # orbax and tensorstore raise many kinds; all mean "unusable".
      raise self._unusable(step, e) from e
    return restored[PREVIOUS]

  def delete_after(self, step: int) -> list[int]:
    """Deletes the checkpoints after ``step`` (resuming from an older one); returns them."""
    later = [s for s in self.steps() if s > step]
    for s in later:
      self._manager.delete(s)
    return later

  def close(self) -> None:
    """Closes the manager (once; later calls do nothing). Every exit must: orbax's cleanup
    of a manager left open prints a traceback when the process ends."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None



def read_params(step_dir: str | Path, item: str) -> dict[str, Any]:
  """The parameters held in ``item`` of the checkpoint folder ``step_dir``, as numpy arrays.

  ``item`` is STATE (then only the TrainState's ``params`` are read: an orbax partial restore
  leaves the optimizer state on disk) or BEST. The arrays are laid out from the checkpoint's
  own metadata onto this process's first device, whatever mesh saved them, so neither the
  run's optimizer nor its abstract state is needed: rebuilding those as the training loop
  does would tie this reader to the loop's optimizer recipes only to describe Adam moments
  that would then be thrown away (twice the parameters' bytes). No ``CheckpointManager``
  either: opening one creates folders and deletes unfinished saves, and the run may still be
  training. Layer keys come back as strings (``'0'``), as orbax stores them.

  Raises CheckpointError naming the folder when the item is missing or unreadable.
  """
  folder = Path(step_dir).absolute() / item  # orbax takes absolute paths only, as Checkpointer
  handler = ocp.PyTreeCheckpointHandler()
  try:
    stored = handler.metadata(folder).tree
    stored_params = stored["params"] if item == STATE else stored
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here),
                          stored_params)
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=here), stored_params)
    if item == STATE:
      target, restore_args = {"params": target}, {"params": restore_args}
    restored = handler.restore(folder, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=item == STATE))
  except Exception as e:  # orbax and tensorstore raise many kinds; all mean "unusable".
    reason = (str(e).splitlines() or [""])[0][:200]
    raise CheckpointError(f"cannot read the parameters of checkpoint item {folder} "
                          f"({type(e).__name__}: {reason})") from e
  finally:
    handler.close()
  params = restored["params"] if item == STATE else restored
  return jax.tree.map(np.asarray, jax.device_get(params))
