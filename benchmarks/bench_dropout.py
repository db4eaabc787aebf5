"""Dropout's keep masks: the keyed hash (``dropout_bits='hash'``) against threefry.

Two measurements, each interleaved (order swapped every round) so that load from other
processes hits both alike:

  mask:  inverted dropout of an attention-probability tensor [rows, 12, 128, 128] (MiniLM's
         heads, RTE's row length; softmaxed once, outside the timed program), forward and
         backward through the dropout and a matmul against a [128, 32] value block, jitted;
         the mask's share is what differs.
  step:  the training step of ``--config`` (``train.py``'s: ``run.prepare``, packed real
         batches of epoch 0, CWGNC) with ``dropout_bits`` 'hash' and 'threefry', the same
         batches through both (``bench_config_ab.py``); seconds per step and their ratio.

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/bench_dropout.py [--config rte_cwgnc]
      [--steps 16] [--rounds 3] [--config.task=cola ...]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# The step measurement is bench_config_ab's (which keeps freed host memory mapped, as
# train.py, before JAX starts its threads).
from bench_config_ab import interleaved, report, step_programs  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from cwgnc_jax import command_line  # pylint: disable=wrong-import-position
from cwgnc_jax.models import bert  # pylint: disable=wrong-import-position
from cwgnc_jax.models import dropout as dropout_lib  # pylint: disable=wrong-import-position


def mask_programs(rows: int) -> dict:
  """The ``mask`` measurement's jitted forward + backward, one per generator."""
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (rows, 12, 128, 128)), axis=-1)
  value = jax.random.normal(jax.random.key(1), (128, 32))
  key = jax.random.key(2)
  programs = {}
  for bits in bert.DROPOUT_BITS:
    loss = lambda p, bits=bits: jnp.sum(jnp.tanh(dropout_lib.dropout(p, 0.1, key, bits) @ value))
    grad = jax.jit(jax.grad(loss))
    grad(probs).block_until_ready()
    programs[bits] = lambda grad=grad: grad(probs).block_until_ready()
  return programs


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--config", default="rte_cwgnc", help="config name or path")
  parser.add_argument("--model", default="minilm-l6", help="the config's model")
  parser.add_argument("--steps", type=int, default=16, help="batches per timed pass")
  parser.add_argument("--rounds", type=int, default=3, help="timed passes of each")
  parser.add_argument("--mask-rows", type=int, default=10, help="rows of the mask tensor")
  args, rest = parser.parse_known_args(argv)
  config_argv = ["--config", args.config, f"--config.model={args.model}", *rest]
  task = command_line.train_config(config_argv)[0].task
  report("mask", interleaved(mask_programs(args.mask_rows), 5 * args.rounds))
  steps, compile_seconds = step_programs(config_argv, "dropout_bits", bert.DROPOUT_BITS,
                                         args.steps)
  report(f"step ({task})", interleaved(steps, args.rounds), per=args.steps,
         compile_seconds=compile_seconds)


if __name__ == "__main__":
  main(sys.argv[1:])
