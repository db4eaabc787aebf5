"""Worker processes that share a plan's seeds (``python -m cwgnc_jax.study ... --workers N``).

Each of the N workers is a process of its own that goes through every group of the plan
(``table1.Plan``) and trains its seeds with ``study.run_study``; a seed whose run directory
another worker holds (``files.locked``) is skipped, so the workers share the seeds without
being told which to take, and a seed is trained once. Worker k starts each group's seed list
k/N of the way in, so that the workers begin on different seeds. Each worker is pinned to
its own cores (``os.sched_setaffinity``: XLA sizes its thread pool by them) and, on a GPU
host, sees its own GPUs (``CUDA_VISIBLE_DEVICES``).

This process shows one progress line (seeds done, running, waiting; workers running and
failed) whenever it changes, forwards Ctrl-C and SIGTERM to the workers as SIGTERM (a second
one: SIGKILL) and waits for them: a stopped worker leaves its run directory to resume from
its last checkpoint. A worker that dies the same way leaves its seed unfinished, for the next
run of the command (or another worker that has not passed it yet).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from cwgnc_jax import config as config_lib
from cwgnc_jax import files

ConfigError = config_lib.ConfigError

# The cores one run uses well on a CPU host, measured on the 2-core host of docs/: a MiniLM-L6
# RTE step on both cores keeps one core's worth of threads busy (thread time 874 ms of 875 ms
# wall: XLA:CPU runs one thunk at a time; docs/benchmarks.md as of commit 1cb9873), the
# attention matmuls on one thread (docs/performance.md), and two runs pinned to one core each
# make 70 + 70 steps a minute (docs/results.md). benchmarks/bench_study_workers.py measures
# what --workers 2 gains.
CPU_CORES_PER_RUN = 1
POLL_SECONDS = 2.0
_PR_SET_PDEATHSIG = 1  # prctl(2)


def usable_cores() -> list[int]:
  """The cores this process may run on (its affinity), ascending."""
  return sorted(os.sched_getaffinity(0))


def visible_gpus() -> list[str]:
  """The NVIDIA GPUs the workers may share, as ``CUDA_VISIBLE_DEVICES`` names them: its
  entries where it is set, else one per GPU the driver lists; none where JAX has no CUDA
  plugin or ``JAX_PLATFORMS`` keeps it off CUDA."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms and not {"cuda", "gpu"} & set(platforms.split(",")):
    return []
  if not any(d.metadata["Name"].startswith("jax-cuda")
             for d in importlib.metadata.distributions()):
    return []
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [d.strip() for d in visible.split(",") if d.strip() not in ("", "-1")]
  try:
    return [str(i) for i in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
  except OSError:
    return []


def default_workers() -> int:
  """One worker per GPU on a GPU host; else the usable cores over ``CPU_CORES_PER_RUN``."""
  gpus = visible_gpus()
  return len(gpus) if gpus else max(1, len(usable_cores()) // CPU_CORES_PER_RUN)


def assignments(count: int, cores: Sequence[int] | None = None,
                gpus: Sequence[str] | None = None) -> list[tuple[list[int], list[str]]]:
  """Worker k's cores and GPUs (defaults: ``usable_cores()``, ``visible_gpus()``).

  The cores in ``count`` contiguous blocks (worker k: ``cores[k*n//count:(k+1)*n//count]``);
  with fewer cores than workers, worker k shares core ``cores[k % n]``. GPUs likewise, one
  block each; more workers than GPUs is refused (ConfigError): two processes would each
  claim most of one GPU's memory.
  """
  cores = usable_cores() if cores is None else list(cores)
  gpus = visible_gpus() if gpus is None else list(gpus)
  if gpus and count > len(gpus):
    raise ConfigError(f"--workers {count}: only {len(gpus)} GPUs ({','.join(gpus)}) to give "
                      "each worker its own")

  def block(items: list, k: int) -> list:
    if not items:
      return []
    if count > len(items):
      return [items[k % len(items)]]
    return items[k * len(items) // count:(k + 1) * len(items) // count]

  return [(block(cores, k), block(gpus, k)) for k in range(count)]


# -- This process: start, watch, stop. -----------------------------------------------------

def _start(job: dict[str, Any], cores: list[int], gpus: list[str]) -> subprocess.Popen:
  env = dict(os.environ)
  if gpus:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
  libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

  def pin() -> None:  # in the child, before it runs Python: XLA then sees these cores only
    os.sched_setaffinity(0, cores)
    if libc is not None:  # a worker outlives no parent, however the parent ends
      libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

  # A session of its own: Ctrl-C reaches this process, which stops the workers itself.
  return subprocess.Popen([sys.executable, "-m", "cwgnc_jax.workers", json.dumps(job)],
                          env=env, preexec_fn=pin, start_new_session=True)


def _holder(run_dir: Path) -> int | None:
  """The pid the last holder of ``run_dir``'s lock wrote in it (``files.locked``), if any."""
  try:
    text = (run_dir / files.LOCK_FILE).read_text().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None


def _state(folders: dict[Any, Path], pids: set[int]) -> tuple[int, list[str], int]:
  """(seeds done, 'group seed s' of those running, seeds waiting) from the run directories.
  A seed runs if a live worker (``pids``) took its lock last: the lock itself is not probed
  (``files.is_locked``), since a worker that probed it at that instant would skip the seed."""
  done, running, waiting = 0, [], 0
  for entry, folder in folders.items():
    for seed in entry.seeds:
      run_dir = files.seed_dir(folder, seed)
      if (run_dir / files.RESULTS_FILE).is_file():
        done += 1
      elif _holder(run_dir) in pids:
        running.append(f"{config_lib.config_name(entry.config_arg)} seed {seed}")
      else:
        waiting += 1
  return done, running, waiting


def progress_line(done: int, running: Sequence[str], waiting: int, alive: int, failed: int
                  ) -> str:
  total = done + len(running) + waiting
  shown = f" ({', '.join(running)})" if running else ""
  return (f"cwgnc_jax.study: {done}/{total} seeds done, {len(running)} running{shown}, "
          f"{waiting} waiting; workers: {alive} running, {failed} failed")


def run(plan: Any, folders: dict[Any, Path], assigned: Sequence[tuple[list[int], list[str]]]
        ) -> tuple[int, dict[Path, list[int]]]:
  """Trains ``plan`` (a ``table1.Plan``, its groups' ``folders`` by entry) in one worker per
  ``assigned`` (cores, GPUs); returns the exit status (0 all done; 128 + signal when stopped;
  1 otherwise) and the unfinished seeds by group folder."""
  entries = [[e.config_arg, [list(o) for o in e.overrides], list(e.seeds)]
             for e in plan.entries]
  jobs = [{"entries": entries, "out": str(plan.out), "seeds_per_program":
           plan.seeds_per_program, "worker": k, "workers": len(assigned)}
          for k in range(len(assigned))]
  stopped: list[int] = []
  procs: list[subprocess.Popen] = []

  def stop(signum, frame) -> None:
    del frame
    stopped.append(signum)
    for proc in procs:
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM if len(stopped) == 1 else signal.SIGKILL)

  handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    for job, (cores, gpus) in zip(jobs, assigned):
      procs.append(_start(job, cores, gpus))
      if stopped:  # a signal came while starting: the ones started so far got it
        stop(stopped[0], None)
    shown = None
    while True:
      alive = {proc.pid for proc in procs if proc.poll() is None}
      failed = sum(proc.poll() not in (None, 0) for proc in procs)
      line = progress_line(*_state(folders, alive), len(alive), failed)
      if line != shown:
        print(line, file=sys.stderr, flush=True)
        shown = line
      if not alive:
        break
      time.sleep(POLL_SECONDS)
  finally:
    for proc in procs:  # none is alive unless this process failed: then they stop too
      if proc.poll() is None:
        proc.terminate()
      proc.wait()
    for s, handler in handlers.items():
      signal.signal(s, handler)
  unfinished = {}
  for entry, folder in folders.items():
    left = [s for s in entry.seeds
            if not (files.seed_dir(folder, s) / files.RESULTS_FILE).is_file()]
    if left:
      unfinished[folder] = left
  if stopped:
    return 128 + stopped[0], unfinished
  return (1 if unfinished or any(proc.returncode for proc in procs) else 0), unfinished


# -- A worker. -----------------------------------------------------------------------------

def rotated(seeds: Sequence[int], worker: int, workers: int) -> list[int]:
  """``seeds`` starting ``worker/workers`` of the way in (worker 1 of 2: the second half
  first), so that workers begin on different seeds."""
  shift = len(seeds) * worker // workers
  return [*seeds[shift:], *seeds[:shift]]


def _say(line: str) -> None:
  """One line on the stderr the workers share, in one write: print's two writes (the text,
  then the newline) let two workers' lines run together."""
  sys.stderr.write(f"{line}\n")
  sys.stderr.flush()


def work(job: dict[str, Any]) -> int:
  """Trains every group of ``job`` (its seeds rotated for this worker), skipping seeds other
  processes hold; a group that fails is reported and the next one tried. Exit status: 0 if
  no group failed, else 1; stopped by a signal (the parent forwards SIGINT and SIGTERM as
  SIGTERM), its program saved at a step boundary as train.py's: 128 + the signal; a disk that
  refused a write: 2, at once (every later group would write there too)."""
  # pylint: disable=import-outside-toplevel (jax: in workers only)
  from cwgnc_jax import study
  from cwgnc_jax.training import preemption
  status = 0
  prefix = f"cwgnc_jax.study: worker {job['worker']}"
  with preemption.handled():
    for config_arg, overrides, seeds in job["entries"]:
      # Progress is this worker's parent's to show.
      overrides = [tuple(o) for o in overrides] + [("progress", "false")]
      try:
        study.run_study(config_arg, overrides, rotated(seeds, job["worker"], job["workers"]),
                        job["out"], job["seeds_per_program"])
      except preemption.Stopped as e:
        _say(f"{prefix}: {e}")
        return e.exit_status
      except files.WriteError as e:  # as train.py: orbax's writer threads may still run
        _say(f"{prefix}: error: {e}")
        os._exit(2)  # pylint: disable=protected-access
      except Exception as e:  # pylint: disable=broad-except (the next group may still train)
        if not isinstance(e, (ConfigError, files.LockedError)):
          traceback.print_exc()
        _say(f"{prefix}: {config_lib.config_name(config_arg)}: error: {e}")
        status = 1
  return status


if __name__ == "__main__":
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  from cwgnc_jax.training import host_memory  # pylint: disable=import-outside-toplevel
  host_memory.keep_freed_memory()  # before the first JAX computation, as train.py
  sys.exit(work(json.loads(sys.argv[1])))
