"""One seed's run directory (``files.py``): whether a config may use it, where a run in it
resumes, and what the training loop writes there while it trains -- step records,
evaluations, GU iteration records, clock, checkpoints and ``results.json``
(:class:`Recorder`)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from cwgnc_jax import config as config_lib
from cwgnc_jax import diagnostics, files, identity, metrics, unfreezing
from cwgnc_jax.training import checkpoint as checkpoint_lib

if TYPE_CHECKING:
  from cwgnc_jax.training.run import Run

ConfigError = config_lib.ConfigError


def is_main_process() -> bool:
  return jax.process_index() == 0


def log(message: str) -> None:
  if is_main_process():
    tqdm.write(message, file=sys.stderr)


# -- Whether a run directory holds this config's run, and where it resumes. ---------------

def check_run_dir(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError if ``workdir`` cannot hold this config's run: it holds another
  config's run (``identity.differences``), or files but no run, or it (or the folder it
  would be made in) is not a writable folder."""
  workdir = Path(workdir)
  problem = files.unwritable_reason(workdir)
  if problem:
    raise ConfigError(problem)
  stored_path = workdir / files.CONFIG_FILE
  if stored_path.is_file():
    try:
      stored = files.read_json(stored_path)
      files.check_fields(stored, {}, stored_path)
    except (ValueError, OSError) as e:
      raise ConfigError(str(e)) from None
    differ = identity.differences(stored, config)
    if differ:
      raise ConfigError(
          f"run directory {workdir} holds a run of another config (differs in "
          f"{', '.join(differ[:6])}{', ...' if len(differ) > 6 else ''}); pass another "
          "--workdir or delete that directory")
  elif workdir.is_dir() and files.holds_files(workdir):
    raise ConfigError(f"run directory {workdir} is not empty and holds no "
                      f"{files.CONFIG_FILE}; pass another --workdir")


def check_resume_step(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError unless ``config.resume_step`` (if set) has a checkpoint in
  ``workdir``. Reads the folder only."""
  if config.resume_step is None:
    return
  steps = checkpoint_lib.saved_steps(Path(workdir) / files.CHECKPOINTS_DIR)
  if config.resume_step not in steps:
    raise ConfigError(f"config.resume_step={config.resume_step} has no checkpoint in "
                      f"{Path(workdir) / files.CHECKPOINTS_DIR}; available: {steps}")


def start_step(workdir: Path, config: ml_collections.ConfigDict) -> int:
  """The step the run of ``config`` in ``workdir`` starts (or resumes) at:
  ``config.resume_step``, else its latest checkpoint, else 0. Reads the folder only."""
  if config.resume_step is not None:
    return config.resume_step
  steps = checkpoint_lib.saved_steps(Path(workdir) / files.CHECKPOINTS_DIR)
  return steps[-1] if steps else 0


def claim(workdir: Path, config: ml_collections.ConfigDict,
          held: contextlib.ExitStack) -> None:
  """Makes and locks ``workdir`` until ``held`` closes (``files.LockedError`` if another
  process holds it), checks it again (another process may have been first) and writes its
  ``config.json`` if it has none."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:  # what check_run_dir's access check cannot foresee: /proc, a
    raise ConfigError(  # full disk, a read-only mount seen only at the write
        f"cannot make the run directory {workdir}: {e.strerror}") from None
  held.enter_context(files.locked(workdir))
  check_run_dir(workdir, config)
  if not (workdir / files.CONFIG_FILE).exists():
    with files.writing(workdir / files.CONFIG_FILE):
      files.write_json(workdir / files.CONFIG_FILE, identity.run_identity(config))


def best_index(evals: list[dict[str, Any]]) -> int:
  """The index of the highest dev score (the earliest of equal ones)."""
  return max(range(len(evals)), key=lambda i: (evals[i]["score"], -i))


# -- What a seed writes while it trains. ---------------------------------------------------

class MetricsLog:
  """``metrics.jsonl`` and TensorBoard events of a run, written by the main process.

  On resume at step ``s`` every record after ``s`` (written by the interrupted session after
  its last checkpoint) is dropped, so the file ends as an uninterrupted run's would.
  """

  def __init__(self, workdir: Path, start_step: int, enabled: bool):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self.path = workdir / files.METRICS_FILE
    kept = []
    if self.path.is_file():
      for line in self.path.read_text().splitlines():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill or a full disk
          continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and (
            record["step"] <= start_step):
          kept.append(line + "\n")
    with files.writing(self.path):
      files.write_atomic(self.path, lambda f: f.write("".join(kept)))
      self.file = self.path.open("a")
    # Purged from 0 too: a session that died before its first checkpoint left events that
    # its rerun writes again.
    self.tb = SummaryWriter(str(workdir / files.TENSORBOARD_DIR), purge_step=start_step + 1)

  def write(self, record: dict[str, Any], prefix: str) -> None:
    if not self.enabled:
      return
    with files.writing(self.path):
      self.file.write(json.dumps(record, sort_keys=True) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])

  def flush(self) -> None:
    if self.enabled:
      with files.writing(self.path):
        self.file.flush()
      with files.writing(self.path.parent / files.TENSORBOARD_DIR):
        self.tb.flush()

  def close(self) -> None:
    """Flushes and closes the files (once; later calls do nothing)."""
    if self.enabled and not self.file.closed:
      with files.writing(self.path):
        self.file.close()
      with files.writing(self.path.parent / files.TENSORBOARD_DIR):
        self.tb.close()


class Clock:
  """Seconds a program spends training (compiling and checkpointing included) and
  evaluating, shared by the seeds it trains."""

  def __init__(self):
    self.start, self.eval_seconds = time.perf_counter(), 0.0

  @contextlib.contextmanager
  def evaluating(self):
    start = time.perf_counter()
    yield
    self.eval_seconds += time.perf_counter() - start

  @property
  def train_seconds(self) -> float:
    return time.perf_counter() - self.start - self.eval_seconds


class Recorder:
  """One seed's run directory while it trains: its step records (``metrics.jsonl``, TensorBoard,
  ``grad_norms.npz``), evaluations, GU iteration records, clock, checkpoints and results.

  ``meta`` is the loop metadata of the checkpoint it resumes from (empty when it starts),
  ``best`` the parameters of its best evaluation (with ``keep_best``; else None).
  """

  def __init__(self, run: Run, start_step: int, meta: dict[str, Any], best: Any, names: dict,
               clock: Clock, session: dict[str, Any], checkpoints: checkpoint_lib.Checkpointer):
    config = run.config
    self.run, self.clock, self.checkpoints = run, clock, checkpoints
    self.main = is_main_process()
    self.evals: list[dict[str, Any]] = meta.get("evals", [])
    self.iterations: list[dict[str, Any]] = meta.get("iterations", [])
    self.sessions = meta.get("sessions", []) + [session]
    # Seconds and examples of the earlier sessions, up to the checkpoint resumed from.
    self.before = meta.get("clock", {"train_seconds": 0.0, "eval_seconds": 0.0,
                                     "train_examples": 0})
    self.seen = 0
    self.best = best
    self.start_step = start_step
    try:
      self.grad_norms = diagnostics.GradientNormLog(
          run.workdir, names, config.diagnostics_every, start_step, self.main)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    self.metrics: MetricsLog | None = None  # opened by ``begin``
    self.pending: list[tuple[int, dict[str, Any]]] = []
    self.window: list[float] = []  # losses since the progress bar was last updated

  def begin(self) -> None:
    """Starts changing the run directory: a resume deletes the checkpoints after its step and
    cuts ``metrics.jsonl`` back to it. The loop calls it once every seed of the program has
    been restored and read, so input that stops a resume leaves every run directory as it
    was."""
    later = self.checkpoints.delete_after(self.start_step) if self.start_step else []
    if later:
      log(f"{self.run.workdir}: resuming from step {self.start_step}: deleted the later "
          f"checkpoints {later}")
    self.metrics = MetricsLog(self.run.workdir, self.start_step, self.main)

  def take(self, step: int, step_metrics: dict[str, Any], examples: int) -> None:
    """A step's metrics (device arrays): its gradient norms go to ``grad_norms.npz``, the
    rest is written at the next ``flush``."""
    self.seen += examples
    step_metrics = dict(step_metrics)  # the norms leave this copy, not the caller's dict
    self.grad_norms.take(step, step_metrics)
    self.pending.append((step, step_metrics))

  def flush(self) -> None:
    """Writes the pending steps' records: every scalar metric of the step (``step.py``), and
    ``skipped`` for a step that was not ``finite``."""
    for at, values in jax.device_get(self.pending):
      record = {"step": at, "skipped": not bool(values["finite"])}
      record.update((key, float(value)) for key, value in values.items()
                    if key != "finite" and np.ndim(value) == 0)
      self.metrics.write(record, "train")
      self.window.append(record["loss"])
      if record["skipped"]:
        log(f"{self.run.workdir}: step {at}: loss or gradients not finite; update skipped")
    self.pending.clear()
    self.metrics.flush()

  def shown_loss(self) -> float:
    """The mean loss of the steps flushed since the last call (for the progress bar)."""
    loss = float(np.mean(self.window))
    self.window.clear()
    return loss

  def evaluation(self, result: dict[str, Any], params: Callable[[], Any]) -> None:
    """Records an evaluation; ``params()`` gives the seed's parameters (device), kept when
    the evaluation is the best so far and ``keep_best`` is set."""
    self.evals.append(result)
    self.metrics.write(result, "eval")
    log(f"{self.run.workdir}: step {result['step']} (epoch {result['epoch']:.2f}): dev "
        f"{self.run.task.metric} {result['score']:.2f}, loss {result['loss']:.4f}")
    if self.run.config.keep_best and best_index(self.evals) == len(self.evals) - 1:
      self.best = jax.tree.map(jnp.copy, params())

  def iteration_end(self, stage: unfreezing.Stage, params: Any, previous: Any) -> None:
    """Records GU iteration ``stage``, which ended at the last evaluation, given the seed's
    parameters and those it started from (host arrays; ``unfreezing.record``)."""
    self.iterations.append(unfreezing.record(stage, self.run.num_layers, self.evals[-1],
                                             params, self.run.params, previous))

  def clock_totals(self) -> dict[str, float]:
    """Seconds and examples over every session so far. ``program_examples`` counts those of
    every seed trained with this one (its program's throughput), each session with its own
    count of seeds: a resume may train another number of seeds together."""
    count = self.sessions[-1]["seeds_in_program"]
    before_program = self.before.get("program_examples",  # a checkpoint without the key
                                     self.before["train_examples"] * count)
    return {"train_seconds": self.before["train_seconds"] + self.clock.train_seconds,
            "eval_seconds": self.before["eval_seconds"] + self.clock.eval_seconds,
            "train_examples": self.before["train_examples"] + self.seen,
            "program_examples": before_program + self.seen * count}

  def save(self, step: int, state: Any, previous: Any) -> None:
    """The checkpoint of ``step``: the seed's state, best and previous-iteration parameters,
    and the loop metadata that resumes it."""
    self.flush()
    steps_per_epoch = self.run.steps_per_epoch
    meta = {"step": step, "epoch": step // steps_per_epoch,
            "epoch_step": step % steps_per_epoch, "evals": self.evals,
            "best_index": best_index(self.evals) if self.best is not None else None,
            "sessions": self.sessions, "clock": self.clock_totals(),
            "iterations": self.iterations}
    self.grad_norms.save()  # first: rows after the checkpoint are dropped on resume
    self.checkpoints.save(step, state, meta, self.best, previous)

  def close(self) -> None:
    """Flushes and closes ``metrics.jsonl`` and the TensorBoard events."""
    self.metrics.close()

  def finish(self, skipped: int, steps: int) -> dict[str, Any]:
    """Writes and returns ``results.json``."""
    self.flush()
    self.grad_norms.save()
    self.close()
    self.checkpoints.close()
    results = make_results(self.run, self.evals, skipped, steps)
    if self.run.config.unfreezing.mode != "none":
      results["unfreezing"] = {"mode": self.run.config.unfreezing.mode,
                               "iterations": self.iterations}
    totals = self.clock_totals()
    results["timings"] = {**totals, "sessions": self.sessions,
                          "seeds_in_program": self.sessions[-1]["seeds_in_program"],
                          "train_examples_per_second":
                              totals["program_examples"] / max(totals["train_seconds"], 1e-9)}
    if self.main:
      with files.writing(self.run.workdir / files.RESULTS_FILE):
        files.write_json(self.run.workdir / files.RESULTS_FILE, results)
    return results


def make_results(run: Run, evals: list[dict[str, Any]], skipped: int, steps: int
                 ) -> dict[str, Any]:
  """The run's results without timings: a function of the config and the seed."""
  config = run.config
  chosen = evals[best_index(evals)] if config.keep_best else evals[-1]
  majority = run.majority_score
  threshold = metrics.failure_threshold(config.task, config.failure_rule, majority)
  return {
      "task": config.task, "model": config.model, "method": config.method,
      "seed": config.seed, "metric": run.task.metric,
      "result": "best" if config.keep_best else "final",
      "score": chosen["score"], "result_step": chosen["step"],
      "majority_score": majority, "failure_rule": config.failure_rule,
      "failure_threshold": threshold, "failed": metrics.is_failed(chosen["score"], threshold),
      "evaluations": evals, "skipped_steps": skipped, "steps": steps,
      "train_examples": len(run.train_data), "dev_examples": len(run.dev_data),
      "config": identity.run_identity(config),
  }


