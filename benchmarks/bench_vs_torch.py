"""This project's training step against PyTorch's HF BERT on the same real batches, side by side.

For each task, the first ``--steps`` batches of epoch 0 (the same examples in the same order
for everyone: ``batching.train_batches``) go through

  * jax packed     this project's jitted step, packed layout (the default of ``train.py``)
  * jax padded     this project's jitted step, every example padded to 128 (``--jax-padded``)
  * torch pad-128  HF ``BertForSequenceClassification`` in PyTorch, every batch padded to 128
                   tokens, as the authors' ``run_glue`` did (``pad_to_max_length``)
  * torch longest  the same, each batch padded to its longest example (what an HF Trainer
                   user gets with dynamic padding)

all from the same pretrained MiniLM-L6 weights, with dropout on, and the same CWGNC step:
the PyTorch one is the authors' loop (``loss.backward()``, then ``clip_grad_norm_(p, 0.05)``
on every parameter tensor, then ``torch.optim.AdamW`` with weight decay off on biases and
LayerNorm, and the linear warmup/decay schedule of ``transformers``). The runners advance
alternately, ``--chunk`` steps at a time, so a change in the machine's load hits all alike
(jax padded excepted: it runs alone after the others, below);
every step is timed to completion (the ratios are of the summed step times; the ratios of
the median steps, less sensitive to bursts of load from other processes, are printed beside
them). Each JAX batch shape is compiled before timing (on a
throwaway state), and each PyTorch runner takes one untimed warm-up step (on a throwaway copy
of its model), so only steady-state steps are compared. The process keeps freed host memory
mapped (``training/host_memory.py``) for both frameworks, as ``train.py`` does.

With ``--config.dtype=bfloat16`` both sides compute in bfloat16 with float32 parameters: this
project's model (``bert.low_precision_dense``), and PyTorch's forward under
``torch.autocast("cpu", dtype=torch.bfloat16)``, its mixed precision (the backward follows the
forward's dtypes). The issue's goals are for float32, the authors' precision; a bfloat16 run
prints its ratios without them.

Only one JAX program lives in the process at a time, as in ``train.py``: jax padded is built
after jax packed is timed and dropped, and runs its steps alone. With both jitted steps and
their states resident and alternating, the packed step took 29% longer (CoLA, 0.222 against
0.172 s per step, measured 2026-12-03), an artefact of this benchmark, not of training.

PyTorch is a benchmark-only dependency (``benchmarks/requirements-bench.txt``):

  python -m venv --system-site-packages /path/venv && /path/venv/bin/pip install \\
      -r benchmarks/requirements-bench.txt --index-url https://download.pytorch.org/whl/cpu
  PYTHONPATH=. GLUE_DIR=../shared/glue /path/venv/bin/python benchmarks/bench_vs_torch.py

Goals (issue 19), on 2 CPU cores: RTE, jax packed <= 0.45x torch pad-128; CoLA, jax packed
<= 0.5x torch longest.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from cwgnc_jax.training import host_memory  # pylint: disable=wrong-import-position

host_memory.keep_freed_memory()  # before JAX or PyTorch start their threads

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from cwgnc_jax import command_line  # pylint: disable=wrong-import-position
from cwgnc_jax import models  # pylint: disable=wrong-import-position
from cwgnc_jax.data import batching  # pylint: disable=wrong-import-position
from cwgnc_jax.training import program as program_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.training import run as run_lib  # pylint: disable=wrong-import-position
from host import describe  # pylint: disable=wrong-import-position

try:
  import torch  # pylint: disable=wrong-import-position
  import transformers  # pylint: disable=wrong-import-position
except ImportError as error:  # pragma: no cover - a benchmark-only dependency
  sys.exit(f"bench_vs_torch needs PyTorch ({error}): pip install -r "
           "benchmarks/requirements-bench.txt (module docstring)")


class Runner:
  """One contestant: ``advance(n)`` trains n more steps, timing each to completion."""

  name: str

  def __init__(self, num_batches: int):
    self.remaining, self.done, self.losses = num_batches, 0, []
    self.times: list[float] = []  # wall seconds of each step
    self.cpu = 0.0  # process CPU seconds while this runner stepped (only one steps at a time)

  @property
  def seconds(self) -> float:
    return float(np.sum(self.times))

  def step(self, i: int) -> float:
    raise NotImplementedError

  def advance(self, n: int) -> None:
    for _ in range(min(n, self.remaining)):
      start, cpu = time.perf_counter(), time.process_time()
      loss = self.step(self.done)
      self.times.append(time.perf_counter() - start)
      self.cpu += time.process_time() - cpu
      self.losses.append(loss)
      self.done += 1
      self.remaining -= 1


class JaxRunner(Runner):
  """This project's jitted step as ``train.py`` builds it (``program.first_stage_program``),
  without the per-tensor gradient norms (``--config.diagnostics_every``), as PyTorch's
  loop computes none."""

  def __init__(self, run: run_lib.Run, layout: str, num_batches: int):
    super().__init__(num_batches)
    self.name = f"jax {layout}"
    program = program_lib.first_stage_program(run)
    self.constants, self.train_step = program.constants, program.train_step
    self.batches = program.batches(num_batches, layout=layout)
    throwaway, seen = program.fresh_state(), set()
    for batch in self.batches:  # compile every shape before timing
      if batch["input_ids"].shape not in seen:
        seen.add(batch["input_ids"].shape)
        throwaway, metrics = self.train_step(throwaway, batch, self.constants)
    jax.block_until_ready((throwaway, metrics))
    del throwaway
    self.state = program.fresh_state()
    self.tokens = sum(int((np.asarray(b["segment_ids"]) != 0).sum()) for b in self.batches)
    self.slots = sum(b["segment_ids"].size for b in self.batches)

  def step(self, i: int) -> float:
    self.state, metrics = self.train_step(self.state, self.batches[i], self.constants)
    return float(metrics["loss"])  # waits for the step

  def release(self) -> None:
    """Drops the compiled step, its state and batches (the timings stay)."""
    self.state = self.batches = self.constants = self.train_step = None
    jax.clear_caches()


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
  """transformers' run_glue parameter groups: no decay on biases and LayerNorm weights."""
  no_decay = ("bias", "LayerNorm.weight")
  params = list(model.named_parameters())
  return [{"params": [p for n, p in params if not any(k in n for k in no_decay)],
           "weight_decay": weight_decay},
          {"params": [p for n, p in params if any(k in n for k in no_decay)],
           "weight_decay": 0.0}]


# PyTorch's autocast dtype for each compute dtype of this project (None: float32, no autocast).
AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TorchRunner(Runner):
  """HF ``BertForSequenceClassification`` with the authors' per-tensor clip loop and AdamW."""

  def __init__(self, run: run_lib.Run, padding: str, num_batches: int):
    super().__init__(num_batches)
    config, opt = run.config, run.config.optimizer
    self.name = f"torch {padding}"
    torch.manual_seed(config.seed)
    model_dir = models.resolve_model_dir(config.model)
    self.model = transformers.BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=run.task.num_labels)
    self.model.train()
    self.clip_norm = opt.clip_norm
    self.autocast = AUTOCAST[config.dtype]
    self.batches, self.tokens, self.slots = [], 0, 0
    for batch in batching.train_batches(run.train_data, config.batch_size, seed=config.seed,
                                        epoch=0, layout="padded",
                                        max_length=config.max_length):
      mask = batch["segment_ids"] != 0
      length = config.max_length if padding == "pad-128" else int(mask.sum(1).max())
      self.tokens += int(mask.sum())
      self.slots += mask.shape[0] * length
      self.batches.append({
          "input_ids": torch.from_numpy(batch["input_ids"][:, :length].astype(np.int64)),
          "token_type_ids": torch.from_numpy(
              batch["token_type_ids"][:, :length].astype(np.int64)),
          "attention_mask": torch.from_numpy(mask[:, :length].astype(np.int64)),
          "labels": torch.from_numpy(batch["labels"].astype(np.int64))})
      if len(self.batches) == num_batches:
        break
    self.optimizer, self.schedule = self._optimizer(self.model, run)
    # One untimed warm-up step on a throwaway copy (allocator and kernel warm-up).
    warm = copy.deepcopy(self.model)
    self._train(warm, *self._optimizer(warm, run), self.batches[0])
    del warm

  @staticmethod
  def _optimizer(model: torch.nn.Module, run: run_lib.Run):
    opt = run.config.optimizer
    optimizer = torch.optim.AdamW(decay_groups(model, opt.weight_decay), lr=opt.learning_rate,
                                  betas=(opt.b1, opt.b2), eps=opt.eps)
    schedule = transformers.get_linear_schedule_with_warmup(
        optimizer, int(np.ceil(opt.warmup_fraction * run.total_steps)), run.total_steps)
    return optimizer, schedule

  def _train(self, model, optimizer, schedule, batch) -> float:
    with torch.autocast("cpu", dtype=self.autocast, enabled=self.autocast is not None):
      loss = model(**batch).loss
    loss.backward()
    if self.clip_norm is not None:
      for p in model.parameters():  # the authors' component-wise clip: every tensor
        if p.grad is not None:
          torch.nn.utils.clip_grad_norm_(p, self.clip_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())

  def step(self, i: int) -> float:
    return self._train(self.model, self.optimizer, self.schedule, self.batches[i])


def bench_task(task: str, args: argparse.Namespace, rest: list[str]) -> dict:
  config, _ = command_line.train_config(["--config", args.config, f"--config.task={task}",
                                            *rest])
  run = run_lib.prepare(config, tempfile.mkdtemp(prefix="bench_vs_torch_"))
  runners: list[Runner] = [JaxRunner(run, "packed", args.steps),
                           TorchRunner(run, "pad-128", args.steps),
                           TorchRunner(run, "longest", args.steps)]
  while any(r.remaining for r in runners):
    for runner in runners:
      runner.advance(args.chunk)
  if args.jax_padded:  # alone, once the packed program is gone (module docstring)
    runners[0].release()
    padded = JaxRunner(run, "padded", args.steps)
    padded.advance(args.steps)
    runners.insert(1, padded)
  per_step = {r.name: r.seconds / r.done for r in runners}
  median = {r.name: float(np.median(r.times)) for r in runners}
  pairs = [("jax packed", "torch pad-128"), ("jax packed", "torch longest")]
  if args.jax_padded:
    pairs.append(("jax padded", "torch pad-128"))
  ratios = {f"{a} / {b}": per_step[a] / per_step[b] for a, b in pairs}
  return {"task": task, "dtype": config.dtype, "steps": runners[0].done,
          "seconds_per_step": per_step,
          "median_seconds_per_step": median,
          "cpu_seconds_per_step": {r.name: r.cpu / r.done for r in runners},
          "ratios": ratios,
          "ratios_of_medians": {f"{a} / {b}": median[a] / median[b] for a, b in pairs},
          "load_average": os.getloadavg(),
          "real_token_fraction": {r.name: r.tokens / r.slots for r in runners},
          "mean_loss": {r.name: float(np.mean(r.losses)) for r in runners}}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--config", default="demo", help="config name or path")
  parser.add_argument("--tasks", default="rte,cola", help="comma-separated GLUE tasks")
  parser.add_argument("--steps", type=int, default=40, help="batches per runner and task")
  parser.add_argument("--chunk", type=int, default=8, help="steps per turn of a runner")
  parser.add_argument("--jax-padded", action=argparse.BooleanOptionalAction, default=True,
                      help="also time this project's padded layout")
  parser.add_argument("--torch-threads", type=int, default=0,
                      help="PyTorch intra-op threads (0: its default, one per core)")
  args, rest = parser.parse_known_args(argv)
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
        f"{describe()}", file=sys.stderr)
  goals = {"rte": ("jax packed / torch pad-128", 0.45),
           "cola": ("jax packed / torch longest", 0.5)}
  results = []
  for task in args.tasks.split(","):
    result = bench_task(task, args, rest)
    results.append(result)
    print(json.dumps(result, indent=2))
    line = ", ".join(f"{k} {v:.3f} s" for k, v in result["seconds_per_step"].items())
    print(f"{task}: {line}", file=sys.stderr)
    for name, ratio in result["ratios"].items():
      goal = goals.get(task) if result["dtype"] == "float32" else None
      mark = (f" (goal <= {goal[1]}: {'met' if ratio <= goal[1] else 'missed'})"
              if goal and goal[0] == name else "")
      print(f"  {name}: {ratio:.2f}x{mark} (of medians "
            f"{result['ratios_of_medians'][name]:.2f}x)", file=sys.stderr)


if __name__ == "__main__":
  main(sys.argv[1:])
