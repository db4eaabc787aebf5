"""Seeds per hour of one study command with ``--workers N`` against one process, side by side.

  GLUE_DIR=../shared/glue PYTHONPATH=. python benchmarks/bench_study_workers.py
      [--seeds 4] [--train-limit 320] [--workers 2] [--task rte] [--repeats 1]

Both are ``python -m cwgnc_jax.study --config <task>_cwgnc`` as a user starts it, on a short
real config: MiniLM-L6 (``--config.model=minilm-l6``), the first ``--train-limit`` real GLUE
train examples, 1 epoch, the whole real dev set. First one seed trains untimed, so that the
tokenized data and the compiled steps are in their caches for both; then, ``--repeats``
times, order swapped every round, ``--seeds`` seeds train into a fresh folder in one process
(``--workers 1``: every usable core) and with ``--workers N`` (each worker pinned to its own
cores), timed from start to exit. Prints each one's seeds per hour and their ratio (the goal
on the 2-core host: >= 1.3x), and the host.

A worker pays its own start (imports, data, loading cached steps) once per command, so the
ratio grows with the seeds' length; with fewer usable cores than workers it measures
nothing but that overhead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host import describe

REPO = Path(__file__).resolve().parent.parent


def study(task: str, seeds: str, train_limit: int, out: Path, workers: int) -> float:
  """Seconds of one ``python -m cwgnc_jax.study`` command (exit status 0 required)."""
  command = [sys.executable, "-m", "cwgnc_jax.study", "--config", f"{task}_cwgnc",
             "--seeds", seeds, "--workers", str(workers), "--out", str(out),
             "--config.model=minilm-l6", f"--config.train_limit={train_limit}",
             "--config.num_epochs=1", "--config.progress=false",
             "--config.diagnostics_every=0"]
  start = time.perf_counter()
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if done.returncode:
    sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
  return seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=4, help="seeds per timed command")
  parser.add_argument("--train-limit", type=int, default=320,
                      help="real train examples per seed (320: 20 steps of 16)")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--task", default="rte", choices=("rte", "mrpc", "cola"))
  parser.add_argument("--repeats", type=int, default=1)
  args = parser.parse_args()
  print(f"host: {describe()}", flush=True)
  with tempfile.TemporaryDirectory(prefix="bench_study_workers_") as scratch:
    scratch = Path(scratch)
    warm = study(args.task, "1000-1000", args.train_limit, scratch / "warm", 1)
    print(f"warm-up seed (fills the caches): {warm:.1f} s", flush=True)
    times = {1: [], args.workers: []}
    for repeat in range(args.repeats):
      order = [1, args.workers] if repeat % 2 == 0 else [args.workers, 1]
      for workers in order:
        out = scratch / f"r{repeat}_w{workers}"
        times[workers].append(study(args.task, str(args.seeds), args.train_limit, out,
                                    workers))
        print(f"  round {repeat + 1}, --workers {workers}: {times[workers][-1]:.1f} s for "
              f"{args.seeds} seeds", flush=True)
  rate = {w: 3600 * args.seeds * len(t) / sum(t) for w, t in times.items()}
  print(f"{args.task}, train_limit {args.train_limit}, 1 epoch, {args.seeds} seeds x "
        f"{args.repeats}: one process {rate[1]:.1f} seeds/h, --workers {args.workers} "
        f"{rate[args.workers]:.1f} seeds/h: {rate[args.workers] / rate[1]:.2f}x")


if __name__ == "__main__":
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  main()
