"""The machine a benchmark runs on, in one line: its figures move with the host (and XLA's flags).

On 2026-12-03 the same benchmarks ran on two hosts of 2 cores each, and the ratios against
PyTorch differed by a third (docs/performance.md, "Where the goals stand"): every benchmark that
compares across runs prints this line, so a figure can be traced to its machine.
"""

from __future__ import annotations

import os
import platform

# The vector units that decide a CPU's matmul rate, in the order they are reported.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "asimd", "sve")


def describe() -> str:
  """'<CPU model>, <n> cores usable, <vector units>', from /proc/cpuinfo where there is one,
  and '; XLA_FLAGS=...' when they are set (they choose XLA:CPU's kernels)."""
  model, flags = "", set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
          model = value.strip()
        elif key in ("flags", "Features") and not flags:
          flags = set(value.split())
  except OSError:  # not Linux
    pass
  units = " ".join(flag for flag in VECTOR_FLAGS if flag in flags) or "vector units unknown"
  xla_flags = os.environ.get("XLA_FLAGS", "").strip()
  return (f"{model or platform.processor() or platform.machine()}, "
          f"{usable_cores()} cores usable, {units}"
          + (f"; XLA_FLAGS={xla_flags!r}" if xla_flags else ""))


def usable_cores() -> int:
  """The cores this process may run on (its affinity on Linux; all of them elsewhere)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1
