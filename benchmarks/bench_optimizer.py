"""The optimizer step with the skip of non-finite steps: where the parameters are updated.

Times, on the real MiniLM-L6 parameters (or ``--model``) and one set of gradients, three
jitted programs ``(params, opt_state, grads) -> (params, opt_state)`` with donated inputs,
interleaved (order swapped every round) so that load from other processes hits all alike:

  wrapper:  optax.apply_if_finite(optimizer) -> optax.apply_updates   (the step until 2026-12)
  in place: optimizers.apply_if_finite(optimizer, ...)                 (the step now)
  no skip:  optimizer.update -> optax.apply_updates                     (the floor)

``optimizer`` is ``build_optimizer(recipe(--method))``. The wrapper's ``lax.cond`` returns the
updates, so they are written out and added to the parameters in a pass of their own; in
place, the parameters are updated inside the branch, in the pass that updates the moments.
The first two give the same state bit for bit (checked here before timing), and the same
parameters up to the rounding of the step: in one loop XLA's CPU code generator computes
``p + (-lr) * d`` as one fused multiply-add, where the wrapper rounds ``-lr * d`` first.

  PYTHONPATH=. python benchmarks/bench_optimizer.py [--method cwgnc] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

from cwgnc_jax.training import host_memory

host_memory.keep_freed_memory()  # before JAX starts its threads, as train.py

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from cwgnc_jax import methods, models, optimizers  # pylint: disable=wrong-import-position


def programs(optimizer: optax.GradientTransformation):
  """The three step programs of the module docstring, jitted with donated state."""
  wrapped = optax.apply_if_finite(optimizer, max_consecutive_errors=2**31 - 1)

  def wrapper(params, opt_state, grads):
    updates, opt_state = wrapped.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def in_place(params, opt_state, grads):
    return optimizers.apply_if_finite(optimizer, grads, opt_state, params)

  def no_skip(params, opt_state, grads):
    updates, inner = optimizer.update(grads, opt_state.inner_state, params)
    return optax.apply_updates(params, updates), opt_state._replace(inner_state=inner)

  return {name: jax.jit(fn, donate_argnums=(0, 1)) for name, fn in
          (("wrapper", wrapper), ("in place", in_place), ("no skip", no_skip))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="minilm-l6", help="a model name or folder")
  parser.add_argument("--method", default="cwgnc", help="a Table 1 row (methods.METHODS)")
  parser.add_argument("--rounds", type=int, default=15)
  args = parser.parse_args()

  _, _, params = models.split_params(models.from_pretrained(args.model, num_labels=2))
  optimizer = optimizers.build_optimizer(methods.recipe(args.method), 1000)
  keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(params))))
  grads = jax.tree.map(lambda p: 1e-3 * jax.random.normal(next(keys), p.shape, p.dtype), params)
  n_params = sum(x.size for x in jax.tree.leaves(params))

  steps = programs(optimizer)
  fresh = lambda: (jax.tree.map(jnp.copy, params), optimizers.init_state(optimizer, params))
  states = {name: fresh() for name in steps}
  for _ in range(2):  # compile, and compare the skip's two forms
    states = {name: step(*states[name], grads) for name, step in steps.items()}
  same_state = jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                                         states["wrapper"][1], states["in place"][1]))
  differ = sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in
               zip(jax.tree.leaves(states["wrapper"][0]), jax.tree.leaves(states["in place"][0])))
  times = {name: [] for name in steps}
  for round_index in range(args.rounds):
    order = list(steps) if round_index % 2 == 0 else list(reversed(steps))
    for name in order:
      started = time.perf_counter()
      states[name] = jax.block_until_ready(steps[name](*states[name], grads))
      times[name].append(time.perf_counter() - started)

  median = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
  print(f"{args.model}, {args.method}: {n_params / 1e6:.1f}M parameters, {args.rounds} rounds")
  print(f"  after 2 steps, wrapper vs in place: state bit-identical: {same_state}; parameters "
        f"differing in the last bits: {differ} of {n_params}")
  for name in steps:
    print(f"  {name:9s} median {median[name]:7.2f} ms   min {min(times[name]) * 1e3:7.2f} ms")
  print(f"  wrapper / in place: {median['wrapper'] / median['in place']:.2f}x;  "
        f"in place / no skip: {median['in place'] / median['no skip']:.2f}x")


if __name__ == "__main__":
  main()
