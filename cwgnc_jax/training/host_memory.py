"""Host memory on the CPU backend: keep what XLA frees mapped for its next step.

XLA's CPU runtime gives each execution of a compiled program one temporary buffer, taken
with ``malloc`` and freed when the execution ends: about 690 MB for a MiniLM-L6 training
step at batch 16 x 128. glibc serves a request that large with a fresh ``mmap`` (it is above
glibc's largest mmap threshold, 32 MB, and a thread's own arena could not hold it anyway: its
heaps are at most 64 MB) and unmaps it on ``free``, so every step maps it anew and the kernel
zero-fills each of its 4 KiB pages on first touch. Measured here: 160,000 page faults a
second, a quarter of the compute thread's time in the kernel; steps run 1.35x faster once
the buffer stays mapped (``benchmarks/bench_host_memory.py``).

:func:`keep_freed_memory` makes glibc serve every thread from the main arena, never by
``mmap``, and never give freed memory back to the kernel (``mallopt``: ``M_ARENA_MAX`` 1,
``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` 2 GiB - 1), so the next step reuses pages that are
already mapped (after the first steps: the heap grows until it holds a free hole the buffer
fits, measured within 40 calls of a 40 MB program). The process then keeps its peak host
memory until it exits, which for a training process is what it holds anyway. Numbers are
unchanged: it only moves where buffers live.

It has to run before JAX creates its threads (before the first JAX computation): glibc fixes
the number of arenas when a thread first needs one of its own. ``CWGNC_KEEP_FREED_MEMORY=0``
turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int

ENV_VAR = "CWGNC_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory mapped (module docstring); True if it did.

  A no-op returning False off Linux, without glibc's ``mallopt``, or with
  ``CWGNC_KEEP_FREED_MEMORY=0``.
  """
  if os.environ.get(ENV_VAR, "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl)
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
  return all(mallopt(option, value) == 1 for option, value in settings)
