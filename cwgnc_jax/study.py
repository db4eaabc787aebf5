"""A config over many seeds in one process, and its summary: ``python -m cwgnc_jax.study``.

  python -m cwgnc_jax.study --config NAME_OR_PATH [--seeds 25 | --seeds 1,2,5 | --seeds 11-20]
      [--config.KEY=VALUE ...] [--out DIR] [--seeds-per-program K] [--workers N]
  python -m cwgnc_jax.study --table1 [--tasks rte,mrpc,cola] [--rows ROW,...]
      [--lr rte=2e-5,cola=1e-4] [--seeds ...] [--workers N] [--config.KEY=VALUE ...] [--out DIR]

``--table1`` (every row of Table 1 on every task, each at its own protocol, one learning rate
per task) and ``--workers N`` (N processes sharing the seeds): ``cwgnc_jax/table1.py``.

``--seeds N`` trains seeds 1..N (default 25, the paper's count); ``--seeds 1,2,5`` or
``--seeds 11-20`` those seeds (``--seeds 7-7``: seed 7 alone). Each seed is an ordinary
``train.py`` run directory ``DIR/<group>/seed_<s>/`` (DIR defaults to ``runs/study``); the
group is the config name followed by its overrides, e.g.
``rte_cwgnc__optimizer.clip_norm=0.1`` (operational keys such as ``--config.progress`` or
``--config.diagnostics_every`` leave it unchanged; ``--config.seed`` is refused: the seeds
come from ``--seeds``).

The seeds train one after the other and share their jitted steps (``program.steps_key``), so
each batch shape is compiled once per process, not once per seed. ``--seeds-per-program K``
trains K seeds at a time as one program instead (``loop.train_seeds``: the step vmapped over
the seeds); ``--config.mesh.seeds=G`` splits them over G groups of devices (K a multiple of
G: e.g. ``--seeds-per-program 8 --config.mesh.seeds=8`` trains 8 seeds at once, one per GPU).
Run the same command again to resume an interrupted study: a seed with ``results.json`` is
not rerun, seeds with checkpoints resume from them (together when they stopped at the same
step). A seed whose run directory another process holds is skipped, so two studies started
over the same seeds share the work.

After every seed, ``DIR/<group>/summary.json`` holds the aggregates of the group's finished
seeds, those of other invocations with other ``--seeds`` included, earlier or running beside
this one (SPEC section 3):
``std`` (population, ddof 0), ``mean``, ``max``, ``min`` of the dev score (x100),
``failed_percent`` (runs not beating the majority classifier), and one entry per seed under
``runs``. Exit status as ``train.py``: 0 done, 2 bad input or a disk that cannot take a write
(one line on stderr), 128 + the signal's number after SIGTERM or SIGINT, which stop the
program under way after its step with a checkpoint of each of its seeds (the same command
resumes them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from cwgnc_jax import command_line, config as config_lib
from cwgnc_jax import files, identity, metrics
from cwgnc_jax.training import checkpoint, loop, preemption, rundir
from cwgnc_jax.training import run as run_lib

ConfigError = config_lib.ConfigError

DEFAULT_SEEDS = 25  # the paper's seeds per Table 1 cell
DEFAULT_OUT = os.path.join("runs", "study")
PROG = "cwgnc_jax.study"
USAGE = ("usage: python -m cwgnc_jax.study --config NAME_OR_PATH "
         "[--seeds N | --seeds S1,S2-S3,...] [--config.KEY=VALUE ...] [--out DIR] "
         "[--seeds-per-program K] [--workers N], or python -m cwgnc_jax.study --table1 "
         "[--tasks rte,mrpc,cola] [--rows ROW,...] [--lr TASK=RATE,...] [--seeds ...] "
         "[--workers N] [--config.KEY=VALUE ...] [--out DIR]")


# -- The command line. ---------------------------------------------------------------------

def parse_seeds(text: str) -> list[int]:
  """``'10'`` -> seeds 1..10 (a count); otherwise a comma list of seeds and ranges:
  ``'1,2,5'``, ``'11-20'``, ``'7-7'`` (seed 7 alone), ``'1,4-6'`` (distinct ints >= 0)."""
  try:
    if text.isdigit():
      if int(text) == 0:
        raise ValueError
      return list(range(1, int(text) + 1))
    seeds = []
    for part in text.split(","):
      first, dash, last = part.partition("-")
      if not first.isdigit() or (dash and not last.isdigit()):
        raise ValueError
      start, end = int(first), int(last if dash else first)
      if end < start:
        raise ValueError
      seeds.extend(range(start, end + 1))
  except ValueError:
    raise ConfigError(f"--seeds {text}: expected a count > 0, or a comma list of seeds and "
                      "ranges such as 1,2,5 or 11-20 (one seed: 7-7)") from None
  if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
    raise ConfigError(f"--seeds {text}: seeds must be distinct ints >= 0")
  if max(seeds) > config_lib.MAX_SEED:
    raise ConfigError(f"--seeds {text}: seeds must be <= {config_lib.MAX_SEED} (jax.random.key "
                      "keeps 32 bits of a seed)")
  return seeds


FLAGS = ("--config", "--seeds", "--out", "--seeds-per-program", "--workdir")


def parse_args(argv: Sequence[str]
               ) -> tuple[str, list[tuple[str, str]], list[int], Path, int]:
  """``(config name or path, [(dotted key, value text)], seeds, output folder (absolute),
  seeds per program)``."""
  return study_args(command_line.parse(argv, usage=USAGE, flags=FLAGS, overrides=True))


def study_args(args: command_line.Args
               ) -> tuple[str, list[tuple[str, str]], list[int], Path, int]:
  """``parse_args``' tuple from a parsed command line of the study's flags (``FLAGS``)."""
  if "--workdir" in args.values:
    raise ConfigError(f"--workdir is not a study flag: runs go to --out DIR; {USAGE}")
  per_program = args.values.get("--seeds-per-program", "1")
  if not per_program.isdigit() or int(per_program) < 1:
    raise ConfigError(f"--seeds-per-program {per_program}: expected an int >= 1")
  config_arg = command_line.config_arg(args)
  if any(key == "seed" for key, _ in args.overrides):
    raise ConfigError("--config.seed is not allowed in a study: pass --seeds instead")
  return (config_arg, list(args.overrides),
          parse_seeds(args.values.get("--seeds", str(DEFAULT_SEEDS))),
          Path(args.values.get("--out", DEFAULT_OUT)).absolute(), int(per_program))


def _value(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def group_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[tuple[str, str]]) -> dict[str, Any]:
  """The overrides that change what a run computes, by key, with their resolved values
  (``1e-4`` and ``0.0001`` are one value); operational keys are left out."""
  keys = sorted({key for key, _ in overrides
                 if key.split(".")[0] not in identity.OPERATIONAL_KEYS})
  return {key: _value(config, key) for key in keys}


def group_name(config_arg: str, values: dict[str, Any]) -> str:
  """``<config>`` or ``<config>__<key>=<value>__...``, safe as a folder name (characters other
  than letters, digits and ``._=+-`` become ``-``; a long name is cut and given a hash)."""
  name = "__".join([config_lib.config_name(config_arg)]
                   + [f"{key}={value}" for key, value in values.items()])
  name = re.sub(r"[^A-Za-z0-9._=+-]", "-", name)
  if len(name) > 150:
    name = f"{name[:140]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
  return name


# -- Aggregates. ---------------------------------------------------------------------------

def aggregate(scores: Sequence[float], failed: Sequence[bool]) -> dict[str, float | None]:
  """Std (population, ddof 0), mean, max and min of the scores and the failed-run
  percentage; None for each when there is no score yet."""
  if not scores:
    return {"std": None, "mean": None, "max": None, "min": None, "failed_percent": None}
  values = np.asarray(scores, np.float64)
  return {"std": float(np.std(values)), "mean": float(np.mean(values)),
          "max": float(np.max(values)), "min": float(np.min(values)),
          "failed_percent": 100.0 * float(np.mean(np.asarray(failed, bool)))}


def summarize(group: str, config_arg: str, overrides: dict[str, Any],
              config: ml_collections.ConfigDict, seeds: Sequence[int],
              results: dict[int, dict[str, Any]]) -> dict[str, Any]:
  """The summary of a group: what it ran, the aggregates of its finished seeds, and each
  finished seed's score, failure, skipped steps and seconds (in ``seeds`` order).

  Failure is judged here by ``config.failure_rule`` (an operational key), whatever rule a
  seed's results.json was written under, so every seed of a summary is judged alike.
  """
  done = [results[seed] for seed in seeds if seed in results]
  group_identity = identity.run_identity(config)
  group_identity.pop("seed")
  majority = done[0]["majority_score"] if done else None
  threshold = lambda r: metrics.failure_threshold(config.task, config.failure_rule,
                                                  r["majority_score"])
  runs = [{"seed": r["seed"], "score": r["score"],
           "failed": metrics.is_failed(r["score"], threshold(r)),
           "skipped_steps": r["skipped_steps"],
           "seconds": r["timings"]["train_seconds"] + r["timings"]["eval_seconds"]}
          for r in done]
  return {
      "group": group, "config_name": config_lib.config_name(config_arg),
      "overrides": overrides, "task": config.task, "method": config.method,
      "model": config.model, "metric": done[0]["metric"] if done else None,
      "result": "best" if config.keep_best else "final",
      "majority_score": majority, "failure_rule": config.failure_rule,
      "failure_threshold": threshold(done[0]) if done else None,
      "seeds": list(seeds), "finished": len(done),
      **aggregate([r["score"] for r in runs], [r["failed"] for r in runs]),
      "failed_runs": sum(r["failed"] for r in runs), "runs": runs, "config": group_identity,
  }


# -- The study. ----------------------------------------------------------------------------

@dataclasses.dataclass
class Group:
  """A group's folder and its checked configs, before anything trains.

  Attributes:
    config: the group's config (seed unset).
    values: its overrides that name the group (``group_overrides``).
    name: the group folder's name (``group_name``).
    folder: ``out / name``.
    configs: per seed (asked for, or finished by earlier invocations) its run's config.
    earlier: the seeds finished by earlier invocations that were not asked for.
  """
  config: ml_collections.ConfigDict
  values: dict[str, Any]
  name: str
  folder: Path
  configs: dict[int, ml_collections.ConfigDict]
  earlier: list[int]


def open_group(config_arg: str, overrides: Sequence[tuple[str, str]], seeds: Sequence[int],
               out: str | Path) -> Group:
  """The group of ``config_arg`` with ``overrides`` in ``out``, every seed's config and run
  directory checked (ConfigError naming the first problem). Reads files only: no device is
  touched, so a process that only plans the work may call it."""
  config = config_lib.apply_overrides(config_lib.load(config_arg), overrides)
  config_lib.validate(config)
  values = group_overrides(config, overrides)
  name = group_name(config_arg, values)
  folder = Path(out) / name
  problem = files.unwritable_reason(folder)
  if problem:
    raise ConfigError(f"--out {out}: {problem}")
  # Seeds finished by earlier invocations (other --seeds) count in the summary too.
  earlier = [seed for seed in finished_seeds(folder) if seed not in seeds]
  configs = {}
  for seed in sorted(set(seeds) | set(earlier)):
    configs[seed] = config.copy_and_resolve_references()
    configs[seed].seed = seed
    rundir.check_run_dir(files.seed_dir(folder, seed), configs[seed])
    rundir.check_resume_step(files.seed_dir(folder, seed), configs[seed])
  return Group(config, values, name, folder, configs, earlier)


def run_study(config_arg: str, overrides: Sequence[tuple[str, str]], seeds: Sequence[int],
              out: str | Path, seeds_per_program: int = 1) -> dict[str, Any]:
  """Trains (or resumes, or skips) every seed of the group; returns its summary.

  Every seed's config and run directory are checked before anything trains. Seeds train
  ``seeds_per_program`` at a time as one program (``loop.train_seeds``: the step vmapped
  over seeds, split over the mesh's ``config.mesh.seeds`` axis); a program takes seeds that
  start at the same step (fresh ones, or ones whose checkpoints were saved together). A
  seed whose run directory another process holds (``files.locked``) is skipped: two studies
  over the same seeds share the work.
  """
  opened = open_group(config_arg, overrides, seeds, out)
  config, values, group, group_dir = opened.config, opened.values, opened.name, opened.folder
  configs = opened.configs
  run_lib.use_compilation_cache(config)
  seeds_axis = config.mesh.get("seeds", 1)
  if seeds_per_program % seeds_axis:
    raise ConfigError(f"--seeds-per-program {seeds_per_program} does not split over "
                      f"config.mesh.seeds={seeds_axis} (it must be a multiple)")
  if jax.device_count() % seeds_axis:
    raise ConfigError(f"config.mesh.seeds={seeds_axis} does not divide the "
                      f"{jax.device_count()} devices")
  for axis in range(1, seeds_axis + 1):  # a last, smaller program uses a divisor of it
    if seeds_axis % axis == 0:
      config_lib.check_devices(config, jax.device_count() // axis)
  results = {seed: read_results(group_dir, seed) for seed in opened.earlier}
  every_seed = sorted(configs)

  main = rundir.is_main_process()
  steps_cache: dict[str, Any] = {}

  def prepare(seed: int) -> run_lib.Run:
    try:
      return run_lib.prepare(configs[seed], files.seed_dir(group_dir, seed))
    except (ValueError, OSError) as e:  # missing files, bad data or weights
      raise ConfigError(f"seed {seed}: {e}") from e

  def start(seed: int) -> int:
    return rundir.start_step(files.seed_dir(group_dir, seed), configs[seed])

  def held(seed: int) -> bool:
    return files.is_locked(files.seed_dir(group_dir, seed))

  def finished(seed: int) -> bool:
    return (files.seed_dir(group_dir, seed) / files.RESULTS_FILE).is_file()

  progress = tqdm(total=len(seeds), desc=group, unit="seed", dynamic_ncols=True,
                  file=sys.stderr, disable=not (config.progress and main))
  todo = list(seeds)
  while todo:
    seed = todo[0]
    if finished(seed):
      results[seed] = read_results(group_dir, seed)
      done = [seed]
    elif held(seed):
      tqdm.write(f"seed {seed}: {files.seed_dir(group_dir, seed)} is being trained by "
                 "another process; skipped", file=sys.stderr)
      done = [seed]
    else:
      program = [s for s in todo if not finished(s) and start(s) == start(seed)
                 and not held(s)][:seeds_per_program]
      try:
        trained = loop.train_seeds([prepare(s) for s in program], steps_cache,
                                   seeds_axis=math.gcd(len(program), seeds_axis))
        results.update(zip(program, trained))
        done = program
      except files.LockedError as e:
        # Another process took some of them meanwhile: leave it those, and train the rest
        # in the next rounds (the seeds in hand were released when train_seeds failed).
        done = [s for s in program if held(s)]
        tqdm.write(f"seeds {done}: {e}; skipped" if done else
                   f"seeds {program}: {e}; trying again", file=sys.stderr)
    todo = [s for s in todo if s not in done]
    progress.update(len(done))
    if main:
      group_dir.mkdir(parents=True, exist_ok=True)
    # Another process with other seeds of this group (a worker, study.sh on the other core)
    # may have finished some meanwhile: the summary counts every seed whose results are on
    # disk. Read and written under the group's lock, so that a summary read before another
    # process's newer one was written cannot replace it and lose a seed.
    with files.locked(group_dir) if main else contextlib.nullcontext():
      for other in finished_seeds(group_dir):
        if other not in results:
          results[other] = read_results(group_dir, other)
      every_seed = sorted(set(every_seed) | set(results))
      summary = summarize(group, config_arg, values, config, every_seed, results)
      if main:
        with files.writing(group_dir / files.SUMMARY_FILE, fix="free space or pass another "
                           "--out; a rerun skips the finished seeds"):
          files.write_json(group_dir / files.SUMMARY_FILE, summary)
    if summary["finished"]:
      progress.set_postfix(mean=f"{summary['mean']:.2f}", std=f"{summary['std']:.2f}",
                           failed=f"{summary['failed_runs']}/{summary['finished']}")
  progress.close()
  return summarize(group, config_arg, values, config, every_seed, results)


def read_results(group_dir: Path, seed: int) -> dict[str, Any]:
  """The results.json of ``seed`` in a group folder, checked to hold what ``summarize``
  reads (ConfigError naming it and the key otherwise)."""
  path = files.seed_dir(group_dir, seed) / files.RESULTS_FILE
  fix = "restore it, or move its seed folder away and rerun the study to train it again"
  try:
    results = files.read_results(path, fix)
    files.check_fields(results, {"seed": int, "timings": dict}, path, "", fix)
    files.check_fields(results["timings"], {"train_seconds": files.NUMBER,
                                            "eval_seconds": files.NUMBER}, path, "timings", fix)
  except (ValueError, OSError) as e:
    raise ConfigError(str(e)) from None
  return results


def finished_seeds(group_dir: Path) -> list[int]:
  """The seeds with a ``seed_<s>/results.json`` in ``group_dir``, ascending."""
  found = [files.seed_of(p.parent) for p in Path(group_dir).glob(f"seed_*/{files.RESULTS_FILE}")]
  return sorted(seed for seed in found if seed is not None)


def main(argv: list[str]) -> None:
  if command_line.asks_for_help(argv):
    print(__doc__.strip())
    print("configs:", ", ".join(config_lib.available()))
    return
  # The whole of Table 1, and workers: a module of their own (it imports this one).
  from cwgnc_jax import table1  # pylint: disable=import-outside-toplevel
  if table1.is_plan_command(argv):
    sys.exit(table1.main(argv))
  with preemption.handled():
    try:
      config_arg, overrides, seeds, out, per_program = parse_args(argv)
      summary = run_study(config_arg, overrides, seeds, out, per_program)
    except (ConfigError, files.LockedError, checkpoint.CheckpointError, files.WriteError) as e:
      command_line.fail_on(PROG, e)
    except preemption.Stopped as e:
      print(f"cwgnc_jax.study: {e}", file=sys.stderr)
      sys.exit(e.exit_status)
  print(json.dumps({k: summary[k] for k in ("group", "finished", "std", "mean", "max", "min",
                                            "failed_percent")}))
  print(f"summary: {Path(out) / summary['group'] / files.SUMMARY_FILE}", file=sys.stderr)


if __name__ == "__main__":
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  from cwgnc_jax.training import host_memory  # pylint: disable=import-outside-toplevel
  host_memory.keep_freed_memory()  # before the first JAX computation, as train.py
  main(sys.argv[1:])
