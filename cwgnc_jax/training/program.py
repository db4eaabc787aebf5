"""What the seeds of a program share: its mesh (``program_mesh``), its stages and their
optimizers and jitted steps (:class:`Stages`, cached by ``steps_key``), and one seed's
compiled pieces for code that drives the step by hand (:class:`Program`)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from typing import Any, Callable, Sequence

import jax
import optax

from cwgnc_jax import config as config_lib
from cwgnc_jax import identity, unfreezing
from cwgnc_jax.training import step as step_lib
from cwgnc_jax.training.run import Run, epoch_batches
from cwgnc_jax.training.seeds import Seeds

ConfigError = config_lib.ConfigError


def steps_key(run: Run, mesh_shape: tuple[int, ...], diagnostics: bool) -> str:
  """Everything that determines the computation of a run's jitted steps: the config without
  its seed (which enters the step as data: ``TrainState.rng``, as the model's constants do)
  and operational keys, the mesh and its sharding threshold, and whether the step computes
  diagnostics. Runs with equal keys can share their jitted (compiled) steps, and train
  together."""
  computed = identity.run_identity(run.config)
  computed.pop("seed")
  return json.dumps([computed, mesh_shape, run.config.fsdp_min_size, diagnostics],
                    sort_keys=True)


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
    self.first, self.seeds = first, Seeds(len(runs))
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
    return self.seeds.shardings(shardings)

  def train_step(self, stage: unfreezing.Stage) -> Callable:
    cache_key = (self.key, stage.index, "train")
    if cache_key not in self.cache:
      self.cache[cache_key] = step_lib.jit_train_step(
          unfreezing.stage_apply(self.first.apply, stage), self.setup(stage)[0], self.mesh,
          self.shardings(stage), diagnostics=self.diagnostics, seeds=self.seeds.stacked)
    return self.cache[cache_key]

  def eval_step(self) -> Callable:
    cache_key = (self.key, "eval")
    if cache_key not in self.cache:
      self.cache[cache_key] = step_lib.jit_eval_step(
          self.first.apply, self.mesh, self.shardings(self.all[0]).params,
          seeds=self.seeds.stacked)
    return self.cache[cache_key]

  def enter(self, stage: unfreezing.Stage, state: Any, pretrained: Any) -> Any:
    """The state at the start of GU iteration ``stage`` (``unfreezing.next_state``), laid
    out for it; ``pretrained`` are the seeds' initial parameters (stacked with S > 1)."""
    optimizer = self.setup(stage)[0]
    transition = self.seeds.each(
        functools.partial(unfreezing.next_state, self.mode, optimizer=optimizer))
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
  mesh, _ = program_mesh([run], seeds_axis=1)
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


def program_mesh(runs: Sequence[Run], seeds_axis: int
                 ) -> tuple[jax.sharding.Mesh, tuple[int, ...]]:
  """The program's mesh (``seeds`` x ``data`` x ``fsdp``) and its shape."""
  config = runs[0].config
  if len(runs) % seeds_axis:
    raise ConfigError(f"{len(runs)} seeds do not split over a seeds axis of {seeds_axis}")
  data, fsdp = config_lib.mesh_shape(config, runs[0].num_devices // seeds_axis)
  config_lib.check_devices(config, runs[0].num_devices // seeds_axis)
  return step_lib.make_mesh(data, fsdp, seeds=seeds_axis), (seeds_axis, data, fsdp)
