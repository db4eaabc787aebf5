"""Keeping freed host memory mapped (``training/host_memory.py``): the training step with and
without it, side by side in one run.

Runs ``benchmarks/bench_train.py`` (the config's real training step, compiled, then timed)
in child processes, alternately with ``CWGNC_KEEP_FREED_MEMORY=1`` and ``=0``, ``--rounds``
times, and reads from each child its seconds per step, its kernel (system) CPU time and its
minor page faults (``os.wait4``). The losses of the children's first passes over the same
batches must be identical: the setting moves buffers, never numbers.

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/bench_host_memory.py [--rounds 2]
      [--steps 12] [--config NAME] [--config.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH_TRAIN = Path(__file__).resolve().parent / "bench_train.py"
SETTINGS = {"kept": "1", "glibc default": "0"}


def measure(keep: str, steps: int, rest: list[str]) -> dict[str, float]:
  """One bench_train.py child: seconds per step, its first-pass losses, kernel CPU seconds
  and minor page faults."""
  child = subprocess.Popen(
      [sys.executable, str(BENCH_TRAIN), "--steps", str(steps), "--repeats", "2", *rest],
      env={**os.environ, "CWGNC_KEEP_FREED_MEMORY": keep}, stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL, text=True)
  out = child.stdout.read()
  _, status, usage = os.wait4(child.pid, 0)
  if status != 0:
    sys.exit(f"bench_host_memory: error: bench_train.py exited with status {status >> 8}")
  report = json.loads(out)
  return {"seconds_per_step": report["seconds_per_step"],
          "losses": report["first_pass_losses"],
          "system_seconds": usage.ru_stime, "minor_faults": usage.ru_minflt}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--rounds", type=int, default=2, help="children per setting")
  parser.add_argument("--steps", type=int, default=12, help="batches per timed pass")
  args, rest = parser.parse_known_args(argv)
  runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
  for _ in range(args.rounds):  # interleaved, so a drift in machine load hits both
    for name, keep in SETTINGS.items():
      runs[name].append(measure(keep, args.steps, rest))
  losses = {json.dumps(run["losses"]) for all_runs in runs.values() for run in all_runs}
  median = {name: {key: statistics.median(run[key] for run in all_runs)
                   for key in ("seconds_per_step", "system_seconds", "minor_faults")}
            for name, all_runs in runs.items()}
  for name, m in median.items():
    print(f"{name:>14}: {m['seconds_per_step']:.3f} s/step, {m['system_seconds']:.1f} s in the "
          f"kernel, {m['minor_faults']:,.0f} minor page faults (median of {args.rounds})")
  kept, default = median["kept"], median["glibc default"]
  print(f"speed-up kept / glibc default: "
        f"{default['seconds_per_step'] / kept['seconds_per_step']:.2f}x; page faults "
        f"{kept['minor_faults'] / default['minor_faults']:.2f}x; first-pass losses identical: "
        f"{len(losses) == 1}")
  if len(losses) != 1:
    sys.exit("bench_host_memory: error: the first-pass losses differ between the children")


if __name__ == "__main__":
  main(sys.argv[1:])
