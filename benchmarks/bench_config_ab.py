"""The training step under two values of one config key, interleaved, and their time ratio.

For each value of ``--key`` (as ``train.py`` would parse ``--config.<key>=<value>``), builds
the run and its step as ``train.py`` does (``run.prepare``, ``program.first_stage_program``),
puts the first ``--steps`` batches of epoch 0 on the mesh (the same batches, unless the key
changes the batching), and times how long the step takes to compile for the first batch's
shape. Each step advances its own state over its batches; the passes alternate, order
swapped every round, so that load from other processes hits both alike.

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/bench_config_ab.py
      --key cls_only_last_layer --values true false [--config rte_cwgnc] [--steps 16]
      [--rounds 3] [--config.task=cola ...]
"""

from __future__ import annotations

import argparse
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

from cwgnc_jax import command_line  # pylint: disable=wrong-import-position
from cwgnc_jax.training import program as program_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.training import run as run_lib  # pylint: disable=wrong-import-position


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
  its own run as ``train.py`` builds it (so any key takes effect: the model's, the
  optimizer's, the batching's), advancing its own state over its run's first ``steps``
  batches (compiled and run once), and the seconds each takes to compile for the first
  batch's shape."""
  programs, compile_seconds = {}, {}
  for value in values:
    config = command_line.train_config([*argv, f"--config.{key}={value}"])[0]
    run = run_lib.prepare(config, tempfile.mkdtemp(prefix="bench_config_ab_"))
    program = program_lib.first_stage_program(run)
    batches, holder = program.batches(steps), [program.fresh_state()]
    start = time.perf_counter()
    program.train_step.lower(holder[0], batches[0], program.constants).compile()
    compile_seconds[value] = time.perf_counter() - start

    def advance(program=program, batches=batches, holder=holder):
      for batch in batches:
        holder[0], metrics = program.train_step(holder[0], batch, program.constants)
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
  task = command_line.train_config(config_argv)[0].task
  report(f"step ({task}, {args.key})", interleaved(programs, args.rounds), per=args.steps,
         compile_seconds=compile_seconds)


if __name__ == "__main__":
  main(sys.argv[1:])
