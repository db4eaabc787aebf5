"""Gradual unfreezing (GU) and GU restart: the paper's section 2 and Algorithm 1 (SPEC section 4).

The layer stack, bottom to top, is the embeddings and encoder layers 0 .. L-1. The head
(pooler and the fresh classifier: ``paths.layer_of(path) == 'head'``) is new, so it trains
from the first iteration. Iteration ``k = 0, 1, ..., T-1`` trains the head and the top
``k + 1`` layers of the stack::

  k < L:   encoder layers L-1-k .. L-1
  k = L:   everything: the embeddings count as the layer below layer 0, unfrozen last

``T`` (``config.unfreezing.iterations``) defaults to ``L + 1``, so GU restart's last iteration
is ordinary full fine-tuning. Each iteration trains ``epochs_per_iteration`` epochs (Fig. 1: 3)
with its own learning-rate schedule: the recipe's warmup and linear decay over that
iteration's steps (every iteration of Algorithm 1 is a fine-tuning run of its own).

A frozen tensor is routed to ``optax.set_to_zero`` (``build_optimizer(trainable=...)``): it
has no optimizer state, no weight decay and no update; and the hidden state entering the
lowest trained encoder layer goes through ``jax.lax.stop_gradient`` (``bert.Encoder``), so
XLA computes no backward pass below it.

Between iterations:
  * GU (``mode='gu'``): the parameters carry over. Tensors already training keep their Adam
    moments and update counts; newly unfrozen tensors start from zero moments and count 0.
    Adam's bias correction counts each tensor's own updates
    (``adam.scale_by_adam_per_tensor_count``), so a newly unfrozen tensor starts as
    under a fresh Adam and a continuing one goes on as before; the schedule restarts (the
    learning rate and the decay read counts of the iteration's own optimizer).
  * GU restart (``mode='gu_restart'``): every iteration starts again from the pretrained
    parameters (the classifier from the same initial value) with a fresh optimizer state.

``mode='none'`` is plain fine-tuning: one stage of ``num_epochs`` epochs without masks.
Steps, data order and dropout keys are global: iteration k trains the run's epochs
``k*E .. (k+1)*E - 1`` (``batching.train_batches(seed, epoch)``), with dropout keys
``fold_in(seed, step)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import ml_collections
import optax

from cwgnc_jax import diagnostics, optimizers, paths

MODES = ("none", "gu", "gu_restart")
EMBEDDINGS = -1  # the embeddings' place in the layer stack: below encoder layer 0
# ``depth`` below is always L, the model's number of encoder layers (``num_layers``).


def stack_position(path: str) -> float:
  """Where a parameter sits in the layer stack: -1 for the embeddings, ``i`` for encoder layer
  ``i``, infinity for the head (above every layer, always trained)."""
  layer = paths.layer_of(path)
  if layer == paths.EMBEDDINGS:
    return EMBEDDINGS
  if layer == paths.HEAD:
    return math.inf
  return paths.layer_index(path)


def num_layers(params: Any) -> int:
  """The number of encoder layers of a parameter tree."""
  indices = {paths.layer_index(path) for path in jax.tree.leaves(paths.tree_paths(params))}
  return 1 + max((i for i in indices if i is not None), default=-1)


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stretch of training with one set of trainable tensors: a GU iteration, or a whole run.

  Attributes:
    index: the iteration ``k`` (0 for plain fine-tuning).
    start_step: the global step it starts after (its steps are ``start_step + 1 ..
      end_step``).
    end_step: its last global step.
    bottom: the lowest trained layer of the stack (an encoder layer index, or ``EMBEDDINGS``:
      everything trains); None for plain fine-tuning (no masks, one optax Adam count).
  """
  index: int
  start_step: int
  end_step: int
  bottom: int | None

  @property
  def num_steps(self) -> int:
    return self.end_step - self.start_step

  @property
  def stop_gradient_at(self) -> int | None:
    """The encoder layer whose input is a constant for autodiff (None: backprop everywhere)."""
    return None if self.bottom in (None, EMBEDDINGS) else self.bottom

  def trainable(self, params: Any) -> Any:
    """A bool per parameter: does it train in this stage?"""
    bottom = EMBEDDINGS if self.bottom is None else self.bottom
    return paths.map_paths(lambda path: stack_position(path) >= bottom, params)

  def trained_layers(self, depth: int) -> list[str]:
    """The trained layers (``paths.layer_of`` names), top down."""
    bottom = EMBEDDINGS if self.bottom is None else self.bottom
    layers = [paths.HEAD] + [f"encoder/layers/{i}" for i in range(depth - 1, -1, -1)
                             if i >= bottom]
    return layers + ([paths.EMBEDDINGS] if bottom == EMBEDDINGS else [])


def iterations(config: ml_collections.ConfigDict, depth: int) -> int:
  """``T``: ``config.unfreezing.iterations``, by default ``L + 1`` (the last one trains all)."""
  return config.unfreezing.iterations or depth + 1


def num_epochs(config: ml_collections.ConfigDict, depth: int) -> int:
  """The run's epochs: ``num_epochs``, or ``T * epochs_per_iteration`` under GU."""
  if config.unfreezing.mode == "none":
    return config.num_epochs
  return iterations(config, depth) * config.unfreezing.epochs_per_iteration


def stages(config: ml_collections.ConfigDict, depth: int,
           steps_per_epoch: int) -> list[Stage]:
  """The run's stages: one for plain fine-tuning, the ``T`` iterations under GU."""
  if config.unfreezing.mode == "none":
    return [Stage(0, 0, config.num_epochs * steps_per_epoch, None)]
  steps = config.unfreezing.epochs_per_iteration * steps_per_epoch
  return [Stage(k, k * steps, (k + 1) * steps, depth - 1 - k)
          for k in range(iterations(config, depth))]


def stage_at(stages_: list[Stage], step: int) -> Stage:
  """The stage that trained up to ``step`` (``start_step < step <= end_step``), the first at
  step 0: a checkpoint of ``step`` holds that stage's optimizer state."""
  return next(s for s in stages_ if step <= s.end_step)


def stage_optimizer(opt_config: ml_collections.ConfigDict, stage: Stage,
                    params: Any) -> optax.GradientTransformation:
  """The optimizer of ``opt_config`` over the stage's steps, frozen tensors masked out;
  ``params`` (arrays or shapes) gives the parameter tree the masks are made for."""
  if stage.bottom is None:
    return optimizers.build_optimizer(opt_config, stage.num_steps)
  return optimizers.build_optimizer(opt_config, stage.num_steps,
                                    trainable=stage.trainable(params), per_tensor_count=True)


def stage_apply(apply: Callable[..., jax.Array], stage: Stage) -> Callable[..., jax.Array]:
  """The model function of the stage's train step: no backward pass below its bottom layer."""
  if stage.stop_gradient_at is None:
    return apply
  return functools.partial(apply, stop_gradient_at=stage.stop_gradient_at)


def _is_schedule_state(node: Any) -> bool:
  return isinstance(node, (optax.ScaleByScheduleState, optimizers.ScaleByLearningRateState))


def carry_opt_state(old: Any, new: Any) -> Any:
  """``new`` (a fresh ``init`` of the next iteration's optimizer) with every array that ``old``
  holds at the same place copied from ``old``: the moments, counts and clip statistics of the
  tensors that keep training. Newly unfrozen tensors keep ``new``'s zeros, and the
  learning-rate schedule's count restarts (each iteration has its own schedule)."""
  carried = {jax.tree_util.keystr(path): leaf for path, leaf
             in jax.tree_util.tree_flatten_with_path(old, is_leaf=_is_schedule_state)[0]}

  def pick(path, leaf):
    if _is_schedule_state(leaf):
      return leaf
    before = carried.get(jax.tree_util.keystr(path))
    if before is None:
      return leaf
    if before.shape != leaf.shape or before.dtype != leaf.dtype:
      raise ValueError(f"optimizer state {jax.tree_util.keystr(path)} changes from "
                       f"{before.dtype}{before.shape} to {leaf.dtype}{leaf.shape}")
    return before

  return jax.tree_util.tree_map_with_path(pick, new, is_leaf=_is_schedule_state)


def next_state(mode: str, state: Any, pretrained: Any,
               optimizer: optax.GradientTransformation) -> Any:
  """The train state at the start of the next iteration; ``state`` is the loop's
  ``TrainState`` (a NamedTuple with ``params`` and ``opt_state``), ``optimizer`` the next
  iteration's (``stage_optimizer``). Pure: the loop jits (or vmaps) it.

  GU: the parameters carry over, the optimizer state as ``carry_opt_state`` says. GU
  restart: the pretrained parameters and a fresh optimizer state. Either way the step, the
  RNG key and the count of skipped steps (``optimizers.skipped_steps``) go on.
  """
  if mode == "gu":
    return state._replace(opt_state=carry_opt_state(
        state.opt_state, optimizers.init_state(optimizer, state.params)))
  if mode == "gu_restart":
    fresh = optimizers.init_state(optimizer, pretrained)
    return state._replace(params=pretrained, opt_state=fresh._replace(
        total_notfinite=state.opt_state.total_notfinite))
  raise ValueError(f"unknown unfreezing mode {mode!r}; valid: {', '.join(MODES[1:])}")


def record(stage: Stage, depth: int, evaluation: dict[str, Any], params: Any,
           pretrained: Any, previous: Any) -> dict[str, Any]:
  """What results.json keeps of a finished iteration: its dev evaluation (Fig. 1) and the
  per-layer drift of its final parameters from the pretrained ones and from the previous
  iteration's final ones, the pretrained ones for iteration 0 (Figs. 2, 4, 5:
  ``diagnostics.layer_drift``). All three are host (numpy) trees; ``previous`` None means
  the pretrained ones.
  """
  previous = pretrained if previous is None else previous
  return {"iteration": stage.index, "trained_layers": stage.trained_layers(depth),
          "start_step": stage.start_step, "end_step": stage.end_step,
          "score": evaluation["score"], "loss": evaluation["loss"],
          "drift_from_pretrained": diagnostics.layer_drift(params, pretrained),
          "drift_from_previous": diagnostics.layer_drift(params, previous)}
