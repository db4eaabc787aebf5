"""The training step under two values of one config key, interleaved, and their time ratio.

Builds the run as ``train.py`` does (``loop.prepare``: model, tokenizer, data), puts the first
``--steps`` packed batches of epoch 0 on the mesh, and compiles one training step per value
of ``--key`` (each value as ``train.py`` would parse ``--config.<key>=<value>``), timing how
long each takes to compile for the first batch's shape. Both steps advance their own state
over the same batches; the passes alternate, order swapped every round, so that load from
other processes hits both alike.

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/bench_config_ab.py
      --key cls_only_last_layer --values true false [--config rte_cwgnc] [--steps 16]
      [--rounds 3] [--config.task=cola ...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from cwgnc_jax.training import host_memory  # pylint: disable=wrong-import-position

host_memory.keep_freed_memory()  # before JAX starts its threads, as train.py

import jax  # pylint: disable=wrong-import-position

from cwgnc_jax import config as config_lib  # pylint: disable=wrong-import-position
from cwgnc_jax import models, optimizers  # pylint: disable=wrong-import-position
from cwgnc_jax.training import loop  # pylint: disable=wrong-import-position
from cwgnc_jax.training import step as step_lib  # pylint: disable=wrong-import-position


def interleaved(programs: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
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


def step_programs(argv: Sequence[str], key: str, values: Sequence[str], steps: int
                  ) -> tuple[dict[str, Callable[[], None]], dict[str, float]]:
  """One training-step program per value of ``key`` for the config ``argv`` asks for, each
  advancing its own state over the same ``steps`` real batches (compiled and run once), and
  the seconds each takes to compile for the first batch's shape."""
  configs = {value: config_lib.from_command_line([*argv, f"--config.{key}={value}"])[0]
             for value in values}
  config = configs[values[0]]
  run = loop.prepare(config, tempfile.mkdtemp(prefix="bench_config_ab_"))
  mesh = step_lib.make_mesh(*config_lib.mesh_shape(config, run.num_devices))
  optimizer = optimizers.build_optimizer(config.optimizer, run.total_steps)
  abstract = step_lib.abstract_state(run.params, optimizer, config.seed, mesh,
                                     config.fsdp_min_size)
  constants = step_lib.put_constants(run.constants, mesh, config.fsdp_min_size)
  batches = [step_lib.put_batch(batch, mesh) for batch in itertools.islice(
      loop.epoch_batches(run, 0, row_multiple=run.num_devices), steps)]
  programs, compile_seconds = {}, {}
  for value, variant in configs.items():
    graphdef, _, _ = models.split_params(loop.load_model(variant, run.task.num_labels))
    train_step = step_lib.jit_train_step(models.apply_fn(graphdef), optimizer, mesh,
                                         step_lib.shardings_of(abstract))
    holder = [step_lib.init_state(run.params, optimizer, config.seed, abstract)]
    start = time.perf_counter()
    train_step.lower(holder[0], batches[0], constants).compile()
    compile_seconds[value] = time.perf_counter() - start

    def advance(train_step=train_step, holder=holder):
      for batch in batches:
        holder[0], metrics = train_step(holder[0], batch, constants)
      jax.block_until_ready((holder[0], metrics))

    advance()  # compiles every shape
    programs[value] = advance
  return programs, compile_seconds


def report(title: str, times: dict[str, list[float]], per: int = 1,
           compile_seconds: dict[str, float] | None = None) -> None:
  """Median and best time of each program, and the first's over the second's."""
  medians = {name: statistics.median(t) / per for name, t in times.items()}
  bests = {name: min(t) / per for name, t in times.items()}
  for name in times:
    print(f"{title} {name:8s} median {medians[name] * 1e3:8.2f} ms  best "
          f"{bests[name] * 1e3:8.2f} ms")
  first, second = list(times)[:2]
  print(f"{title} {first} / {second}: {medians[first] / medians[second]:.2f}x (medians), "
        f"{bests[first] / bests[second]:.2f}x (bests)")
  if compile_seconds:
    print(f"{title} compile, first batch's shape: " + ", ".join(
        f"{name} {seconds:.2f} s" for name, seconds in compile_seconds.items()))


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--key", required=True, help="the config key, e.g. cls_only_last_layer")
  parser.add_argument("--values", nargs=2, required=True, help="its two values")
  parser.add_argument("--config", default="rte_cwgnc", help="config name or path")
  parser.add_argument("--model", default="minilm-l6", help="the config's model")
  parser.add_argument("--steps", type=int, default=16, help="batches per timed pass")
  parser.add_argument("--rounds", type=int, default=3, help="timed passes of each")
  args, rest = parser.parse_known_args(argv)
  config_argv = ["--config", args.config, f"--config.model={args.model}", *rest]
  programs, compile_seconds = step_programs(config_argv, args.key, args.values, args.steps)
  task = config_lib.from_command_line(config_argv)[0].task
  report(f"step ({task}, {args.key})", interleaved(programs, args.rounds), per=args.steps,
         compile_seconds=compile_seconds)


if __name__ == "__main__":
  main(sys.argv[1:])
