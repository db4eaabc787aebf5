"""A run ready to train: ``prepare(config, workdir)`` does every check that depends on user
input -- the config, the devices, the run directory, the GLUE data, the model -- and loads
data and weights (:class:`Run`), before anything is compiled or written; the run's training
batches as the loop draws them (``epoch_batches``, ``program_batches``); the process setup
that comes before (``maybe_initialize_distributed``, ``use_compilation_cache``)."""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from cwgnc_jax import config as config_lib
from cwgnc_jax import identity, metrics, models, tasks, unfreezing
from cwgnc_jax.models import mixout
from cwgnc_jax.data import batching, glue
from cwgnc_jax.training import rundir
from cwgnc_jax.training.seeds import Seeds

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


@dataclasses.dataclass
class Run:
  """A run ready to train: validated config, data and pretrained parameters in host memory."""
  config: ml_collections.ConfigDict
  workdir: Path
  task: tasks.Task
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
  rundir.check_run_dir(workdir, config)
  rundir.check_resume_step(workdir, config)
  task = tasks.get_task(config.task)
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
      start_step=start_step, row_length_step=identity.later_key(config, "row_length_step"))


def program_batches(runs: Sequence[Run], epoch: int, *, row_multiple: int, start_step: int = 0
                    ) -> Iterator[tuple[list[batching.Batch], batching.Batch]]:
  """Each step of ``epoch`` from ``start_step`` on: the batch of every run, and the batch the
  program takes. One run: its batch (``epoch_batches``'s). Several (seeds trained as one
  program): their batches packed at one row length, the one of the fewest slots once
  stacked, then stacked (``batching.train_batches_together``, ``stack_batches``)."""
  config, seeds = runs[0].config, Seeds(len(runs))
  for batches in batching.train_batches_together(
      [run.train_data for run in runs], [run.config.seed for run in runs], config.batch_size,
      epoch=epoch, layout=config.layout, max_length=config.max_length,
      row_multiple=row_multiple, start_step=start_step,
      row_length_step=identity.later_key(config, "row_length_step")):
    yield batches, seeds.batch(batches, row_multiple)


def run_batches(runs: Sequence[Run], start_step: int, *, row_multiple: int
                ) -> Iterator[tuple[list[batching.Batch], batching.Batch]]:
  """``program_batches`` of the rest of the runs, one item a step from ``start_step`` on,
  over every epoch left."""
  epoch, epoch_step = divmod(start_step, runs[0].steps_per_epoch)
  return itertools.chain.from_iterable(
      program_batches(runs, e, row_multiple=row_multiple,
                      start_step=epoch_step if e == epoch else 0)
      for e in range(epoch, runs[0].num_epochs))
