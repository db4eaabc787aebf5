"""Packed against padded batches: one real fine-tuning epoch of each, side by side.

For each task, two runs of the same config (MiniLM-L6 by default, batch 16, max length 128)
start from the same parameters and see the same examples at every step; one lays each batch
out packed (several examples per row), the other padded (one example per 128-token row). The
two advance alternately, ``--chunk`` steps at a time, so a change in the machine's load hits
both alike. Every step is timed to completion; a step whose batch shape is new (it compiles)
is left out of the timing. Both are evaluated on the whole dev set at the end: packing must
not change the metric beyond the float noise of a different summation order.

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/bench_packing.py
  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/bench_packing.py --tasks rte --steps 20

Goal (issue 3): packed at least 1.7x the padded examples/s on RTE and 6x on CoLA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import jax  # pylint: disable=wrong-import-position
from tqdm import tqdm  # pylint: disable=wrong-import-position

from cwgnc_jax import command_line  # pylint: disable=wrong-import-position
from cwgnc_jax.training import loop  # pylint: disable=wrong-import-position
from cwgnc_jax.training import program as program_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.training import run as run_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.training import step as step_lib  # pylint: disable=wrong-import-position

LAYOUTS = ("packed", "padded")


class Runner:
  """One layout's run: its state, its jitted step, its batches and its clock."""

  def __init__(self, run: run_lib.Run, layout: str, steps: int):
    program = program_lib.first_stage_program(run)
    self.state, self.constants = program.fresh_state(), program.constants
    self.step, self.eval_step = program.train_step, program.eval_step
    self.batches = run_lib.epoch_batches(run, 0, row_multiple=run.num_devices, layout=layout)
    self.layout, self.mesh, self.remaining = layout, program.mesh, steps
    self.shapes: set[tuple[int, ...]] = set()
    self.seconds, self.examples, self.tokens, self.slots = 0.0, 0.0, 0, 0

  def advance(self, n: int) -> int:
    """Runs up to ``n`` steps; returns how many ran."""
    ran = 0
    while ran < n and self.remaining > 0:
      batch = next(self.batches)
      placed = step_lib.put_batch(batch, self.mesh)
      start = time.perf_counter()
      self.state, metrics = self.step(self.state, placed, self.constants)
      jax.block_until_ready((self.state, metrics))
      seconds = time.perf_counter() - start
      shape = batch["input_ids"].shape
      if shape in self.shapes:  # a new shape compiled in this step: not timed
        self.seconds += seconds
        self.examples += float(batch["example_mask"].sum())
        self.tokens += int((batch["segment_ids"] != 0).sum())
        self.slots += batch["segment_ids"].size
      self.shapes.add(shape)
      self.remaining -= 1
      ran += 1
    return ran


def bench_task(args: argparse.Namespace, rest: list[str], task: str) -> dict[str, dict]:
  config, _ = command_line.train_config(["--config", args.config, f"--config.task={task}",
                                            *rest])
  run = run_lib.prepare(config, tempfile.mkdtemp(prefix="bench_packing_"))
  steps = min(args.steps or run.steps_per_epoch, run.steps_per_epoch)
  runners = [Runner(run, layout, steps) for layout in LAYOUTS]
  with tqdm(total=2 * steps, desc=f"{task} packed+padded", unit="step", file=sys.stderr) as bar:
    while any(r.remaining for r in runners):
      for runner in runners:
        bar.update(runner.advance(args.chunk))
  untimed = [r.layout for r in runners if not r.seconds]
  if untimed:
    sys.exit(f"bench_packing: error: no {task} step of layout {', '.join(untimed)} was timed "
             f"(each of the {steps} steps compiled a new batch shape); pass more --steps")
  results = {}
  for runner in runners:
    run.config.layout = runner.layout  # evaluation in the run's own layout
    dev, = loop.evaluate(runner.eval_step, runner.state.params, runner.constants, [run],
                          runner.mesh)
    results[runner.layout] = {
        "steps": steps, "timed_examples": runner.examples,
        "examples_per_second": runner.examples / runner.seconds,
        "real_token_fraction": runner.tokens / runner.slots,
        "compiled_shapes": len(runner.shapes),
        f"dev_{run.task.metric}": dev["score"], "dev_loss": dev["loss"]}
  return results


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--config", default="demo", help="config name or path")
  parser.add_argument("--tasks", default="rte,cola", help="comma-separated GLUE tasks")
  parser.add_argument("--steps", type=int, default=0, help="steps per layout (0: one epoch)")
  parser.add_argument("--chunk", type=int, default=8, help="steps per turn of each layout")
  args, rest = parser.parse_known_args(argv)
  report = {task: bench_task(args, rest, task) for task in args.tasks.split(",")}
  print(json.dumps(report, indent=2))
  for task, results in report.items():
    packed, padded = results["packed"], results["padded"]
    metric = next(k for k in packed if k.startswith("dev_") and k != "dev_loss")
    packed_rate, padded_rate = packed["examples_per_second"], padded["examples_per_second"]
    print(f"{task}: packed {packed_rate:.1f} ex/s, padded {padded_rate:.1f} ex/s: "
          f"{packed_rate / padded_rate:.2f}x; "
          f"{metric} packed {packed[metric]:.2f}, padded {padded[metric]:.2f} "
          f"({packed['steps']} steps each)", file=sys.stderr)


if __name__ == "__main__":
  main(sys.argv[1:])
