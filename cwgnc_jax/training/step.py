"""The device mesh, the shardings, and the jitted train and eval steps.

Mesh: three axes, ``seeds``, ``data`` and ``fsdp``. A batch is split over ``data`` and
``fsdp`` (every device of a seed group sees ``B / (data * fsdp)`` examples); a large
parameter (and its optimizer moments) is split over ``fsdp`` along its largest evenly
divisible dimension and replicated over ``data`` (ZeRO-3 / FSDP); small ones are replicated.
With ``fsdp = 1`` this is plain data parallelism. XLA inserts the gathers and
reduce-scatters (``AxisType.Auto``).

Several seeds of one config train in one program as a stacked state (a leading seed axis on
every array) and a ``vmap`` of the step: ``seeds`` > 1 splits that axis over the mesh's
``seeds`` axis, so each group of ``data * fsdp`` devices trains its own seeds (e.g. 8 seeds
on 8 GPUs, one each). With ``seeds = 1`` nothing is stacked and the step is not vmapped.

The train step, for a batch with example mask ``m`` and per-example cross-entropy ``l``::

  loss = sum(m * l) / max(sum(m), 1)                  (the mean over real examples)
  g = d loss / d params,  dropout key = fold_in(key(seed), step)
  params, opt_state <- optimizer update               if loss and every g are finite
  params, opt_state unchanged, skipped += 1           otherwise
  step += 1                                           always (the data moves on)

The skip is ``optimizers.apply_if_finite`` (``optax.apply_if_finite``'s rule and state, with
the parameters updated inside the taken branch so XLA updates them and the moments in one
pass); its state counts the skips. So a step is a pure function of (state, batch, constants)
and a resumed run repeats it bit for bit. ``constants`` are the arrays the
model reads but never trains (Mixout targets; empty for plain BERT): a step argument laid
out like the parameters, never part of the state (so never checkpointed: they are rebuilt
with the model).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cwgnc_jax import clipping, optimizers, paths

SEEDS, DATA, FSDP = "seeds", "data", "fsdp"
BATCH_AXES = (DATA, FSDP)


class TrainState(NamedTuple):
  """Everything a training run carries from step to step (all jax arrays).

  Attributes:
    step: int32 [], batches consumed so far (applied or skipped): the data position.
    params: the model parameters (pure nested dict).
    opt_state: ``optimizers.init_state``'s: the optimizer's state, and the counts of
      ``optimizers.apply_if_finite`` (``optimizers.skipped_steps``: the steps whose loss or
      gradients were not finite).
    rng: uint32 key data of ``jax.random.key(seed)``; step s drops out with
      ``fold_in(rng, s)``.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


# -- Mesh and shardings. -------------------------------------------------------------------

def make_mesh(data: int, fsdp: int, devices: Any = None, *, seeds: int = 1) -> Mesh:
  """A ``(seeds, data, fsdp)`` mesh over ``devices`` (default: all devices, in topology
  order)."""
  axis_types = (jax.sharding.AxisType.Auto,) * 3
  shape, names = (seeds, data, fsdp), (SEEDS, *BATCH_AXES)
  if devices is None:
    return jax.make_mesh(shape, names, axis_types=axis_types)
  return Mesh(np.asarray(devices).reshape(shape), names, axis_types=axis_types)


def param_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """Split the largest dimension divisible by ``fsdp_size`` over ``fsdp``, if the array
  has at least ``min_size`` entries; else replicate."""
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  dims = [d for d in range(len(shape)) if shape[d] % fsdp_size == 0]
  if not dims:
    return P()
  dim = max(dims, key=lambda d: shape[d])  # the first of equal sizes
  return P(*([None] * dim + [FSDP]))


def tree_shardings(mesh: Mesh, tree: Any, min_size: int) -> Any:
  """A NamedSharding per leaf of ``tree`` (arrays or shape structs), by ``param_spec``.

  Works for parameters and optimizer state alike: a moment has its parameter's shape,
  so it gets its parameter's sharding.
  """
  fsdp_size = mesh.shape[FSDP]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp_size, min_size)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (row or example) axis split over the devices of a seed group."""
  return NamedSharding(mesh, P(BATCH_AXES))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """``[S, rows, ...]``: seeds over ``seeds``, rows over the devices of each seed group."""
  return NamedSharding(mesh, P(SEEDS, BATCH_AXES))


def stacked(shardings: Any) -> Any:
  """The shardings of a seed-stacked tree: each leaf's with a leading axis over ``seeds``."""
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(SEEDS, *s.spec)), shardings)


def stack(trees: Any) -> Any:
  """The trees' leaves stacked along a new leading (seed) axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, index: int) -> Any:
  """Seed ``index``'s slice of a stacked tree."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host value that every process holds in full.

  Each process places only the shards of its own devices (``make_array_from_callback``),
  so the same call works on one host and on many.
  """
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, *, seeds: bool = False
              ) -> dict[str, jax.Array]:
  """A host batch as global arrays split over the mesh; every process feeds its slice.
  ``seeds``: the batch is seed-stacked (``batching.stack_batches``: ``[S, rows, ...]``)."""
  sharding = stacked_batch_sharding(mesh) if seeds else batch_sharding(mesh)
  return {key: global_array(value, sharding) for key, value in batch.items()}


def host_copy(tree: Any) -> Any:
  """``tree`` whole, as numpy arrays on this host, however its arrays are laid out.

  Arrays that span several processes are gathered from all of them
  (``process_allgather``): a collective, so every process must call it at the same point.
  """
  if all(x.is_fully_addressable for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)):
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return multihost_utils.process_allgather(tree, tiled=True)


def put_tree(tree: Any, shardings: Any) -> Any:
  """Host (or single-device) arrays placed with ``shardings``, leaf by leaf."""
  return jax.tree.map(lambda x, s: global_array(np.asarray(x), s), tree, shardings)


def put_constants(constants: Any, mesh: Mesh, min_size: int) -> Any:
  """The model's constants (``models.split_params``) on the mesh, each laid out as a
  parameter of its shape would be (``tree_shardings``)."""
  return put_tree(constants, tree_shardings(mesh, constants, min_size))


# -- The state. ----------------------------------------------------------------------------

def _state_fn(optimizer: optax.GradientTransformation, seed: int):
  def make(params):
    rng = jax.random.key_data(jax.random.key(seed))
    return TrainState(jnp.zeros([], jnp.int32), params,
                      optimizers.init_state(optimizer, params), rng)
  return make


def abstract_state(params: Any, optimizer: optax.GradientTransformation, seed: int,
                   mesh: Mesh, min_size: int) -> Any:
  """The state's ``ShapeDtypeStruct``s, each with its sharding (``tree_shardings``), computed
  without creating the state: what a checkpoint restores into, and ``init_state`` builds."""
  shapes = jax.eval_shape(_state_fn(optimizer, seed), params)
  shardings = tree_shardings(mesh, shapes, min_size)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def shardings_of(abstract: Any) -> Any:
  return jax.tree.map(lambda x: x.sharding, abstract)


def init_state(params: Any, optimizer: optax.GradientTransformation, seed: int,
               abstract: Any) -> TrainState:
  """The step-0 state, laid out as ``abstract`` says (``abstract_state``).

  The optimizer state is created inside ``jit`` directly in its sharded layout, so large
  moments never exist in full on one device.
  """
  shardings = shardings_of(abstract)
  params = put_tree(params, shardings.params)
  return jax.jit(_state_fn(optimizer, seed), out_shardings=shardings)(params)


def skipped(state: TrainState) -> jax.Array:
  """The steps whose loss or gradients were not finite (not applied) so far."""
  return optimizers.skipped_steps(state.opt_state)


# -- Steps. --------------------------------------------------------------------------------

def masked_mean_cross_entropy(logits: jax.Array, labels: jax.Array,
                              mask: jax.Array) -> jax.Array:
  """``sum(mask * CE(logits, labels)) / max(sum(mask), 1)``: the mean over real examples."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(mask * losses) / jnp.maximum(jnp.sum(mask), 1.0)


ApplyFn = Callable[..., jax.Array]  # (params, constants, inputs, dropout_rng=None) -> logits


def train_step_fn(apply: ApplyFn, optimizer: optax.GradientTransformation, *,
                  diagnostics: bool = False
                  ) -> Callable[[TrainState, Mapping[str, jax.Array], Any],
                                tuple[TrainState, dict[str, jax.Array]]]:
  """The (unjitted) train step ``(state, batch, constants) -> (state, metrics)`` (module
  docstring); ``optimizer`` is ``optimizers.build_optimizer``'s (an Optax chain), applied
  by ``optimizers.apply_if_finite``.

  Metrics: ``loss``, ``grad_norm`` (global L2 norm of the raw gradient), ``finite`` (the
  step was applied), ``examples`` (real examples), ``learning_rate`` (of the last applied
  update, read from the optimizer state), and with ``diagnostics`` the per-tensor gradient
  norms of ``gradient_norms``.
  """
  def step(state: TrainState, batch: Mapping[str, jax.Array], constants: Any):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
      logits = apply(params, constants, batch, dropout_rng=key)
      return masked_mean_cross_entropy(logits, batch["labels"], batch["example_mask"])

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    with jax.named_scope("optimizer"):  # names in profiles only (benchmarks/profile_step.py)
      params, opt_state = optimizers.apply_if_finite(optimizer, grads, state.opt_state,
                                                     state.params, loss)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           rng=state.rng)
    finite = opt_state.last_finite
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "finite": finite,
               "examples": jnp.sum(batch["example_mask"]),
               "learning_rate": optimizers.applied_learning_rate(opt_state)}
    if diagnostics:
      metrics.update(gradient_norms(grads, opt_state, finite))
    return new_state, metrics

  return step


def gradient_norms(grads: Any, opt_state: Any, finite: jax.Array) -> dict[str, jax.Array]:
  """This step's pre-clip gradient norm of every tensor, and what a component clip did.

  ``tensor_norms``: float32 [N], ``||g_t||_2`` of every gradient tensor ``t`` in leaf order
  (names: ``gradient_norm_names``). A tensor that is a component of its own in a
  ``clip_by_component_norm`` (CWGNC) takes the norm the clip computed, read from the new
  optimizer state (so no second pass over the gradients); others are computed here (the
  same per-tensor sums of squares as ``grad_norm``'s, which XLA shares).
  ``component_norms``, ``clipped``: float32 [C] and bool [C], the pre-clip norm of each of
  the clip's C components and whether it was clipped, by ``str(label)`` order; present only
  when the optimizer has a component clip. A skipped step (not ``finite``) leaves the clip's
  state as it was, so its norms are NaN and nothing is marked clipped.
  """
  stats = clipping.component_norm_stats(opt_state)
  this_step = lambda value: jnp.where(finite, value, jnp.nan)
  tensor_norms = []
  for path, grad in jax.tree_util.tree_flatten_with_path(grads)[0]:
    name = paths.path_to_str(path)
    if name in stats["norms"]:
      tensor_norms.append(this_step(stats["norms"][name]))
    else:
      tensor_norms.append(jnp.sqrt(jnp.sum(jnp.square(grad.astype(jnp.float32)))))
  norms = {"tensor_norms": jnp.stack(tensor_norms)}
  if stats["norms"]:
    labels = sorted(stats["norms"], key=str)
    norms["component_norms"] = jnp.stack([this_step(stats["norms"][label])
                                          for label in labels])
    norms["clipped"] = jnp.stack([jnp.logical_and(finite, stats["clipped"][label])
                                  for label in labels])
  return norms


def gradient_norm_names(params: Any, opt_state: Any) -> dict[str, list[str]]:
  """The names of the entries of ``gradient_norms``: tensor paths, and component labels (as
  strings) under ``component_norms`` when there is a component clip. Works on abstract
  trees (``abstract_state``)."""
  names = {"tensor_norms": list(jax.tree.leaves(paths.tree_paths(params)))}
  labels = clipping.component_norm_stats(opt_state)["norms"]
  if labels:
    names["component_norms"] = [str(label) for label in sorted(labels, key=str)]
  return names


def jit_train_step(apply: ApplyFn, optimizer: optax.GradientTransformation, mesh: Mesh,
                   state_shardings: Any, *, diagnostics: bool = False, seeds: bool = False):
  """The train step ``(state, batch, constants)`` jitted over the mesh; the input state is
  donated; the constants keep the layout they are passed in (``put_tree``).

  ``seeds``: the state, batch and constants are seed-stacked (``state_shardings`` are the
  stacked ones, ``stacked``) and the step is vmapped over their leading axis.
  """
  step = train_step_fn(apply, optimizer, diagnostics=diagnostics)
  if seeds:
    step = jax.vmap(step)
  metrics = NamedSharding(mesh, P(SEEDS)) if seeds else replicated(mesh)
  return jax.jit(step,
                 in_shardings=(state_shardings,
                               stacked_batch_sharding(mesh) if seeds else batch_sharding(mesh),
                               None),
                 out_shardings=(state_shardings, metrics),
                 donate_argnums=0)


def jit_eval_step(apply: ApplyFn, mesh: Mesh, params_shardings: Any, *, seeds: bool = False):
  """``(params, constants, batch) -> logits [B, C]`` without dropout, replicated on every
  device (so every process can read all of them). ``seeds``: params and constants are
  seed-stacked, the batch is not (every seed sees the same dev batch): logits ``[S, B, C]``.
  """
  def forward(params, constants, batch):  # named: 'jit_forward' in logs, caches, profiles
    return apply(params, constants, batch)
  if seeds:
    forward = jax.vmap(forward, in_axes=(0, 0, None))
  return jax.jit(forward, in_shardings=(params_shardings, None, batch_sharding(mesh)),
                 out_shardings=replicated(mesh))
