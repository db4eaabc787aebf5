"""The trees of a program that trains S seeds of one config in lockstep: one seed's trees as
they are, or S > 1 seeds' stacked along a leading axis, over which the train and eval steps
are vmapped (``step.py``'s ``seeds``). :class:`Seeds` is the one place that knows which."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cwgnc_jax.data import batching
from cwgnc_jax.training import step as step_lib


class Seeds:
  """A program's S seeds: how its trees hold them and, once ``load`` has run, its trees
  while it trains: the state, the previous GU iteration's parameters (None before the
  second), the pretrained parameters and the model's constants."""

  def __init__(self, count: int):
    self.count, self.stacked = count, count > 1
    self.state: Any = None
    self.previous: Any = None
    self.pretrained: Any = None
    self.constants: Any = None

  # -- How a tree holds the seeds. --

  def slice(self, tree: Any, s: int) -> Any:
    """Seed ``s``'s part of a program's tree."""
    return step_lib.unstack(tree, s) if self.stacked else tree

  @property
  def label(self) -> str | None:
    """The progress bar's name of the program: None for one seed."""
    return f"{self.count} seeds" if self.stacked else None

  def leading(self, array: np.ndarray) -> np.ndarray:
    """A program's output with a leading seed axis, also where it has one seed."""
    return array if self.stacked else array[None]

  def shardings(self, shardings: Any) -> Any:
    """The program's shardings of a tree that one seed lays out as ``shardings``."""
    return step_lib.stacked(shardings) if self.stacked else shardings

  def each(self, fn: Callable) -> Callable:
    """``fn`` of one seed's trees, made a function of the program's (vmapped over stacked
    seeds)."""
    return jax.vmap(fn) if self.stacked else fn

  def batch(self, batches: Sequence[batching.Batch], row_multiple: int) -> batching.Batch:
    """The program's batch of a step from the seeds' (packed at one row length)."""
    return batching.stack_batches(batches, row_multiple) if self.stacked else batches[0]

  def layout(self, abstract: Any, params: Any, optimizer: Any, seed: int,
             fsdp_min_size: int) -> Any:
    """The layout each seed's state is restored or initialized in, given the program's
    (``abstract``): its own, or, for stacking, one device's."""
    if not self.stacked:
      return abstract
    return step_lib.abstract_state(params, optimizer, seed,
                                   step_lib.make_mesh(1, 1, jax.devices()[:1]), fsdp_min_size)

  # -- The trees while training. --

  def load(self, runs: Sequence[Any], states: list[Any], previous: list[Any],
           shardings: Any, mesh: jax.sharding.Mesh) -> None:
    """Takes the seeds' states and previous parameters (as ``layout`` gave them) and the
    runs' pretrained parameters and constants; ``shardings``: the program state's."""
    first = runs[0]
    constants = step_lib.tree_shardings(mesh, first.constants, first.config.fsdp_min_size)
    if self.stacked:
      self.state = step_lib.put_tree(step_lib.stack(jax.device_get(states)), shardings)
      self.previous = (None if previous[0] is None
                       else step_lib.stack(jax.device_get(previous)))
      self.pretrained = step_lib.stack([run.params for run in runs])
      self.constants = step_lib.put_tree(step_lib.stack([run.constants for run in runs]),
                                         step_lib.stacked(constants))
    else:
      self.state, self.previous, self.pretrained = states[0], previous[0], first.params
      self.constants = step_lib.put_tree(first.constants, constants)

  def step(self, train_step: Callable, batch: batching.Batch, mesh: jax.sharding.Mesh
           ) -> dict[str, Any]:
    """Trains every seed on the program's ``batch``; returns the step's metrics."""
    self.state, step_metrics = train_step(
        self.state, step_lib.put_batch(batch, mesh, seeds=self.stacked), self.constants)
    return step_metrics

  def enter(self, transition: Callable[[Any, Any], Any]) -> None:
    """Starts a GU iteration: the parameters become the previous ones, and the state
    ``transition(state, pretrained)`` (``Stages.enter``)."""
    self.previous = jax.tree.map(jnp.copy, self.state.params)
    self.state = transition(self.state, self.pretrained)

  def of_seed(self, s: int) -> tuple[Any, Any]:
    """Seed ``s``'s state and previous parameters (None before the second iteration)."""
    return (self.slice(self.state, s),
            None if self.previous is None else self.slice(self.previous, s))

  def params(self, s: int) -> Any:
    """Seed ``s``'s parameters."""
    return self.slice(self.state.params, s)

  def host_params(self) -> tuple[Any, Any]:
    """The parameters and the previous ones (or None), whole on this host."""
    return (step_lib.host_copy(self.state.params),
            None if self.previous is None else step_lib.host_copy(self.previous))

  def skipped(self) -> list[int]:
    """Every seed's count of skipped (non-finite) steps."""
    return [int(n) for n in
            np.asarray(jax.device_get(step_lib.skipped(self.state))).reshape(-1)]
