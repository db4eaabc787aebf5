"""The training loop, for one seed or several trained together.

``prepare(config, workdir)`` does every check that depends on user input -- the config, the
devices, the run directory, the GLUE data, the model -- and loads data and weights, before
anything is compiled or written. ``train(run)`` trains one run; ``train_seeds(runs)`` trains
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
    jitted step (``Stages``); at each iteration's end the dev evaluation and the layer drift
    from the pretrained and the previous iteration's parameters go into ``results.json``.

``first_stage_program(run)`` gives one seed's jitted steps as the loop builds them, for code
that drives the step by hand (the benchmarks).

Each seed's run directory (``files.py``) is locked while it trains: a second process on it
is refused at once. What a seed writes there -- logs, evaluations, clock, checkpoints,
results -- is its :class:`Recorder`'s job; the loop itself only moves the shared state.
``results.json`` depends only on the config and the seed, except its ``timings`` key. In the
padded layout a seed trained with others computes what it computes alone up to
floating-point rounding (batched matmuls may sum in another order). Packed, a program's seeds
share each step's row length (``program_batches``), so a seed's dropout masks, which follow
the batch's shape, are others than alone: the same distribution.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache as jax_cache
from tqdm import tqdm

from cwgnc_jax import config as config_lib
from cwgnc_jax import diagnostics, files, metrics, models, unfreezing
from cwgnc_jax.models import mixout
from cwgnc_jax.data import batching, glue
from cwgnc_jax.training import checkpoint as checkpoint_lib
from cwgnc_jax.training import preemption
from cwgnc_jax.training import step as step_lib

ConfigError = config_lib.ConfigError


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """``jax.distributed.initialize()`` when the config or the environment asks for it.

  ``config.distributed`` or ``$JAX_COORDINATOR_ADDRESS`` (with ``$JAX_NUM_PROCESSES`` and
  ``$JAX_PROCESS_ID``, or a cluster JAX detects: SLURM, Cloud TPU, ...). Must run before
  anything touches the devices.
  """
  if config.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    # JAX itself reads only the coordinator's address from the environment.
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=int(count) if count else None,
                               process_id=int(index) if index else None)


def use_compilation_cache(config: ml_collections.ConfigDict) -> Path | None:
  """Keeps compiled programs on disk (JAX's persistent compilation cache), so a run loads the
  steps an earlier run compiled for the same batch shapes instead of compiling them again (a
  MiniLM-L6 RTE training step: 7.6 s to compile, 1.9 s to trace and load). A cached program
  is the compiled executable itself, so results are bit-identical; its key covers the
  program, the devices, the flags and the JAX version.

  ``config.compilation_cache`` True: the folder JAX is already given
  (``$JAX_COMPILATION_CACHE_DIR``), else ``<cache_dir>/xla`` beside the tokenized data.
  False: the cache is off, even where the environment names a folder. Returns the folder in
  use, or None. It takes effect for what the process compiles next, even where something
  was compiled before.

  JAX runs what it finds in that folder: it must be writable by you alone, as ``~/.cache``
  is.
  """
  if not config.get("compilation_cache", True):
    jax.config.update("jax_enable_compilation_cache", False)
    jax_cache.reset_cache()  # JAX decides once per process whether it uses the cache
    return None
  if jax.config.jax_compilation_cache_dir is None:  # JAX reads the folder at its first use
    jax_cache.set_cache_dir(str(glue.cache_folder(config.cache_dir) / "xla"))
  return Path(jax.config.jax_compilation_cache_dir)


def is_main_process() -> bool:
  return jax.process_index() == 0


# -- Preparing a run. ----------------------------------------------------------------------

@dataclasses.dataclass
class Run:
  """A run ready to train: validated config, data and pretrained parameters in host memory."""
  config: ml_collections.ConfigDict
  workdir: Path
  task: glue.Task
  train_data: glue.TokenizedSplit
  dev_data: glue.TokenizedSplit
  params: Any
  constants: Any  # what the model reads but never trains (``models.split_params``)
  apply: Callable[..., jax.Array]  # (params, constants, inputs, dropout_rng=None) -> logits
  num_devices: int
  majority_score: float  # of the train set's majority label (all of it, even with train_limit)

  @property
  def steps_per_epoch(self) -> int:
    return batching.steps_per_epoch(len(self.train_data), self.config.batch_size)

  @property
  def num_layers(self) -> int:
    return unfreezing.num_layers(self.params)

  @property
  def num_epochs(self) -> int:
    """The run's epochs (under gradual unfreezing: those of all its iterations)."""
    return unfreezing.num_epochs(self.config, self.num_layers)

  @property
  def total_steps(self) -> int:
    return self.num_epochs * self.steps_per_epoch


def _normalized(values: Any) -> Any:
  """``values`` as JSON would give them back (tuples as lists), for comparisons."""
  return json.loads(json.dumps(values))


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def check_run_dir(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError if ``workdir`` cannot hold this config's run: it holds another
  config's run, or files but no run, or it (or the folder it would be made in) is not a
  writable folder."""
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
    stored = config_lib.without_removed_keys(stored)
    current = _normalized(config_lib.run_identity(config))
    for group, (key, off) in config_lib.LATER_GROUPS.items():
      if group not in stored and current.get(group, {}).get(key) == off:
        del current[group]
    stored, current = _flat(stored), _flat(current)
    for key, value in config_lib.LATER_KEYS.items():
      stored.setdefault(key, value)
      moot = config_lib.LATER_KEYS_MOOT.get(key)
      if moot and moot(current):
        stored.pop(key)
        current.pop(key, None)
    differ = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
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


def head(data: glue.TokenizedSplit, n: int) -> glue.TokenizedSplit:
  """The first ``n`` examples of a split."""
  n = min(n, len(data))
  end = data.offsets[n]
  return glue.TokenizedSplit(data.input_ids[:end], data.token_type_ids[:end],
                             data.offsets[:n + 1], data.labels[:n])


def load_model(config: ml_collections.ConfigDict, num_labels: int) -> nnx.Module:
  """The run's pretrained model, its dropout masks drawn by ``config.dropout_bits``, its last
  layer at the [CLS] tokens alone if ``config.cls_only_last_layer``: with
  ``config.mixout.p > 0`` every dense layer mixes toward its loaded weight and every dropout
  rate is 0 (``models/mixout.py``)."""
  dtype = jnp.dtype(config.dtype)
  overrides = config_lib.model_overrides(config)
  if config.mixout.p > 0:
    return mixout.from_pretrained(config.model, num_labels, p=config.mixout.p,
                                  gradient=config.mixout.gradient, seed=config.seed,
                                  dtype=dtype, config_overrides=overrides)
  return models.from_pretrained(config.model, num_labels, seed=config.seed, dtype=dtype,
                                config_overrides=overrides)


def prepare(config: ml_collections.ConfigDict, workdir: str | Path) -> Run:
  """Checks everything a run depends on and loads its data and weights.

  Raises ConfigError, OSError (missing files, an unreachable hub) or ValueError (bad
  data or weights) with one line naming the culprit; writes nothing.
  """
  config_lib.validate(config)
  num_devices = jax.device_count()
  config_lib.check_devices(config, num_devices)
  workdir = Path(workdir)
  check_run_dir(workdir, config)
  check_resume_step(workdir, config)
  task = glue.get_task(config.task)
  model_config = models.load_config(config.model)
  if config.max_length > model_config.max_position_embeddings:
    raise ConfigError(f"config.max_length={config.max_length} exceeds the model's "
                      f"{model_config.max_position_embeddings} positions")
  num_layers = model_config.num_hidden_layers
  if (config.unfreezing.mode != "none"
      and unfreezing.iterations(config, num_layers) > num_layers + 1):
    raise ConfigError(f"config.unfreezing.iterations={config.unfreezing.iterations} exceeds "
                      f"the model's {num_layers} layers + 1 (the embeddings, unfrozen last)")
  tokenizer = models.load_tokenizer(config.model)
  source = config_lib.glue_source(config)
  load = lambda split: glue.load_tokenized(config.task, split, tokenizer, source=source,
                                           max_length=config.max_length,
                                           cache_dir=config.cache_dir)
  train_data, dev_data = load("train"), load("dev")
  majority = metrics.majority_score(config.task, train_data.labels, dev_data.labels)
  if config.train_limit is not None:
    train_data = head(train_data, config.train_limit)
  model = load_model(config, task.num_labels)
  graphdef, constants, params = models.split_params(model)
  return Run(config, workdir, task, train_data, dev_data, params, constants,
             models.apply_fn(graphdef), num_devices, majority)


def epoch_batches(run: Run, epoch: int, *, row_multiple: int, start_step: int = 0,
                  layout: str | None = None) -> Iterator[batching.Batch]:
  """The run's training batches of ``epoch`` from ``start_step`` on, as ``train`` draws them
  (its seed, batch size, layout or ``layout``, and row lengths); rows a multiple of
  ``row_multiple`` (the data-parallel devices)."""
  config = run.config
  return batching.train_batches(
      run.train_data, config.batch_size, seed=config.seed, epoch=epoch,
      layout=layout or config.layout, max_length=config.max_length, row_multiple=row_multiple,
      start_step=start_step, row_length_step=config_lib.later_key(config, "row_length_step"))


def program_batches(runs: Sequence[Run], epoch: int, *, row_multiple: int, start_step: int = 0
                    ) -> Iterator[tuple[list[batching.Batch], batching.Batch]]:
  """Each step of ``epoch`` from ``start_step`` on: the batch of every run, and the batch the
  program takes. One run: its batch (``epoch_batches``'s). Several (seeds trained as one
  program): their batches packed at one row length, the one of the fewest slots once
  stacked, then stacked (``batching.train_batches_together``, ``stack_batches``)."""
  config = runs[0].config
  for batches in batching.train_batches_together(
      [run.train_data for run in runs], [run.config.seed for run in runs], config.batch_size,
      epoch=epoch, layout=config.layout, max_length=config.max_length,
      row_multiple=row_multiple, start_step=start_step,
      row_length_step=config_lib.later_key(config, "row_length_step")):
    yield batches, (batching.stack_batches(batches, row_multiple) if len(runs) > 1
                    else batches[0])


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


def best_index(evals: list[dict[str, Any]]) -> int:
  """The index of the highest dev score (the earliest of equal ones)."""
  return max(range(len(evals)), key=lambda i: (evals[i]["score"], -i))


def steps_key(run: Run, mesh_shape: tuple[int, ...], diagnostics: bool) -> str:
  """Everything that determines the computation of a run's jitted steps: the config without
  its seed (which enters the step as data: ``TrainState.rng``, as the model's constants do)
  and operational keys, the mesh and its sharding threshold, and whether the step computes
  diagnostics. Runs with equal keys can share their jitted (compiled) steps, and train
  together."""
  identity = config_lib.run_identity(run.config)
  identity.pop("seed")
  return json.dumps([identity, mesh_shape, run.config.fsdp_min_size, diagnostics],
                    sort_keys=True)


# -- One seed's run directory while it trains. ---------------------------------------------

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

  ``meta`` is the loop metadata of the checkpoint it resumes from (empty when it starts).
  """

  def __init__(self, run: Run, start_step: int, meta: dict[str, Any], names: dict,
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
    self.best: Any = None  # the best evaluation's parameters (device), with keep_best
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
    """A step's metrics (device arrays); written at the next ``flush``."""
    self.seen += examples
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

  def evaluation(self, result: dict[str, Any], params: Callable[[], Any]) -> None:
    """Records an evaluation; ``params()`` gives the seed's parameters (device), kept when
    the evaluation is the best so far and ``keep_best`` is set."""
    self.evals.append(result)
    self.metrics.write(result, "eval")
    log(f"{self.run.workdir}: step {result['step']} (epoch {result['epoch']:.2f}): dev "
        f"{self.run.task.metric} {result['score']:.2f}, loss {result['loss']:.4f}")
    if self.run.config.keep_best and best_index(self.evals) == len(self.evals) - 1:
      self.best = jax.tree.map(jnp.copy, params())

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

  def finish(self, skipped: int, steps: int) -> dict[str, Any]:
    """Writes and returns ``results.json``."""
    self.flush()
    self.grad_norms.save()
    self.metrics.close()
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


def log(message: str) -> None:
  if is_main_process():
    tqdm.write(message, file=sys.stderr)


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
      "config": config_lib.run_identity(config),
  }


# -- The program: what the seeds share. ----------------------------------------------------

class Stages:
  """The stages of the runs (one for plain fine-tuning, one per GU iteration) and, per stage,
  its optimizer, state layout and jitted train step, shared through ``steps_cache``."""

  def __init__(self, runs: Sequence[Run], mesh: jax.sharding.Mesh, key: str,
               steps_cache: dict[Any, Any], *, diagnostics: bool | None = None):
    first = runs[0]
    self.config, self.mesh, self.key, self.cache = first.config, mesh, key, steps_cache
    # Whether the train step computes per-tensor gradient norms; None: as the config says.
    # ``key`` (``steps_key``) says what the config says, so an override wants a
    # ``steps_cache`` of its own.
    self.diagnostics = (first.config.diagnostics_every > 0 if diagnostics is None
                        else diagnostics)
    self.first, self.stacked = first, len(runs) > 1
    self.all = unfreezing.stages(first.config, first.num_layers, first.steps_per_epoch)
    self.mode = first.config.unfreezing.mode
    self._setups: dict[int, tuple[optax.GradientTransformation, Any]] = {}

  def at(self, step: int) -> unfreezing.Stage:
    return unfreezing.stage_at(self.all, step)

  def setup(self, stage: unfreezing.Stage) -> tuple[optax.GradientTransformation, Any]:
    """The stage's optimizer and the layout (abstract state) of one seed's state."""
    if stage.index not in self._setups:
      optimizer = unfreezing.stage_optimizer(self.config.optimizer, stage, self.first.params)
      self._setups[stage.index] = optimizer, step_lib.abstract_state(
          self.first.params, optimizer, self.config.seed, self.mesh, self.config.fsdp_min_size)
    return self._setups[stage.index]

  def shardings(self, stage: unfreezing.Stage) -> Any:
    """The shardings of the program's state (seed-stacked when it trains several seeds)."""
    shardings = step_lib.shardings_of(self.setup(stage)[1])
    return step_lib.stacked(shardings) if self.stacked else shardings

  def train_step(self, stage: unfreezing.Stage) -> Callable:
    cache_key = (self.key, stage.index, "train")
    if cache_key not in self.cache:
      self.cache[cache_key] = step_lib.jit_train_step(
          unfreezing.stage_apply(self.first.apply, stage), self.setup(stage)[0], self.mesh,
          self.shardings(stage), diagnostics=self.diagnostics, seeds=self.stacked)
    return self.cache[cache_key]

  def eval_step(self) -> Callable:
    cache_key = (self.key, "eval")
    if cache_key not in self.cache:
      self.cache[cache_key] = step_lib.jit_eval_step(
          self.first.apply, self.mesh, self.shardings(self.all[0]).params, seeds=self.stacked)
    return self.cache[cache_key]

  def enter(self, stage: unfreezing.Stage, state: Any, pretrained: Any) -> Any:
    """The state at the start of GU iteration ``stage`` (``unfreezing.next_state``), laid
    out for it; ``pretrained`` are the seeds' initial parameters (stacked with S > 1)."""
    optimizer = self.setup(stage)[0]
    transition = functools.partial(unfreezing.next_state, self.mode, optimizer=optimizer)
    if self.stacked:
      transition = jax.vmap(transition)
    return jax.jit(transition, out_shardings=self.shardings(stage))(state, pretrained)


@dataclasses.dataclass(frozen=True)
class Program:
  """One seed's compiled pieces at the first stage of its run, as ``train_seeds`` builds them,
  for code that drives the step by hand (the benchmarks, profiles)."""
  run: Run
  mesh: jax.sharding.Mesh
  optimizer: optax.GradientTransformation
  abstract: Any  # the state's layout (``step.abstract_state``)
  constants: Any  # on the mesh
  train_step: Callable  # (state, batch, constants) -> (state, metrics); the state is donated
  eval_step: Callable  # (params, constants, batch) -> logits

  def fresh_state(self) -> Any:
    """The state at step 0 (the pretrained parameters), laid out on the mesh."""
    return step_lib.init_state(self.run.params, self.optimizer, self.run.config.seed,
                               self.abstract)

  def batches(self, count: int, *, layout: str | None = None) -> list[dict]:
    """The first ``count`` batches of the run's epoch 0 (in ``layout``, default the
    config's), on the mesh."""
    return [step_lib.put_batch(batch, self.mesh) for batch in itertools.islice(
        epoch_batches(self.run, 0, row_multiple=self.run.num_devices, layout=layout), count)]


def first_stage_program(run: Run, *, diagnostics: bool = False) -> Program:
  """``run``'s train and eval steps at its first stage (its only one without gradual
  unfreezing), built by the loop's own ``Stages`` for one seed: the mesh, optimizer, state
  layout and program ``train.py`` runs. ``diagnostics``: the step also computes per-tensor
  gradient norms, as ``train.py``'s does when ``config.diagnostics_every`` > 0; off by
  default, as in a comparison with a loop that computes none."""
  mesh, _ = _mesh([run], seeds_axis=1)
  stages = Stages([run], mesh, "", {}, diagnostics=diagnostics)
  stage = stages.all[0]
  optimizer, abstract = stages.setup(stage)
  return Program(
      run=run, mesh=mesh, optimizer=optimizer, abstract=abstract,
      constants=step_lib.put_constants(run.constants, mesh, run.config.fsdp_min_size),
      train_step=stages.train_step(stage), eval_step=stages.eval_step())


def check_together(runs: Sequence[Run]) -> None:
  """Raises ConfigError unless ``runs`` can train as one program: one config but for the
  seed, distinct run directories, one process when there are several."""
  if len(runs) > 1 and jax.process_count() != 1:
    raise ConfigError("training seeds together needs one process; train them one after "
                      "another on several hosts")
  first = runs[0]
  key = steps_key(first, (), False)
  for run in runs[1:]:
    if steps_key(run, (), False) != key:
      raise ConfigError(f"seed {run.config.seed} differs from seed {first.config.seed} in "
                        "more than its seed")
  workdirs = [run.workdir.resolve() for run in runs]
  if len(set(workdirs)) != len(workdirs):
    raise ConfigError("two runs of one program share a run directory")


def _mesh(runs: Sequence[Run], seeds_axis: int) -> tuple[jax.sharding.Mesh, tuple[int, ...]]:
  config = runs[0].config
  if len(runs) % seeds_axis:
    raise ConfigError(f"{len(runs)} seeds do not split over a seeds axis of {seeds_axis}")
  data, fsdp = config_lib.mesh_shape(config, runs[0].num_devices // seeds_axis)
  config_lib.check_devices(config, runs[0].num_devices // seeds_axis)
  return step_lib.make_mesh(data, fsdp, seeds=seeds_axis), (seeds_axis, data, fsdp)


def _restore(run: Run, checkpoints: checkpoint_lib.Checkpointer, step: int, abstract: Any,
             with_previous: bool) -> tuple[Any, dict[str, Any], Any, Any]:
  """``(state, meta, best, previous)`` of ``run``'s checkpoint of ``step``."""
  meta = checkpoints.read_meta(step)
  abstract_best = abstract.params if meta.get("best_index") is not None else None
  state, best = checkpoints.restore(step, abstract, abstract_best)
  previous = checkpoints.restore_previous(step, abstract.params) if with_previous else None
  log(f"resumed from {checkpoints.path(step)}")
  return state, meta, best, previous


def start_step(workdir: Path, config: ml_collections.ConfigDict) -> int:
  """The step the run of ``config`` in ``workdir`` starts (or resumes) at:
  ``config.resume_step``, else its latest checkpoint, else 0. Reads the folder only."""
  if config.resume_step is not None:
    return config.resume_step
  steps = checkpoint_lib.saved_steps(Path(workdir) / files.CHECKPOINTS_DIR)
  return steps[-1] if steps else 0


# -- Training. -----------------------------------------------------------------------------

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
  check_together(runs)
  first, config = runs[0], runs[0].config
  mesh, mesh_shape = _mesh(runs, seeds_axis)
  with contextlib.ExitStack() as held:
    held.enter_context(preemption.deferred())  # a signal stops at a step boundary
    # The main process writes the run directories (the others write only their checkpoint
    # shards), so it alone holds their locks.
    if is_main_process():
      for run in runs:
        try:
          run.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # what check_run_dir's access check cannot foresee: /proc, a
          raise ConfigError(  # full disk, a read-only mount seen only at the write
              f"cannot make the run directory {run.workdir}: {e.strerror}") from None
        held.enter_context(files.locked(run.workdir))
        check_run_dir(run.workdir, run.config)  # again: another process may have been first
        if not (run.workdir / files.CONFIG_FILE).exists():
          with files.writing(run.workdir / files.CONFIG_FILE):
            files.write_json(run.workdir / files.CONFIG_FILE,
                             config_lib.run_identity(run.config))
    starts = {start_step(run.workdir, run.config) for run in runs}
    if len(starts) > 1:
      raise ConfigError(f"the seeds {[r.config.seed for r in runs]} resume from different "
                        f"steps {sorted(starts)}; train them one at a time")
    step = starts.pop()
    key = steps_key(first, mesh_shape, config.diagnostics_every > 0)
    stages = Stages(runs, mesh, key, {} if steps_cache is None else steps_cache)
    return _train(runs, stages, step, mesh, mesh_shape, held)


def _train(runs: Sequence[Run], stages: Stages, step: int, mesh: jax.sharding.Mesh,
           mesh_shape: tuple[int, ...], held: contextlib.ExitStack) -> list[dict[str, Any]]:
  """The loop of ``train_seeds`` from ``step``; what it opens is closed by ``held``, however
  it ends."""
  count, first, config = len(runs), runs[0], runs[0].config
  stacked = count > 1
  seed_slice = (lambda tree, s: step_lib.unstack(tree, s)) if stacked else (
      lambda tree, s: tree)
  stage = stages.at(step)
  optimizer, abstract = stages.setup(stage)
  clock = Clock()
  session = {"start_step": step, "devices": first.num_devices, "mesh": list(mesh_shape),
             "seeds_in_program": count}
  names = step_lib.gradient_norm_names(abstract.params, abstract.opt_state)
  if config.unfreezing.mode != "none":  # the clip's components change between iterations
    names.pop("component_norms", None)

  # Each seed's state: its checkpoint, or the pretrained parameters at step 0.
  recorders, states, previous = [], [], []
  restore_abstract = abstract if not stacked else step_lib.abstract_state(
      first.params, optimizer, config.seed, step_lib.make_mesh(1, 1, jax.devices()[:1]),
      config.fsdp_min_size)
  for run in runs:
    checkpoints = checkpoint_lib.Checkpointer(run.workdir / files.CHECKPOINTS_DIR,
                                              keep=config.keep_checkpoints)
    held.callback(_close_quietly, checkpoints.close)
    if step:
      state, meta, best, prior = _restore(run, checkpoints, step, restore_abstract,
                                          with_previous=stage.index > 0)
    else:
      state = step_lib.init_state(run.params, optimizer, run.config.seed, restore_abstract)
      meta, best, prior = {}, None, None
    recorder = Recorder(run, step, meta, names, clock, session, checkpoints)
    recorder.best = best
    recorders.append(recorder)
    states.append(state)
    previous.append(prior)
  for recorder in recorders:
    recorder.begin()
    held.callback(_close_quietly, recorder.metrics.close)
  shardings = stages.shardings(stage)
  if stacked:
    state = step_lib.put_tree(step_lib.stack(jax.device_get(states)), shardings)
    constants = step_lib.put_tree(step_lib.stack([r.constants for r in runs]),
                                  step_lib.stacked(step_lib.tree_shardings(
                                      mesh, first.constants, config.fsdp_min_size)))
    pretrained = step_lib.stack([r.params for r in runs])
    previous = step_lib.stack(jax.device_get(previous)) if previous[0] is not None else None
  else:
    state, previous, pretrained = states[0], previous[0], first.params
    constants = step_lib.put_constants(first.constants, mesh, config.fsdp_min_size)

  train_step, eval_step = stages.train_step(stage), stages.eval_step()
  total_steps, steps_per_epoch = first.total_steps, first.steps_per_epoch
  when_eval = eval_steps(steps_per_epoch, first.num_epochs, config.evals_per_epoch)
  main = is_main_process()
  progress = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
                  desc=f"{count} seeds" if stacked else None,
                  disable=not (config.progress and main), file=sys.stderr)
  row_multiple = first.num_devices // mesh_shape[0]
  held.callback(progress.close)
  start = step

  def stop_if_asked(step: int) -> None:
    """At a step boundary: on a signal (``preemption``), saves every seed at ``step`` (when
    it trained since its last checkpoint) and raises ``Stopped``. The last step is not a
    boundary: finishing is cheaper than stopping."""
    if step == total_steps or not preemption.should_stop(step):
      return
    for s, recorder in enumerate(recorders):
      if step > start:
        recorder.save(step, seed_slice(state, s),
                      None if previous is None else seed_slice(previous, s))
      recorder.metrics.close()  # flushes the step records and TensorBoard events
    paths = [str(r.checkpoints.path(step)) for r in recorders] if step else []
    progress.close()
    raise preemption.Stopped(preemption.received(), (
        f"at step {step}: {'checkpoint' if len(paths) == 1 else 'checkpoints'} "
        f"{', '.join(paths)}; rerun the same command to resume") if paths else (
        "at step 0: nothing trained yet; rerun the same command to start"))

  stop_if_asked(step)
  while step < total_steps:
    if step == stage.end_step:  # a GU iteration ended here: the next one starts
      previous = jax.tree.map(jnp.copy, state.params)
      stage = stages.all[stage.index + 1]
      state = stages.enter(stage, state, pretrained)
      train_step = stages.train_step(stage)
      log(f"step {step}: GU iteration {stage.index} trains "
          f"{', '.join(stage.trained_layers(first.num_layers))}")
    epoch, epoch_step = divmod(step, steps_per_epoch)
    for batches, batch in program_batches(runs, epoch, row_multiple=row_multiple,
                                          start_step=epoch_step):
      state, step_metrics = train_step(state, step_lib.put_batch(batch, mesh, seeds=stacked),
                                       constants)
      step += 1
      norms = {k: step_metrics.pop(k) for k in diagnostics.GRADIENT_NORM_KEYS
               if k in step_metrics}
      for s, (recorder, seed_batch) in enumerate(zip(recorders, batches)):
        recorder.take(step, {**seed_slice(step_metrics, s), **seed_slice(norms, s)},
                      int(seed_batch["example_mask"].sum()))
      if step % config.log_every == 0:
        _show(progress, recorders, step_metrics, seed_slice)
      progress.update()
      if step in when_eval:
        with clock.evaluating():
          results = evaluate(eval_step, state.params, constants, runs, mesh)
        for s, (recorder, result) in enumerate(zip(recorders, results)):
          recorder.flush()
          recorder.evaluation({"step": step, "epoch": step / steps_per_epoch, **result},
                              functools.partial(seed_slice, state.params, s))
      if stages.mode != "none" and step == stage.end_step:  # always an epoch's end
        host = step_lib.host_copy(state.params)
        host_previous = None if previous is None else step_lib.host_copy(previous)
        for s, (recorder, run) in enumerate(zip(recorders, runs)):
          recorder.iterations.append(unfreezing.record(
              stage, first.num_layers, recorder.evals[-1], seed_slice(host, s), run.params,
              None if host_previous is None else seed_slice(host_previous, s)))
      if step in when_eval or (config.checkpoint_every and step % config.checkpoint_every == 0):
        for s, recorder in enumerate(recorders):
          recorder.save(step, seed_slice(state, s),
                        None if previous is None else seed_slice(previous, s))
      stop_if_asked(step)
  progress.close()
  skipped = np.asarray(jax.device_get(step_lib.skipped(state))).reshape(-1)
  return [recorder.finish(int(skipped[s]), step) for s, recorder in enumerate(recorders)]


def _close_quietly(close: Callable[[], None]) -> None:
  """``close()`` on the way out of a loop that failed or stopped: an error of its own (the
  full disk again) would hide the one that ended the loop."""
  with contextlib.suppress(Exception):
    close()


def _show(progress: tqdm, recorders: Sequence[Recorder], step_metrics: dict[str, Any],
          seed_slice: Callable) -> None:
  """Writes the pending step records and shows the first seed's loss in the progress bar."""
  for recorder in recorders:
    recorder.flush()
  first = recorders[0]
  examples_per_second = sum(r.seen for r in recorders) / max(first.clock.train_seconds, 1e-9)
  progress.set_postfix(loss=f"{np.mean(first.window):.4f}",
                       lr=f"{float(seed_slice(step_metrics, 0)['learning_rate']):.2e}",
                       ex_per_s=f"{examples_per_second:.1f}")
  for recorder in recorders:
    recorder.window.clear()


def evaluate(eval_step: Callable, params: Any, constants: Any, runs: Sequence[Run],
             mesh: jax.sharding.Mesh) -> list[dict[str, Any]]:
  """Every seed's dev score (x100), mean cross-entropy over every dev example, and layer
  drift against its initial parameters (``diagnostics.layer_drift``: the data of the
  paper's Figs. 2a, 4 and 5), each dev batch through all seeds at once. Every process must
  call it (``step.host_copy`` gathers parameters split across them)."""
  config, stacked = runs[0].config, len(runs) > 1
  row_multiple = runs[0].num_devices // mesh.shape[step_lib.SEEDS]
  logits, labels = [], []
  for batch in batching.eval_batches(runs[0].dev_data, config.eval_batch_size,
                                     layout=config.layout, max_length=config.max_length,
                                     row_multiple=row_multiple):
    real = batch["example_mask"] == 1
    out = np.asarray(eval_step(params, constants, step_lib.put_batch(batch, mesh)))
    logits.append(out[:, real] if stacked else out[None, real])
    labels.append(batch["labels"][real])
  logits, labels = np.concatenate(logits, axis=1), np.concatenate(labels)
  host = step_lib.host_copy(params)
  return [{"score": metrics.score(config.task, logits[s].argmax(-1), labels),
           "loss": mean_cross_entropy(logits[s], labels), "examples": int(len(labels)),
           "drift": diagnostics.layer_drift(step_lib.unstack(host, s) if stacked else host,
                                            run.params)}
          for s, run in enumerate(runs)]
