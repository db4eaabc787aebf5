"""Cost of the in-step gradient-norm diagnostics (``diagnostics_every``) on training time.

Builds the run as ``train.py`` does (``run.prepare``) and two jitted train steps from the
same state: without diagnostics, and with them (``step.gradient_norms``: per-tensor norms
and, for CWGNC, the clip's flags). A pass trains the first ``--steps`` batches of epoch 0;
the pass with diagnostics also does the loop's host work (``GradientNormLog.take`` every
step, keeping every K-th; one fetch and atomic write of ``grad_norms.npz`` per pass, which
the loop does only at checkpoints). Passes alternate (order swapped every round) so that
load from other processes hits both alike. Reports wall and CPU-time medians, their ratios
(with / without), and XLA's cost analysis of the two compiled steps, which does not depend
on the machine's load.

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/bench_diagnostics.py  # demo config
  PYTHONPATH=. python benchmarks/bench_diagnostics.py --config demo --config.method=adamw
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import jax  # pylint: disable=wrong-import-position

from cwgnc_jax import config as config_lib  # pylint: disable=wrong-import-position
from cwgnc_jax import command_line  # pylint: disable=wrong-import-position
from cwgnc_jax import diagnostics, files  # pylint: disable=wrong-import-position
from cwgnc_jax.training import program as program_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.training import run as run_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.training import step as step_lib  # pylint: disable=wrong-import-position


def xla_cost(jitted, *args) -> dict[str, float]:
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {key: float(cost.get(key, float("nan"))) for key in ("flops", "bytes accessed")}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--config", default="demo", help="config name or path")
  parser.add_argument("--steps", type=int, default=10, help="batches per timed pass")
  parser.add_argument("--rounds", type=int, default=3, help="timed passes of each variant")
  args, rest = parser.parse_known_args(argv)
  config, _ = command_line.train_config(["--config", args.config, *rest])
  every = config.diagnostics_every or 10
  run = run_lib.prepare(config, tempfile.mkdtemp(prefix="bench_diagnostics_"))
  programs = {flag: program_lib.first_stage_program(run, diagnostics=flag)
              for flag in (False, True)}
  states = {flag: program.fresh_state() for flag, program in programs.items()}
  abstract = programs[True].abstract
  names = step_lib.gradient_norm_names(abstract.params, abstract.opt_state)
  batches = programs[True].batches(args.steps)
  out = Path(tempfile.mkdtemp(prefix="bench_diagnostics_log_"))

  def one_pass(flag: bool) -> tuple[float, float]:
    log = diagnostics.GradientNormLog(out, names, every, 0, flag)
    state, program = states[flag], programs[flag]
    wall, cpu = time.perf_counter(), time.process_time()
    for i, batch in enumerate(batches):
      state, metrics = program.train_step(state, batch, program.constants)
      log.take(i + 1, metrics)
    log.save()
    jax.block_until_ready((state, metrics))
    states[flag] = state
    return time.perf_counter() - wall, time.process_time() - cpu

  costs = {flag: xla_cost(programs[flag].train_step, states[flag], batches[0],
                          programs[flag].constants) for flag in (False, True)}
  for flag in (False, True):  # compiles every batch shape of both variants
    one_pass(flag)
  times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
  for r in range(args.rounds):
    for flag in ((False, True) if r % 2 == 0 else (True, False)):
      times[flag].append(one_pass(flag))
  median = {flag: [statistics.median(t[i] for t in times[flag]) for i in (0, 1)]
            for flag in (False, True)}
  report = {
      "config": config_lib.config_name(args.config), "method": config.method,
      "model": config.model, "layout": config.layout, "diagnostics_every": every,
      "tensors": len(names["tensor_norms"]),
      "components": len(names.get("component_norms", [])),
      "steps_per_pass": len(batches), "rounds": args.rounds,
      "seconds_per_step_off": median[False][0] / len(batches),
      "seconds_per_step_on": median[True][0] / len(batches),
      "wall_ratio_on_over_off": median[True][0] / median[False][0],
      "cpu_ratio_on_over_off": median[True][1] / median[False][1],
      "xla_flops_ratio": costs[True]["flops"] / costs[False]["flops"],
      "xla_bytes_ratio": costs[True]["bytes accessed"] / costs[False]["bytes accessed"],
      "grad_norms_bytes_per_pass": (out / files.GRAD_NORMS_FILE).stat().st_size,
  }
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main(sys.argv[1:])
