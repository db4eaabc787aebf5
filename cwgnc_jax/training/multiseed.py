"""Several seeds of one config in one compiled program: the train step vmapped over seeds.

S runs that differ only in their seed share everything but their state (parameters,
optimizer state, dropout key) and their data order. Their states are stacked along a new
leading seed axis, and one jitted ``vmap`` of the train step advances all S by one step::

  state[s], metrics[s] = train_step(state[s], batch[s])      for s = 0 .. S-1, in one program

Each seed keeps its own batches (``batching.train_batches(seed=...)``). Packed batches of
different seeds have different row counts, so each step's batches are padded with empty rows
to the largest (``stack_batches``): rows without tokens change no example's logits (attention
stays within an example's segment) but cost compute. The dev set is the same for every
seed, so evaluation vmaps over the parameters only.

A seed trained here computes what the sequential loop computes, up to floating-point
rounding (batched matmuls and extra empty rows may sum in another order): its results are
equal in distribution, not bit for bit. One device only (the seed axis is the vmap axis,
not a mesh axis).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from cwgnc_jax import config as config_lib
from cwgnc_jax import diagnostics, metrics, optimizers
from cwgnc_jax.data import batching
from cwgnc_jax.training import checkpoint as checkpoint_lib
from cwgnc_jax.training import loop
from cwgnc_jax.training import step as step_lib

ConfigError = config_lib.ConfigError


def stack(trees: Sequence[Any]) -> Any:
  """The trees' leaves stacked along a new leading (seed) axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, index: int) -> Any:
  """Seed ``index``'s slice of a stacked tree."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


def pad_rows(batch: batching.Batch, num_rows: int) -> batching.Batch:
  """``batch`` with empty rows (no tokens) appended up to ``num_rows`` rows. ``cls_index``
  (flat ``row * T + col``) stays valid: existing rows keep their places."""
  rows = batch["input_ids"].shape[0]
  if rows == num_rows:
    return batch
  padded = dict(batch)
  for key in ("input_ids", "token_type_ids", "position_ids", "segment_ids"):
    padded[key] = np.concatenate(
        [batch[key], np.zeros((num_rows - rows, batch[key].shape[1]), batch[key].dtype)])
  return padded


def stack_batches(batches: Sequence[batching.Batch]) -> batching.Batch:
  """One batch per seed, padded to a common row count and stacked: arrays ``[S, ...]``."""
  num_rows = max(b["input_ids"].shape[0] for b in batches)
  padded = [pad_rows(b, num_rows) for b in batches]
  return {key: np.stack([b[key] for b in padded]) for key in batches[0]}


def jit_train_steps(apply: step_lib.ApplyFn, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None, *, diagnostics: bool = False
                    ) -> Callable[[step_lib.TrainState, Mapping[str, jax.Array], Any],
                                  tuple[step_lib.TrainState, dict[str, jax.Array]]]:
  """``step.train_step_fn`` vmapped over the seed axis of the state, the batch and the
  constants, jitted, the stacked state donated."""
  return jax.jit(jax.vmap(step_lib.train_step_fn(apply, optimizer, schedule,
                                                 diagnostics=diagnostics)),
                 donate_argnums=0)


def jit_eval_steps(apply: step_lib.ApplyFn) -> Callable[[Any, Any, Mapping[str, jax.Array]],
                                                        jax.Array]:
  """``(stacked params, stacked constants, batch) -> logits [S, B, C]``: one dev batch
  through every seed."""
  return jax.jit(jax.vmap(lambda params, constants, batch: apply(params, constants, batch),
                          in_axes=(0, 0, None)))


# -- Training seeds together. --------------------------------------------------------------

def check_runs(runs: Sequence[loop.Run]) -> None:
  """Raises ConfigError unless ``runs`` can train together: one device, plain fine-tuning,
  configs equal but for the seed, fresh run directories."""
  config = runs[0].config
  if runs[0].num_devices != 1:
    raise ConfigError(f"training seeds together needs one device, found {runs[0].num_devices}; "
                      "train them one after another")
  if config.get("unfreezing") and config.unfreezing.mode != "none":
    raise ConfigError("training seeds together supports plain fine-tuning only, not "
                      f"config.unfreezing.mode={config.unfreezing.mode!r}")
  key = loop.steps_key(runs[0], (1, 1), False)
  for run in runs[1:]:
    if loop.steps_key(run, (1, 1), False) != key:
      raise ConfigError(f"seed {run.config.seed} differs from seed {config.seed} in more "
                        "than its seed")
  for run in runs:
    if (run.workdir / "checkpoints").is_dir() and any((run.workdir / "checkpoints").iterdir()):
      raise ConfigError(f"{run.workdir} holds checkpoints: resume it on its own")


def train_together(runs: Sequence[loop.Run], steps_cache: dict[Any, Any] | None = None
                   ) -> list[dict[str, Any]]:
  """Trains fresh runs of one config (seeds differ) in lockstep with one vmapped step.

  Every run directory ends as ``loop.train`` leaves it -- ``config.json``, ``metrics.jsonl``,
  TensorBoard events, ``grad_norms.npz``, checkpoints after every evaluation and every
  ``checkpoint_every`` steps, ``results.json`` -- so a program killed midway resumes each
  seed on its own with ``loop.train``. The timings are the program's (shared by its seeds),
  with ``seeds_in_program``. Returns the results, in the order of ``runs``.
  """
  check_runs(runs)
  config, run0 = runs[0].config, runs[0]
  count = len(runs)
  total_steps, steps_per_epoch = run0.total_steps, run0.steps_per_epoch
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  optimizer = optimizers.build_optimizer(config.optimizer, total_steps)
  opt = config.optimizer
  schedule = optimizers.linear_warmup_decay(opt.learning_rate, total_steps, opt.warmup_fraction)
  abstract = step_lib.abstract_state(run0.params, optimizer, config.seed, mesh,
                                     config.fsdp_min_size)
  with_diagnostics = config.diagnostics_every > 0
  steps_cache = {} if steps_cache is None else steps_cache
  key = ("seeds", loop.steps_key(run0, (1, 1), with_diagnostics))
  if key not in steps_cache:
    steps_cache[key] = (jit_train_steps(run0.apply, optimizer, schedule,
                                        diagnostics=with_diagnostics),
                        jit_eval_steps(run0.apply))
  train_step, eval_step = steps_cache[key]
  state = stack([step_lib.init_state(run.params, optimizer, run.config.seed, abstract)
                 for run in runs])
  constants = jax.device_put(stack([run.constants for run in runs]))

  names = step_lib.gradient_norm_names(abstract.params, abstract.opt_state)
  logs, grad_norms, checkpoints = [], [], []
  for run in runs:
    run.workdir.mkdir(parents=True, exist_ok=True)
    loop.write_json(run.workdir / loop.CONFIG_FILE, config_lib.run_identity(run.config))
    logs.append(loop.MetricsLog(run.workdir, 0, True))
    grad_norms.append(diagnostics.GradientNormLog(run.workdir, names, config.diagnostics_every,
                                                  0, True))
    checkpoints.append(checkpoint_lib.Checkpointer(run.workdir / "checkpoints",
                                                   keep=config.keep_checkpoints))
  evals: list[list[dict[str, Any]]] = [[] for _ in runs]
  best: list[Any] = [None] * count
  sessions = [{"start_step": 0, "devices": 1, "mesh": [1, 1], "seeds_in_program": count}]
  when_eval = loop.eval_steps(steps_per_epoch, config.num_epochs, config.evals_per_epoch)
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  seen = [0] * count
  t_train, eval_seconds, step = time.perf_counter(), 0.0, 0

  def clock(seed_index: int) -> dict[str, float]:
    return {"train_seconds": time.perf_counter() - t_train - eval_seconds,
            "eval_seconds": eval_seconds, "train_examples": seen[seed_index]}

  def flush() -> None:
    for at, values in jax.device_get(pending):
      for s in range(count):
        logs[s].write({"step": at, "loss": float(values["loss"][s]),
                       "grad_norm": float(values["grad_norm"][s]),
                       "learning_rate": float(values["learning_rate"][s]),
                       "skipped": not bool(values["finite"][s])}, "train")
    pending.clear()
    for log in logs:
      log.flush()

  def save() -> None:
    flush()
    for s, run in enumerate(runs):
      grad_norms[s].save()
      meta = {"step": step, "epoch": step // steps_per_epoch,
              "epoch_step": step % steps_per_epoch, "evals": evals[s],
              "best_index": loop.best_index(evals[s]) if config.keep_best and evals[s] else None,
              "sessions": sessions, "clock": clock(s)}
      checkpoints[s].save(step, unstack(state, s), meta, best[s])

  progress = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr,
                  desc=f"{count} seeds", disable=not config.progress)
  for epoch in range(config.num_epochs):
    epochs = [batching.train_batches(run.train_data, config.batch_size, seed=run.config.seed,
                                     epoch=epoch, layout=config.layout,
                                     max_length=config.max_length) for run in runs]
    for batches in zip(*epochs):
      state, step_metrics = train_step(state, jax.device_put(stack_batches(batches)), constants)
      step += 1
      for s, batch in enumerate(batches):
        seen[s] += int(batch["example_mask"].sum())
      norms = {k: step_metrics.pop(k) for k in diagnostics.GRADIENT_NORM_KEYS
               if k in step_metrics}
      if norms and step % config.diagnostics_every == 0:
        for s in range(count):
          grad_norms[s].take(step, {k: v[s] for k, v in norms.items()})
      pending.append((step, step_metrics))
      if step % config.log_every == 0:
        flush()
      progress.update()
      if step in when_eval:
        flush()
        t_eval = time.perf_counter()
        for s, result in enumerate(evaluate_together(eval_step, state.params, constants, runs)):
          evals[s].append({"step": step, "epoch": step / steps_per_epoch, **result})
          logs[s].write(evals[s][-1], "eval")
          if config.keep_best and loop.best_index(evals[s]) == len(evals[s]) - 1:
            best[s] = jax.tree.map(jnp.copy, unstack(state.params, s))
        eval_seconds += time.perf_counter() - t_eval
      if step in when_eval or (config.checkpoint_every and step % config.checkpoint_every == 0):
        save()
  flush()
  progress.close()
  skipped = np.asarray(jax.device_get(state.skipped))
  all_results = []
  for s, run in enumerate(runs):
    grad_norms[s].save()
    logs[s].close()
    checkpoints[s].close()
    results = loop.make_results(run, evals[s], int(skipped[s]), step)
    totals = clock(s)
    results["timings"] = {**totals, "sessions": sessions, "seeds_in_program": count,
                          "train_examples_per_second":
                              sum(seen) / max(totals["train_seconds"], 1e-9)}
    loop.write_json(run.workdir / "results.json", results)
    all_results.append(results)
  return all_results


def evaluate_together(eval_step: Callable, params: Any, constants: Any,
                      runs: Sequence[loop.Run]) -> list[dict[str, Any]]:
  """Every seed's dev score, mean cross-entropy and layer drift (as ``loop.evaluate`` and
  ``loop.drift_from_pretrained``), each dev batch through all seeds at once."""
  config = runs[0].config
  logits, labels = [], []
  for batch in batching.eval_batches(runs[0].dev_data, config.eval_batch_size,
                                     layout=config.layout, max_length=config.max_length):
    real = batch["example_mask"] == 1
    logits.append(np.asarray(eval_step(params, constants, jax.device_put(batch)))[:, real])
    labels.append(batch["labels"][real])
  logits, labels = np.concatenate(logits, axis=1), np.concatenate(labels)
  host_params = jax.device_get(params)
  return [{"score": metrics.score(config.task, logits[s].argmax(-1), labels),
           "loss": loop.mean_cross_entropy(logits[s], labels), "examples": int(len(labels)),
           "drift": diagnostics.layer_drift(unstack(host_params, s), run.params)}
          for s, run in enumerate(runs)]
