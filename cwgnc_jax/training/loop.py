"""The training loop, for one seed or several trained together.

``train(run)`` trains one run that ``run.prepare`` made ready; ``train_seeds(runs)`` trains
S >= 1 runs of one config that differ only in their seed, in lockstep, as one program:

  * one jitted step per batch (``step.py``); with S > 1 the seeds' states are stacked and the
    step is vmapped over them (the mesh's ``seeds`` axis splits them over devices). A step
    with non-finite loss or gradients is skipped (``optimizers.apply_if_finite``), counted
    and reported;
  * a dev evaluation ``evals_per_epoch`` times per epoch, always at each epoch's end; the
    result is the last evaluation (the final model) or, with ``keep_best``, the best one;
    each evaluation also records every layer's drift from the run's initial parameters;
  * every ``diagnostics_every`` steps, the gradient norm of every tensor (and what a CWGNC
    clip did), computed inside the step, to ``grad_norms.npz`` (``diagnostics.py``);
  * a checkpoint of every seed every ``checkpoint_every`` steps and after every evaluation;
    runs that find checkpoints resume from them (all seeds of a program from the same step)
    and end exactly as an uninterrupted run would; SIGTERM or SIGINT (``preemption.py``)
    stops the loop at the next step boundary, after a checkpoint of every seed at that step;
  * under gradual unfreezing (``config.unfreezing``, ``unfreezing.py``) the run is a sequence
    of stages (iterations), each with its own optimizer (frozen tensors masked out) and
    jitted step (``program.Stages``); at each iteration's end the dev evaluation and the layer drift
    from the pretrained and the previous iteration's parameters go into ``results.json``.

The loop is flat: one train step per batch over the whole run (``run.run_batches``), with
the GU iteration's start, evaluations, checkpoints, logging and the stop on a signal as
actions at their steps around it. What the seeds share is ``program.py``'s; their stacked
state is :class:`seeds.Seeds`'s.

Each seed's run directory (``files.py``) is locked while it trains: a second process on it
is refused at once. What a seed writes there -- logs, evaluations, clock, checkpoints,
results -- is its :class:`rundir.Recorder`'s job; the loop itself only moves the state.
``results.json`` depends only on the config and the seed, except its ``timings`` key. In the
padded layout a seed trained with others computes what it computes alone up to
floating-point rounding (batched matmuls may sum in another order). Packed, a program's seeds
share each step's row length (``run.program_batches``), so a seed's dropout masks, which follow
the batch's shape, are others than alone: the same distribution.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from cwgnc_jax import config as config_lib
from cwgnc_jax import diagnostics, files, metrics
from cwgnc_jax.data import batching
from cwgnc_jax.training import checkpoint as checkpoint_lib
from cwgnc_jax.training import preemption, rundir
from cwgnc_jax.training import program as program_lib
from cwgnc_jax.training import run as run_lib
from cwgnc_jax.training import step as step_lib
from cwgnc_jax.training.run import Run
from cwgnc_jax.training.seeds import Seeds

ConfigError = config_lib.ConfigError


def train(run: Run, steps_cache: dict[Any, Any] | None = None) -> dict[str, Any]:
  """Trains, evaluates and checkpoints one run; returns (and writes) its results.

  ``steps_cache``: a dict in which the jitted steps are kept by ``steps_key``, so several
  runs of one process (a study's seeds) compile each batch shape once.
  """
  return train_seeds([run], steps_cache)[0]


def train_seeds(runs: Sequence[Run], steps_cache: dict[Any, Any] | None = None, *,
                seeds_axis: int = 1) -> list[dict[str, Any]]:
  """Trains S >= 1 runs of one config (seeds differ) in lockstep as one program; returns
  their results, in order. ``seeds_axis``: the size of the mesh's ``seeds`` axis (it
  divides S and the device count), over which the stacked seeds are split.

  Each run directory is locked first (``files.LockedError`` if another process holds one)
  and ends as a run trained alone leaves it. Runs that resume must all resume from the same
  step (as runs trained together checkpoint together).
  """
  program_lib.check_together(runs)
  first = runs[0]
  mesh, mesh_shape = program_lib.program_mesh(runs, seeds_axis)
  with contextlib.ExitStack() as held:
    held.enter_context(preemption.deferred())  # a signal stops at a step boundary
    # The main process writes the run directories (the others write only their checkpoint
    # shards), so it alone holds their locks.
    if rundir.is_main_process():
      for run in runs:
        rundir.claim(run.workdir, run.config, held)
    starts = {rundir.start_step(run.workdir, run.config) for run in runs}
    if len(starts) > 1:
      raise ConfigError(f"the seeds {[r.config.seed for r in runs]} resume from different "
                        f"steps {sorted(starts)}; train them one at a time")
    key = program_lib.steps_key(first, mesh_shape, first.config.diagnostics_every > 0)
    stages = program_lib.Stages(runs, mesh, key, {} if steps_cache is None else steps_cache)
    return _train(runs, stages, starts.pop(), mesh_shape, held)


def _train(runs: Sequence[Run], stages: program_lib.Stages, start: int,
           mesh_shape: tuple[int, ...], held: contextlib.ExitStack) -> list[dict[str, Any]]:
  """The loop of ``train_seeds`` from step ``start``: one train step a batch, and around it,
  at their steps, the next GU iteration's start, the step records and progress, the
  evaluations, GU iteration records, checkpoints, and the stop on a signal. What it opens
  is closed by ``held``, however it ends."""
  first, config, mesh = runs[0], runs[0].config, stages.mesh
  stage = stages.at(start)
  seeds, recorders = _begin(runs, stages, stage, start, mesh_shape, held)
  train_step, eval_step = stages.train_step(stage), stages.eval_step()
  when_eval = eval_steps(first.steps_per_epoch, first.num_epochs, config.evals_per_epoch)
  progress = _progress_bar(first, start, seeds, held)
  stop_if_asked = functools.partial(_stop_if_asked, start, first.total_steps, seeds,
                                    recorders, progress)
  stop_if_asked(start)
  batches = run_lib.run_batches(runs, start, row_multiple=first.num_devices // mesh_shape[0])
  for step, (seed_batches, batch) in enumerate(batches, start + 1):  # the count after it
    if step > stage.end_step:  # a GU iteration ended: the next one starts
      stage = stages.all[stage.index + 1]
      seeds.enter(functools.partial(stages.enter, stage))
      train_step = stages.train_step(stage)
      rundir.log(f"step {stage.start_step}: GU iteration {stage.index} trains "
                 f"{', '.join(stage.trained_layers(first.num_layers))}")
    step_metrics = seeds.step(train_step, batch, mesh)
    _take(step, step_metrics, seed_batches, seeds, recorders)
    if step % config.log_every == 0:
      _show(progress, recorders, seeds.slice(step_metrics, 0))
    progress.update()
    if step in when_eval:
      _evaluate(eval_step, seeds, runs, recorders, step, mesh)
    if stages.mode != "none" and step == stage.end_step:  # always an epoch's end
      _end_iteration(stage, seeds, recorders)
    if step in when_eval or (config.checkpoint_every and step % config.checkpoint_every == 0):
      _save(step, seeds, recorders)
    stop_if_asked(step)
  progress.close()
  return [recorder.finish(skipped, first.total_steps)
          for recorder, skipped in zip(recorders, seeds.skipped())]


def _begin(runs: Sequence[Run], stages: program_lib.Stages, stage: Any, start: int,
           mesh_shape: tuple[int, ...], held: contextlib.ExitStack
           ) -> tuple[Seeds, list[rundir.Recorder]]:
  """Every seed's state at ``start`` (its checkpoint, or the pretrained parameters at step
  0) and its :class:`Recorder`, begun once every seed has been restored."""
  first, config, seeds = runs[0], runs[0].config, Seeds(len(runs))
  optimizer, abstract = stages.setup(stage)
  clock = rundir.Clock()
  session = {"start_step": start, "devices": first.num_devices, "mesh": list(mesh_shape),
             "seeds_in_program": seeds.count}
  names = step_lib.gradient_norm_names(abstract.params, abstract.opt_state)
  if config.unfreezing.mode != "none":  # the clip's components change between iterations
    names.pop("component_norms", None)
  layout = seeds.layout(abstract, first.params, optimizer, config.seed, config.fsdp_min_size)
  recorders, states, previous = [], [], []
  for run in runs:
    checkpoints = checkpoint_lib.Checkpointer(run.workdir / files.CHECKPOINTS_DIR,
                                              keep=config.keep_checkpoints)
    held.callback(_close_quietly, checkpoints.close)
    if start:
      state, meta, best, prior = _restore(run, checkpoints, start, layout,
                                          with_previous=stage.index > 0)
    else:
      state = step_lib.init_state(run.params, optimizer, run.config.seed, layout)
      meta, best, prior = {}, None, None
    recorders.append(rundir.Recorder(run, start, meta, best, names, clock, session,
                                     checkpoints))
    states.append(state)
    previous.append(prior)
  for recorder in recorders:
    recorder.begin()
    held.callback(_close_quietly, recorder.close)
  seeds.load(runs, states, previous, stages.shardings(stage), stages.mesh)
  return seeds, recorders


def _progress_bar(first: Run, start: int, seeds: Seeds, held: contextlib.ExitStack) -> tqdm:
  """The progress bar of the program's steps (the main process's, with ``config.progress``),
  closed by ``held``."""
  progress = tqdm(total=first.total_steps, initial=start, unit="step", dynamic_ncols=True,
                  desc=seeds.label, file=sys.stderr,
                  disable=not (first.config.progress and rundir.is_main_process()))
  held.callback(progress.close)
  return progress


def _restore(run: Run, checkpoints: checkpoint_lib.Checkpointer, step: int, abstract: Any,
             with_previous: bool) -> tuple[Any, dict[str, Any], Any, Any]:
  """``(state, meta, best, previous)`` of ``run``'s checkpoint of ``step``."""
  meta = checkpoints.read_meta(step)
  abstract_best = abstract.params if meta.get("best_index") is not None else None
  state, best = checkpoints.restore(step, abstract, abstract_best)
  previous = checkpoints.restore_previous(step, abstract.params) if with_previous else None
  rundir.log(f"resumed from {checkpoints.path(step)}")
  return state, meta, best, previous


def _stop_if_asked(start: int, total_steps: int, seeds: Seeds,
                   recorders: Sequence[rundir.Recorder], progress: tqdm, step: int) -> None:
  """At a step boundary: on a signal (``preemption``), saves every seed at ``step`` (when it
  trained since its last checkpoint) and raises ``Stopped``. The last step is not a
  boundary: finishing is cheaper than stopping."""
  if step == total_steps or not preemption.should_stop(step):
    return
  for s, recorder in enumerate(recorders):
    if step > start:
      recorder.save(step, *seeds.of_seed(s))
    recorder.close()  # flushes the step records and TensorBoard events
  paths = [str(r.checkpoints.path(step)) for r in recorders] if step else []
  progress.close()
  raise preemption.Stopped(preemption.received(), (
      f"at step {step}: {'checkpoint' if len(paths) == 1 else 'checkpoints'} "
      f"{', '.join(paths)}; rerun the same command to resume") if paths else (
      "at step 0: nothing trained yet; rerun the same command to start"))


def _take(step: int, step_metrics: dict[str, Any], seed_batches: Sequence[batching.Batch],
          seeds: Seeds, recorders: Sequence[rundir.Recorder]) -> None:
  """Gives every seed's recorder its part of the step's metrics and its count of examples."""
  for s, (recorder, seed_batch) in enumerate(zip(recorders, seed_batches)):
    recorder.take(step, seeds.slice(step_metrics, s), int(seed_batch["example_mask"].sum()))


def _save(step: int, seeds: Seeds, recorders: Sequence[rundir.Recorder]) -> None:
  """Checkpoints every seed at ``step``."""
  for s, recorder in enumerate(recorders):
    recorder.save(step, *seeds.of_seed(s))


def _close_quietly(close: Callable[[], None]) -> None:
  """``close()`` on the way out of a loop that failed or stopped: an error of its own (the
  full disk again) would hide the one that ended the loop."""
  with contextlib.suppress(Exception):
    close()


def _show(progress: tqdm, recorders: Sequence[rundir.Recorder],
          first_metrics: dict[str, Any]) -> None:
  """Writes the pending step records and shows the first seed's loss in the progress bar."""
  for recorder in recorders:
    recorder.flush()
  clock = recorders[0].clock
  examples_per_second = sum(r.seen for r in recorders) / max(clock.train_seconds, 1e-9)
  losses = [recorder.shown_loss() for recorder in recorders]
  progress.set_postfix(loss=f"{losses[0]:.4f}",
                       lr=f"{float(first_metrics['learning_rate']):.2e}",
                       ex_per_s=f"{examples_per_second:.1f}")


def _evaluate(eval_step: Callable, seeds: Seeds, runs: Sequence[Run],
              recorders: Sequence[rundir.Recorder], step: int, mesh: jax.sharding.Mesh
              ) -> None:
  """Evaluates every seed after ``step`` and records it (``evaluate``)."""
  with recorders[0].clock.evaluating():
    results = evaluate(eval_step, seeds.state.params, seeds.constants, runs, mesh)
  for s, (recorder, result) in enumerate(zip(recorders, results)):
    recorder.flush()
    recorder.evaluation({"step": step, "epoch": step / runs[0].steps_per_epoch, **result},
                        functools.partial(seeds.params, s))


def _end_iteration(stage: Any, seeds: Seeds, recorders: Sequence[rundir.Recorder]) -> None:
  """Records the GU iteration that ended at this step in every seed's recorder."""
  params, previous = seeds.host_params()
  for s, recorder in enumerate(recorders):
    recorder.iteration_end(stage, seeds.slice(params, s),
                           None if previous is None else seeds.slice(previous, s))


# -- Evaluation. ---------------------------------------------------------------------------

def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
  """``mean(logsumexp(logits) - logits[label])`` in float64 on the host."""
  logits = logits.astype(np.float64)
  top = logits.max(-1)
  log_z = top + np.log(np.exp(logits - top[:, None]).sum(-1))
  return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))


def eval_steps(steps_per_epoch: int, num_epochs: int, evals_per_epoch: int) -> set[int]:
  """The global steps after which the model is evaluated: evenly spaced in every epoch,
  the last at the epoch's end."""
  per_epoch = {-(-k * steps_per_epoch // evals_per_epoch) for k in range(1, evals_per_epoch + 1)}
  return {e * steps_per_epoch + s for e in range(num_epochs) for s in per_epoch}


def evaluate(eval_step: Callable, params: Any, constants: Any, runs: Sequence[Run],
             mesh: jax.sharding.Mesh) -> list[dict[str, Any]]:
  """Every seed's dev score (x100), mean cross-entropy over every dev example, and layer
  drift against its initial parameters (``diagnostics.layer_drift``: the data of the
  paper's Figs. 2a, 4 and 5), each dev batch through all seeds at once. Every process must
  call it (``step.host_copy`` gathers parameters split across them)."""
  config, seeds = runs[0].config, Seeds(len(runs))
  row_multiple = runs[0].num_devices // mesh.shape[step_lib.SEEDS]
  logits, labels = [], []
  for batch in batching.eval_batches(runs[0].dev_data, config.eval_batch_size,
                                     layout=config.layout, max_length=config.max_length,
                                     row_multiple=row_multiple):
    real = batch["example_mask"] == 1
    out = np.asarray(eval_step(params, constants, step_lib.put_batch(batch, mesh)))
    logits.append(seeds.leading(out)[:, real])
    labels.append(batch["labels"][real])
  logits, labels = np.concatenate(logits, axis=1), np.concatenate(labels)
  host = step_lib.host_copy(params)
  return [{"score": metrics.score(config.task, logits[s].argmax(-1), labels),
           "loss": mean_cross_entropy(logits[s], labels), "examples": int(len(labels)),
           "drift": diagnostics.layer_drift(seeds.slice(host, s), run.params)}
          for s, run in enumerate(runs)]
