"""Fine-tunes a pretrained BERT on a GLUE task: ``python train.py --config rte_cwgnc``.

  python train.py --config NAME_OR_PATH [--config.KEY=VALUE ...] [--workdir DIR]

NAME is a file of ``configs/`` (``rte_cwgnc``, ``demo``, ...) or the path of a config file;
``--config.optimizer.learning_rate=1e-5``, ``--config.seed=3`` etc. override its values. The
run directory (default ``runs/<config>_seed<seed>``) receives ``metrics.jsonl``, TensorBoard
events, checkpoints and ``results.json``; running the same command again resumes from its
latest checkpoint.

Exit status: 0 done; 2 bad input (config, task, model, data, devices, run directory or
checkpoint), reported in one line on stderr before anything is compiled or written, or a
disk that cannot take a write (full, read-only, failing: the line names the file); 128 + the
signal's number (143, 130) when SIGTERM or SIGINT stopped the run, after the step under way
and a checkpoint of it (``training/preemption.py``). Rerun the same command to resume.
"""

from __future__ import annotations

import json
import os
import sys

# transformers announces at import that it found no PyTorch (this project never uses it).
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# pylint: disable=wrong-import-position
from cwgnc_jax import command_line, config as config_lib
from cwgnc_jax.training import host_memory

# Before the first JAX computation starts XLA's threads: XLA's per-step buffers stay mapped
# (a third faster on a CPU).
host_memory.keep_freed_memory()

from cwgnc_jax import files
from cwgnc_jax.training import checkpoint, loop, preemption
from cwgnc_jax.training import run as run_lib
# pylint: enable=wrong-import-position

PROG = "train.py"


def fail(message: str) -> None:
  command_line.fail(PROG, message)


def main(argv: list[str]) -> None:
  if command_line.asks_for_help(argv):
    print(__doc__.strip())
    print("configs:", ", ".join(config_lib.available()))
    return
  try:
    config, workdir = command_line.train_config(argv)
  except config_lib.ConfigError as e:
    fail(str(e))
  if config.mesh.get("seeds", 1) != 1:
    fail(f"config.mesh.seeds={config.mesh.seeds} splits seeds trained together; train.py "
         "trains one seed: use python -m cwgnc_jax.study --seeds-per-program")
  run_lib.maybe_initialize_distributed(config)
  run_lib.use_compilation_cache(config)
  with preemption.handled():  # after jax.distributed's own SIGTERM handler
    try:
      try:
        run = run_lib.prepare(config, workdir)
      except (ValueError, OSError) as e:  # ConfigError, missing files, no hub, bad data
        fail(str(e))
      try:
        results = loop.train(run)
      except (config_lib.ConfigError, files.LockedError, checkpoint.CheckpointError,
              files.WriteError) as e:
        command_line.fail_on(PROG, e)
    except preemption.Stopped as e:
      print(f"train.py: {e}", file=sys.stderr)
      sys.exit(e.exit_status)
  summary = {k: results[k] for k in ("task", "method", "seed", "metric", "score",
                                     "majority_score", "failed", "skipped_steps")}
  print(json.dumps(summary))
  print(f"results: {workdir}/results.json", file=sys.stderr)


if __name__ == "__main__":
  main(sys.argv[1:])
