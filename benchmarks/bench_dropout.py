"""Dropout's keep masks: the keyed hash (``dropout_bits='hash'``) against threefry.

Two measurements, each interleaved (order swapped every round) so that load from other
processes hits both alike:

  mask:  inverted dropout of an attention-probability tensor [rows, 12, 128, 128] (MiniLM's
         heads, RTE's row length), forward and backward through a softmax and a matmul
         against a [128, 32] value block, jitted; the mask's share is what differs.
  step:  the training step of ``--config`` (``train.py``'s: ``loop.prepare``, packed real
         batches of epoch 0, CWGNC) with the model's ``dropout_bits`` 'hash' and 'threefry',
         the same batches through both; seconds per step and their ratio.

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/bench_dropout.py [--config rte_cwgnc]
      [--steps 16] [--rounds 3] [--config.task=cola ...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from cwgnc_jax.training import host_memory  # pylint: disable=wrong-import-position

host_memory.keep_freed_memory()  # before JAX starts its threads, as train.py

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from cwgnc_jax import config as config_lib  # pylint: disable=wrong-import-position
from cwgnc_jax import models, optimizers  # pylint: disable=wrong-import-position
from cwgnc_jax.models import bert  # pylint: disable=wrong-import-position
from cwgnc_jax.training import loop  # pylint: disable=wrong-import-position
from cwgnc_jax.training import step as step_lib  # pylint: disable=wrong-import-position


def interleaved(programs: dict, rounds: int) -> dict[str, list[float]]:
  """Seconds of each ``programs[name]()`` (which blocks), ``rounds`` times, order swapped
  every round."""
  times = {name: [] for name in programs}
  names = list(programs)
  for r in range(rounds):
    for name in names if r % 2 == 0 else names[::-1]:
      start = time.perf_counter()
      programs[name]()
      times[name].append(time.perf_counter() - start)
  return times


def mask_programs(rows: int) -> dict:
  """The ``mask`` measurement's jitted forward + backward, one per generator."""
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (rows, 12, 128, 128)), axis=-1)
  value = jax.random.normal(jax.random.key(1), (128, 32))
  key = jax.random.key(2)
  programs = {}
  for bits in bert.DROPOUT_BITS:
    loss = lambda p, bits=bits: jnp.sum(jnp.tanh(bert.dropout(p, 0.1, key, bits) @ value))
    grad = jax.jit(jax.grad(loss))
    grad(probs).block_until_ready()
    programs[bits] = lambda grad=grad: grad(probs).block_until_ready()
  return programs


def step_programs(config, steps: int) -> dict:
  """The ``step`` measurement: one train-step program and state per generator, advancing over
  the same ``steps`` real batches (compiled and run once before timing)."""
  run = loop.prepare(config, tempfile.mkdtemp(prefix="bench_dropout_"))
  mesh = step_lib.make_mesh(*config_lib.mesh_shape(config, run.num_devices))
  optimizer = optimizers.build_optimizer(config.optimizer, run.total_steps)
  abstract = step_lib.abstract_state(run.params, optimizer, config.seed, mesh,
                                     config.fsdp_min_size)
  constants = step_lib.put_constants(run.constants, mesh, config.fsdp_min_size)
  batches = [step_lib.put_batch(batch, mesh) for batch in itertools.islice(
      loop.epoch_batches(run, 0, row_multiple=run.num_devices), steps)]
  programs = {}
  for bits in bert.DROPOUT_BITS:
    variant = config.copy_and_resolve_references()
    variant.dropout_bits = bits
    graphdef, _, _ = models.split_params(loop.load_model(variant, run.task.num_labels))
    train_step = step_lib.jit_train_step(models.apply_fn(graphdef), optimizer, mesh,
                                         step_lib.shardings_of(abstract))
    holder = [step_lib.init_state(run.params, optimizer, config.seed, abstract)]

    def advance(train_step=train_step, holder=holder):
      for batch in batches:
        holder[0], metrics = train_step(holder[0], batch, constants)
      jax.block_until_ready((holder[0], metrics))

    advance()  # compiles every shape
    programs[bits] = advance
  return programs


def report(title: str, times: dict[str, list[float]], per: int = 1) -> None:
  medians = {name: statistics.median(t) / per for name, t in times.items()}
  bests = {name: min(t) / per for name, t in times.items()}
  for name in times:
    print(f"{title} {name:8s} median {medians[name] * 1e3:8.2f} ms  best "
          f"{bests[name] * 1e3:8.2f} ms")
  print(f"{title} hash / threefry: {medians['hash'] / medians['threefry']:.2f}x (medians), "
        f"{bests['hash'] / bests['threefry']:.2f}x (bests)")


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--config", default="rte_cwgnc", help="config name or path")
  parser.add_argument("--model", default="minilm-l6", help="the config's model")
  parser.add_argument("--steps", type=int, default=16, help="batches per timed pass")
  parser.add_argument("--rounds", type=int, default=3, help="timed passes of each")
  parser.add_argument("--mask-rows", type=int, default=10, help="rows of the mask tensor")
  args, rest = parser.parse_known_args(argv)
  config, _ = config_lib.from_command_line(
      ["--config", args.config, f"--config.model={args.model}", *rest])
  report("mask", interleaved(mask_programs(args.mask_rows), 5 * args.rounds))
  report(f"step ({config.task})", interleaved(step_programs(config, args.steps), args.rounds),
         per=args.steps)


if __name__ == "__main__":
  main(sys.argv[1:])
