"""Training several seeds in one compiled program (vmap over seeds) against one after another.

Builds the runs of ``--seeds`` seeds of a config as ``train.py`` does (``run.prepare``), takes
the first ``--steps`` steps of each seed's epoch 0, and trains them two ways from the same
initial states, on one device:

  sequential: the jitted train step of the loop (shared by the seeds), seed after seed, on
              each seed's own batches;
  vmapped:    ``step.jit_train_step(seeds=True)``, all seeds' step i in one call, on the
              stacked batches the loop gives a program (``run.program_batches``: the same
              examples; packed, at one row length per step, padded with empty rows to the
              largest row count).

Every shape is compiled first; then timed passes alternate (order swapped every round) so
that load from other processes hits both alike. Reports real examples per second (wall and
CPU time, medians over rounds), their ratio, and the token slots each way computes (the
padding that stacking adds).

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/bench_seeds.py --seeds 2  # demo config
  PYTHONPATH=. python benchmarks/bench_seeds.py --seeds 4 --config.layout=padded
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import jax  # pylint: disable=wrong-import-position

from cwgnc_jax import config as config_lib  # pylint: disable=wrong-import-position
from cwgnc_jax import command_line  # pylint: disable=wrong-import-position
from cwgnc_jax import optimizers  # pylint: disable=wrong-import-position
from cwgnc_jax.training import run as run_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.training import step as step_lib  # pylint: disable=wrong-import-position


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--config", default="demo", help="config name or path")
  parser.add_argument("--seeds", type=int, default=2, help="seeds 1..S")
  parser.add_argument("--steps", type=int, default=8, help="batches per seed per pass")
  parser.add_argument("--rounds", type=int, default=3, help="timed passes of each way")
  args, rest = parser.parse_known_args(argv)
  config, _ = command_line.train_config(["--config", args.config, *rest])
  seeds = list(range(1, args.seeds + 1))
  runs = []
  for seed in seeds:
    seed_config = config.copy_and_resolve_references()
    seed_config.seed = seed
    runs.append(run_lib.prepare(seed_config, tempfile.mkdtemp(prefix="bench_seeds_")))
  run = runs[0]
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  optimizer = optimizers.build_optimizer(config.optimizer, run.total_steps)
  abstract = step_lib.abstract_state(run.params, optimizer, 1, mesh, config.fsdp_min_size)
  init = lambda r: step_lib.init_state(r.params, optimizer, r.config.seed, abstract)
  shardings = step_lib.shardings_of(abstract)
  sequential_step = step_lib.jit_train_step(run.apply, optimizer, mesh, shardings)
  vmapped_step = step_lib.jit_train_step(run.apply, optimizer, mesh,
                                         step_lib.stacked(shardings), seeds=True)
  constants = {"sequential": {r.config.seed: step_lib.put_constants(r.constants, mesh, 2**62)
                              for r in runs},
               "vmapped": jax.device_put(step_lib.stack([r.constants for r in runs]))}
  host = {r.config.seed: list(itertools.islice(run_lib.epoch_batches(r, 0, row_multiple=1),
                                               args.steps)) for r in runs}
  sequential_batches = {s: [step_lib.put_batch(b, mesh) for b in host[s]] for s in seeds}
  stacked = [batch for _, batch in itertools.islice(  # as the loop stacks a program's seeds
      run_lib.program_batches(runs, 0, row_multiple=1), args.steps)]
  vmapped_batches = [step_lib.put_batch(b, mesh, seeds=True) for b in stacked]
  examples = sum(float(b["example_mask"].sum()) for s in seeds for b in host[s])
  slots = {"sequential": sum(b["segment_ids"].size for s in seeds for b in host[s]),
           "vmapped": sum(b["segment_ids"].size for b in stacked)}
  states = {"sequential": {s: init(r) for s, r in zip(seeds, runs)},
            "vmapped": step_lib.put_tree(step_lib.stack(jax.device_get([init(r) for r in runs])),
                                         step_lib.stacked(shardings))}

  def one_pass(way: str) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    if way == "sequential":
      for s in seeds:
        state = states[way][s]
        for batch in sequential_batches[s]:
          state, metrics = sequential_step(state, batch, constants[way][s])
        states[way][s] = state
    else:
      state = states[way]
      for batch in vmapped_batches:
        state, metrics = vmapped_step(state, batch, constants[way])
      states[way] = state
    jax.block_until_ready((states[way], metrics))
    return time.perf_counter() - wall, time.process_time() - cpu

  ways = ("sequential", "vmapped")
  for way in ways:  # compiles every batch shape
    one_pass(way)
  times = {way: [] for way in ways}
  for r in range(args.rounds):
    for way in (ways if r % 2 == 0 else ways[::-1]):
      times[way].append(one_pass(way))
  median = {way: [statistics.median(t[i] for t in times[way]) for i in (0, 1)] for way in ways}
  report = {
      "config": config_lib.config_name(args.config), "model": config.model,
      "layout": config.layout, "batch_size": config.batch_size, "seeds": len(seeds),
      "steps_per_seed": args.steps, "rounds": args.rounds, "backend": jax.default_backend(),
      "examples_per_pass": examples,
      "sequential_examples_per_second": examples / median["sequential"][0],
      "vmapped_examples_per_second": examples / median["vmapped"][0],
      "vmapped_over_sequential_wall": median["sequential"][0] / median["vmapped"][0],
      "vmapped_over_sequential_cpu": median["sequential"][1] / median["vmapped"][1],
      "token_slots": slots,
  }
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main(sys.argv[1:])
