"""Keeping freed host memory mapped: XLA's per-execution buffers stop being faulted in anew."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Imports as train.py does, then runs a program whose temporary buffer (sin(x), 40 MB) is
# larger than glibc's largest mmap threshold (32 MB), and counts the page faults of each call.
# With memory kept, the heap still grows now and then until it has a free hole the buffer
# fits (measured: the last growth came anywhere from the 3rd to the 37th call), so the test
# looks at the median call, not the mean of a few.
PROGRAM = """
import json, resource, statistics
from cwgnc_jax import config
from cwgnc_jax.training import host_memory
kept = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
program = jax.jit(lambda x: jnp.sin(x).T @ jnp.sin(x))
x = jnp.ones((10240, 1024), jnp.float32)
for _ in range(20):  # the first calls grow the heap
  program(x).block_until_ready()
faults = []
for _ in range(41):
  start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  program(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(json.dumps({"kept": kept, "median_faults_per_call": statistics.median(faults)}))
"""


def run_program(keep: str) -> dict:
  done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True,
                        text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(REPO),
                             "CWGNC_KEEP_FREED_MEMORY": keep})
  assert done.returncode == 0, done.stderr
  return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_not_faulted_in_again_at_every_execution():
  kept, default = run_program("1"), run_program("0")
  assert kept["kept"] is True and default["kept"] is False
  # glibc's default maps the 40 MB buffer anew at every call: 10,240 pages of 4 KiB.
  assert default["median_faults_per_call"] > 5000, default
  assert kept["median_faults_per_call"] < 0.05 * default["median_faults_per_call"], (kept, default)
