"""Throughput of the training step of a config, and the fraction of this machine's peak.

Builds the run and its step as ``train.py`` does (``run.prepare``: model, tokenizer, data;
``program.first_stage_program``: the step, without per-tensor gradient norms), takes
the first ``--steps`` batches of epoch 0, runs them once to compile every batch shape, then
times the same batches again (``--repeats`` times, the best pass reported). Useful FLOPs count
only real (non-padding) tokens, for forward and backward (``accounting.useful_flops``, with
``cls_only_last_layer`` the last layer's as it computes them). The peak is the best of
several jitted 2048 x 2048 matmuls in the config's compute dtype (2 * 2048^3 FLOPs each;
bfloat16 and float16 operands sum in float32, as the model's dense layers do), measured in
the same process before and after the steps. Like ``train.py``, it keeps freed host memory
mapped (``training/host_memory.py``).

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/bench_train.py            # demo config
  PYTHONPATH=. python benchmarks/bench_train.py --config demo --config.layout=padded
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from cwgnc_jax.training import host_memory  # pylint: disable=wrong-import-position

host_memory.keep_freed_memory()  # before JAX starts its threads

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from cwgnc_jax import config as config_lib  # pylint: disable=wrong-import-position
from cwgnc_jax import command_line  # pylint: disable=wrong-import-position
from cwgnc_jax import models  # pylint: disable=wrong-import-position
from cwgnc_jax.training import program as program_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.training import run as run_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.training import step as step_lib  # pylint: disable=wrong-import-position
from accounting import useful_flops  # pylint: disable=wrong-import-position
from host import describe  # pylint: disable=wrong-import-position


def matmul_peak(dtype: str = "float32", size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of the best of ``repeats`` jitted ``size x size`` matmuls of ``dtype`` operands,
  summed in float32 (on AMX CPUs bfloat16's peak is several times float32's)."""
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  matmul = jax.jit(functools.partial(jnp.matmul, preferred_element_type=jnp.float32))
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--config", default="demo", help="config name or path")
  parser.add_argument("--steps", type=int, default=12, help="batches per timed pass")
  parser.add_argument("--repeats", type=int, default=2, help="timed passes (best reported)")
  args, rest = parser.parse_known_args(argv)
  config, _ = command_line.train_config(["--config", args.config, *rest])
  run = run_lib.prepare(config, tempfile.mkdtemp(prefix="bench_train_"))
  model_config = dataclasses.replace(models.load_config(config.model),
                                     **config_lib.model_overrides(config))

  program = program_lib.first_stage_program(run)
  mesh, constants, train_step = program.mesh, program.constants, program.train_step
  state = program.fresh_state()
  batches = list(itertools.islice(run_lib.epoch_batches(run, 0, row_multiple=run.num_devices),
                                  args.steps))
  flops = sum(useful_flops(b, model_config, run.task.num_labels) for b in batches)
  examples = sum(float(b["example_mask"].sum()) for b in batches)
  slots = sum(b["segment_ids"].size for b in batches)
  tokens = sum(int((b["segment_ids"] != 0).sum()) for b in batches)

  peak_before = matmul_peak(config.dtype)
  losses = []
  for batch in batches:  # compiles every shape
    state, metrics = train_step(state, step_lib.put_batch(batch, mesh), constants)
    losses.append(metrics["loss"])
  jax.block_until_ready(metrics)
  best = float("inf")
  for _ in range(args.repeats):
    placed = [step_lib.put_batch(b, mesh) for b in batches]
    start = time.perf_counter()
    for batch in placed:
      state, metrics = train_step(state, batch, constants)
    jax.block_until_ready((state, metrics))
    best = min(best, time.perf_counter() - start)
  peak = max(peak_before, matmul_peak(config.dtype))

  report = {
      "config": config_lib.config_name(args.config), "model": config.model,
      "layout": config.layout, "batch_size": config.batch_size, "dtype": config.dtype,
      "devices": run.num_devices, "backend": jax.default_backend(), "host": describe(),
      "steps": len(batches),
      "seconds_per_step": best / len(batches),
      "examples_per_second": examples / best,
      "real_tokens_per_second": tokens / best,
      "real_token_fraction": tokens / slots,
      "useful_gflops_per_second": flops / best / 1e9,
      "matmul_peak_gflops_per_second": peak / 1e9,
      "fraction_of_peak": flops / best / peak,
      "first_pass_losses": [float(loss) for loss in losses],
  }
  print(json.dumps(report, indent=2))
  print(f"{report['examples_per_second']:.1f} examples/s, "
        f"{report['useful_gflops_per_second']:.1f} useful GFLOP/s = "
        f"{100 * report['fraction_of_peak']:.0f}% of the "
        f"{report['matmul_peak_gflops_per_second']:.0f} GFLOP/s {config.dtype} matmul peak",
        file=sys.stderr)


if __name__ == "__main__":
  main(sys.argv[1:])
