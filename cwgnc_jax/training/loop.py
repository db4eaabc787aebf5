"""The training loop: prepare a run (all input checks), train, evaluate, log, checkpoint.

``prepare(config, workdir)`` does every check that depends on user input -- the config, the
devices, the run directory, the GLUE data, the model -- and loads data and weights, before
anything is compiled or written. ``train(run)`` then trains for ``num_epochs`` epochs:

  * one jitted step per batch (``step.py``); a step with non-finite loss or gradients is
    skipped, counted and reported;
  * a dev evaluation ``evals_per_epoch`` times per epoch, always at each epoch's end; the
    result is the last evaluation (the final model) or, with ``keep_best``, the best one;
    each evaluation also records every layer's drift from the pretrained parameters
    (``drift_from_pretrained``);
  * every ``diagnostics_every`` steps, the gradient norm of every tensor (and what a CWGNC
    clip did), computed inside the step, to ``grad_norms.npz`` (``diagnostics.py``);
  * a checkpoint every ``checkpoint_every`` steps and after every evaluation; a run that
    finds checkpoints in its directory resumes from the latest (or ``resume_step``) and
    ends exactly as an uninterrupted run would;
  * under gradual unfreezing (``config.unfreezing``, ``unfreezing.py``) the run is a
    sequence of iterations, each with its own optimizer (frozen tensors masked out) and
    jitted step; at each iteration's end the dev evaluation and the layer drift from the
    pretrained and the previous iteration's parameters go into ``results.json``.

The run directory holds ``config.json`` (what the run computes: a run directory is never
resumed with another config), ``metrics.jsonl`` (one line per step, one per evaluation),
TensorBoard event files in ``tb/``, ``checkpoints/``, ``grad_norms.npz`` and, at the end,
``results.json``.
``results.json`` depends only on the config and the seed, except its ``timings`` key (the
seconds spent, summed over the sessions of an interrupted run up to its last checkpoint, and
the sessions).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from cwgnc_jax import config as config_lib
from cwgnc_jax import diagnostics, metrics, models, unfreezing
from cwgnc_jax.models import mixout
from cwgnc_jax.data import batching, glue
from cwgnc_jax.training import checkpoint as checkpoint_lib
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


CONFIG_FILE = "config.json"


def check_run_dir(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError if ``workdir`` holds anything but a run of this config."""
  stored_path = workdir / CONFIG_FILE
  if stored_path.is_file():
    stored = json.loads(stored_path.read_text())
    current = _normalized(config_lib.run_identity(config))
    for group, (key, off) in config_lib.LATER_GROUPS.items():
      if group not in stored and current.get(group, {}).get(key) == off:
        del current[group]
    stored, current = _flat(stored), _flat(current)
    for key, value in config_lib.LATER_KEYS.items():
      stored.setdefault(key, value)
    if not current.get("optimizer.bias_correction"):  # BertAdam: either form computes it
      stored.pop("optimizer.adam_form", None)
      current.pop("optimizer.adam_form", None)
    differ = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
    if differ:
      raise ConfigError(
          f"run directory {workdir} holds a run of another config (differs in "
          f"{', '.join(differ[:6])}{', ...' if len(differ) > 6 else ''}); pass another "
          "--workdir or delete that directory")
  elif workdir.is_dir() and any(workdir.iterdir()):
    raise ConfigError(f"run directory {workdir} is not empty and holds no {CONFIG_FILE}; "
                      "pass another --workdir")


def head(data: glue.TokenizedSplit, n: int) -> glue.TokenizedSplit:
  """The first ``n`` examples of a split."""
  n = min(n, len(data))
  end = data.offsets[n]
  return glue.TokenizedSplit(data.input_ids[:end], data.token_type_ids[:end],
                             data.offsets[:n + 1], data.labels[:n])


def load_model(config: ml_collections.ConfigDict, num_labels: int) -> nnx.Module:
  """The run's pretrained model: with ``config.mixout.p > 0`` every dense layer mixes toward
  its loaded weight and every dropout rate is 0 (``models/mixout.py``)."""
  dtype = jnp.dtype(config.dtype)
  if config.mixout.p > 0:
    return mixout.from_pretrained(config.model, num_labels, p=config.mixout.p,
                                  gradient=config.mixout.gradient, seed=config.seed,
                                  dtype=dtype)
  return models.from_pretrained(config.model, num_labels, seed=config.seed, dtype=dtype)


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


# -- Logs. ---------------------------------------------------------------------------------

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
    self.path = workdir / "metrics.jsonl"
    kept = []
    if self.path.is_file():
      for line in self.path.read_text().splitlines():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
          continue
        if record["step"] <= start_step:
          kept.append(line + "\n")
    self.path.write_text("".join(kept))
    self.file = self.path.open("a")
    self.tb = SummaryWriter(str(workdir / "tb"), purge_step=start_step + 1 if start_step else None)

  def write(self, record: dict[str, Any], prefix: str) -> None:
    if not self.enabled:
      return
    self.file.write(json.dumps(record, sort_keys=True) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])

  def flush(self) -> None:
    if self.enabled:
      self.file.flush()
      self.tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.file.close()
      self.tb.close()


def write_json(path: Path, values: Any) -> None:
  """Writes ``values`` to ``path`` atomically (a temporary file renamed into place)."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(values, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


# -- Evaluation. ---------------------------------------------------------------------------

def evaluate(eval_step: Callable, params: Any, constants: Any, run: Run,
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Dev score (x100) and mean cross-entropy over every dev example."""
  config = run.config
  logits, labels = [], []
  for batch in batching.eval_batches(run.dev_data, config.eval_batch_size, layout=config.layout,
                                     max_length=config.max_length, row_multiple=run.num_devices):
    real = batch["example_mask"] == 1
    logits.append(np.asarray(eval_step(params, constants, step_lib.put_batch(batch, mesh)))[real])
    labels.append(batch["labels"][real])
  logits, labels = np.concatenate(logits), np.concatenate(labels)
  return {"score": metrics.score(config.task, logits.argmax(-1), labels),
          "loss": mean_cross_entropy(logits, labels), "examples": int(len(labels))}


def drift_from_pretrained(params: Any, run: Run) -> dict[str, dict[str, float]]:
  """Per layer, the maximum RMS difference and minimum cosine similarity of its tensors
  against the run's initial parameters (pretrained; the fresh classifier at its seed's
  initialisation): ``diagnostics.layer_drift``, the data of the paper's Figs. 2a, 4 and 5.
  Every process must call it (``step.host_copy`` gathers parameters split across them)."""
  return diagnostics.layer_drift(step_lib.host_copy(params), run.params)


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


# -- Training. -----------------------------------------------------------------------------

def _start(run: Run, checkpoints: checkpoint_lib.Checkpointer,
           setup_at: Callable[[int], tuple[optax.GradientTransformation, Any]],
           log: Callable[[str], None]) -> tuple[Any, dict[str, Any], Any]:
  """The state, loop metadata and best parameters to continue from: the latest checkpoint
  (or ``resume_step``'s), else the pretrained parameters at step 0. ``setup_at(step)`` is
  the optimizer and abstract state of the stage that trained up to ``step``."""
  steps = checkpoints.steps()
  resume_step = run.config.resume_step
  if resume_step is None and not steps:
    optimizer, abstract = setup_at(0)
    state = step_lib.init_state(run.params, optimizer, run.config.seed, abstract)
    return state, {"step": 0, "evals": [], "best_index": None}, None
  if resume_step is not None and resume_step not in steps:
    raise ConfigError(f"config.resume_step={resume_step} has no checkpoint in "
                      f"{checkpoints.directory}; available: {steps}")
  step = steps[-1] if resume_step is None else resume_step
  meta = checkpoints.read_meta(step)
  _, abstract = setup_at(step)
  abstract_best = abstract.params if meta.get("best_index") is not None else None
  restored, best = checkpoints.restore(step, abstract, abstract_best)
  later = checkpoints.delete_after(step)
  if later:
    log(f"resuming from step {step}: deleted the later checkpoints {later}")
  log(f"resumed from {checkpoints.path(step)}")
  return restored, meta, best


def steps_key(run: Run, mesh_shape: tuple[int, int], diagnostics: bool) -> str:
  """Everything that determines the computation of a run's jitted steps: the config without
  its seed (which enters the step as data: ``TrainState.rng``, as the model's constants do)
  and operational keys, the mesh and its sharding threshold, and whether the step computes
  diagnostics. Runs with equal keys can share their jitted (compiled) steps."""
  identity = config_lib.run_identity(run.config)
  identity.pop("seed")
  return json.dumps([identity, mesh_shape, run.config.fsdp_min_size, diagnostics],
                    sort_keys=True)


def train(run: Run, steps_cache: dict[Any, Any] | None = None) -> dict[str, Any]:
  """Trains, evaluates and checkpoints ``run``; returns (and writes) its results.

  ``steps_cache``: a dict in which the jitted train and eval steps are kept by ``steps_key``
  (the train step also by GU iteration), so several runs of one process (a study's seeds)
  compile each batch shape once.
  """
  config, workdir = run.config, run.workdir
  main = is_main_process()
  log = lambda message: tqdm.write(message, file=sys.stderr) if main else None
  if main:
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / CONFIG_FILE).exists():
      write_json(workdir / CONFIG_FILE, config_lib.run_identity(config))

  data_size, fsdp_size = config_lib.mesh_shape(config, run.num_devices)
  mesh = step_lib.make_mesh(data_size, fsdp_size)
  total_steps, steps_per_epoch = run.total_steps, run.steps_per_epoch
  # One stage for plain fine-tuning; one per iteration under gradual unfreezing.
  stages = unfreezing.stages(config, run.num_layers, steps_per_epoch)
  gradual = config.unfreezing.mode != "none"
  setups: dict[int, tuple[optax.GradientTransformation, Any]] = {}

  def setup(stage: unfreezing.Stage) -> tuple[optax.GradientTransformation, Any]:
    """The stage's optimizer and the layout of the state it trains."""
    if stage.index not in setups:
      optimizer = unfreezing.stage_optimizer(config.optimizer, stage)
      setups[stage.index] = optimizer, step_lib.abstract_state(
          run.params, optimizer, config.seed, mesh, config.fsdp_min_size)
    return setups[stage.index]

  checkpoints = checkpoint_lib.Checkpointer(workdir / "checkpoints",
                                            keep=config.keep_checkpoints)
  state, meta, best_params = _start(
      run, checkpoints, lambda at: setup(unfreezing.stage_at(stages, at)), log)
  step = int(meta["step"])
  stage = unfreezing.stage_at(stages, step)
  optimizer, abstract = setup(stage)
  shardings = step_lib.shardings_of(abstract)
  # GU: each finished iteration's record; the parameters at the end of the previous one
  # (None: the pretrained ones); the updates applied before this one (its schedule's origin).
  iterations: list[dict[str, Any]] = meta.get("iterations", [])
  previous = checkpoints.restore_previous(step, abstract.params) if stage.index else None
  applied_before = meta.get("applied_before_stage", 0)
  evals: list[dict[str, Any]] = meta["evals"]
  sessions = meta.get("sessions", []) + [{"start_step": step, "devices": run.num_devices,
                                          "mesh": [data_size, fsdp_size]}]
  # Seconds and examples of the earlier sessions, up to the checkpoint resumed from.
  before = meta.get("clock", {"train_seconds": 0.0, "eval_seconds": 0.0, "train_examples": 0})

  with_diagnostics = config.diagnostics_every > 0
  key = steps_key(run, (data_size, fsdp_size), with_diagnostics)
  steps_cache = {} if steps_cache is None else steps_cache

  def stage_train_step() -> Callable:
    """The jitted train step of the current stage (shared through ``steps_cache``)."""
    stage_key = (key, stage.index, applied_before)
    if stage_key not in steps_cache:
      steps_cache[stage_key] = step_lib.jit_train_step(
          unfreezing.stage_apply(run.apply, stage), optimizer, mesh, shardings,
          unfreezing.stage_schedule(config.optimizer, stage, applied_before),
          diagnostics=with_diagnostics)
    return steps_cache[stage_key]

  train_step = stage_train_step()
  if (key, "eval") not in steps_cache:
    steps_cache[key, "eval"] = step_lib.jit_eval_step(run.apply, mesh, shardings.params)
  eval_step = steps_cache[key, "eval"]
  constants = step_lib.put_constants(run.constants, mesh, config.fsdp_min_size)
  names = step_lib.gradient_norm_names(abstract.params, abstract.opt_state)
  if gradual:  # the clip's components change from iteration to iteration: tensors only
    names.pop("component_norms", None)
  grad_norms = diagnostics.GradientNormLog(workdir, names, config.diagnostics_every, step,
                                           main)
  when_eval = eval_steps(steps_per_epoch, run.num_epochs, config.evals_per_epoch)
  metrics_log = MetricsLog(workdir, step, main)
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  window: list[float] = []
  eval_seconds = 0.0

  def clock() -> dict[str, float]:
    """Seconds spent training (compiling and checkpointing included) and evaluating, and
    examples trained on, over all sessions."""
    train_seconds = time.perf_counter() - t_train - eval_seconds
    return {"train_seconds": before["train_seconds"] + train_seconds,
            "eval_seconds": before["eval_seconds"] + eval_seconds,
            "train_examples": before["train_examples"] + seen}

  def flush_pending():
    for at, values in jax.device_get(pending):
      record = {"step": at, "loss": float(values["loss"]),
                "grad_norm": float(values["grad_norm"]),
                "learning_rate": float(values["learning_rate"]),
                "skipped": not bool(values["finite"])}
      metrics_log.write(record, "train")
      window.append(record["loss"])
      if record["skipped"]:
        log(f"step {at}: loss or gradients not finite; update skipped")
    pending.clear()
    metrics_log.flush()

  def save():
    flush_pending()
    meta = {"step": step, "epoch": step // steps_per_epoch,
            "epoch_step": step % steps_per_epoch, "evals": evals,
            "best_index": best_index(evals) if config.keep_best and evals else None,
            "sessions": sessions, "clock": clock(), "iterations": iterations,
            "applied_before_stage": applied_before}
    grad_norms.save()  # first: rows after the checkpoint are dropped on resume, missing ones not
    checkpoints.save(step, state, meta, best_params, previous)

  progress = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
                  disable=not (config.progress and main), file=sys.stderr)
  t_train, seen = time.perf_counter(), 0
  while step < total_steps:
    if step == stage.end_step:  # a GU iteration ended here: the next one starts
      previous = jax.tree.map(jnp.copy, state.params)
      stage = stages[stage.index + 1]
      optimizer, abstract = setup(stage)
      shardings = step_lib.shardings_of(abstract)
      state = unfreezing.next_state(config.unfreezing.mode, state, run.params, optimizer,
                                    abstract, config.seed)
      applied_before = step - int(state.skipped)
      train_step = stage_train_step()
      log(f"step {step}: GU iteration {stage.index} trains "
          f"{', '.join(stage.trained_layers(run.num_layers))}")
    epoch, epoch_step = divmod(step, steps_per_epoch)
    for batch in batching.train_batches(
        run.train_data, config.batch_size, seed=config.seed, epoch=epoch, layout=config.layout,
        max_length=config.max_length, row_multiple=run.num_devices, start_step=epoch_step):
      state, step_metrics = train_step(state, step_lib.put_batch(batch, mesh), constants)
      step += 1
      seen += int(batch["example_mask"].sum())
      grad_norms.take(step, step_metrics)
      pending.append((step, step_metrics))
      if step % config.log_every == 0:
        flush_pending()
        progress.set_postfix(loss=f"{np.mean(window):.4f}",
                             lr=f"{float(step_metrics['learning_rate']):.2e}",
                             ex_per_s=f"{seen / (time.perf_counter() - t_train):.1f}")
        window.clear()
      progress.update()
      if step in when_eval:
        flush_pending()
        t_eval = time.perf_counter()
        result = {"step": step, "epoch": step / steps_per_epoch,
                  **evaluate(eval_step, state.params, constants, run, mesh),
                  "drift": drift_from_pretrained(state.params, run)}
        eval_seconds += time.perf_counter() - t_eval
        evals.append(result)
        metrics_log.write(result, "eval")
        log(f"step {step} (epoch {result['epoch']:.2f}): dev {run.task.metric} "
            f"{result['score']:.2f}, loss {result['loss']:.4f}")
        if config.keep_best and best_index(evals) == len(evals) - 1:
          best_params = jax.tree.map(jnp.copy, state.params)
      if gradual and step == stage.end_step:  # always an epoch's end: just evaluated
        iterations.append(unfreezing.record(stage, run.num_layers, evals[-1], state.params,
                                            run.params, previous))
      if step in when_eval or (config.checkpoint_every and step % config.checkpoint_every == 0):
        save()
  flush_pending()
  grad_norms.save()
  progress.close()
  metrics_log.close()
  checkpoints.close()

  results = make_results(run, evals, int(state.skipped), step)
  if gradual:
    results["unfreezing"] = {"mode": config.unfreezing.mode, "iterations": iterations}
  totals = clock()
  results["timings"] = {**totals, "sessions": sessions,
                        "train_examples_per_second":
                            totals["train_examples"] / max(totals["train_seconds"], 1e-9)}
  if main:
    write_json(workdir / "results.json", results)
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
      "config": config_lib.run_identity(config),
  }
