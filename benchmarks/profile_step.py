"""Where a training step's time goes: a ``jax.profiler`` trace summarised by op category.

Builds the run exactly as ``train.py`` does (``run.prepare``), takes the first ``--steps``
batches of epoch 0, runs them once (compiling every batch shape), then traces them again
with ``jax.profiler`` and sums, over every XLA:CPU thunk the trace records, its time by the
category of the HLO instruction it ran (read from the compiled program's text: the
instruction's kind, and the JAX name stack in its metadata). Times are thread time: the
thunks of one step may run concurrently on the two cores, so the categories add up to more
than the wall time, which is printed beside them. The trace itself goes to a temporary folder
and is deleted (``--keep-trace DIR`` keeps it, for TensorBoard / Perfetto).

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/profile_step.py            # demo, RTE
  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/profile_step.py --config.task=cola
  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/profile_step.py --top 30   # and ops

Categories (first match wins, on the instruction's name stack and opcode):

  matmul fwd / bwd     dense-layer matmuls (``dot`` or a YNNPACK/oneDNN fusion around one)
  reductions (YNNPACK) the other YNNPACK fusions: LayerNorm's and softmax's sums and maxima,
                       bias gradients
  attention matmuls    the q k^T and p v contractions and their gradients
  dropout (bits, mask) drawing dropout's random bits and applying the mask (all that XLA
                       fused with them, e.g. a bias add or a residual)
  rng keys             splitting and folding keys
  softmax/mask         the attention softmax and mask (forward and backward)
  word embedding: gradient + update   every pass over a [vocab, hidden] array: zeroing and
                       scattering its gradient, its norm, the finite check, Adam's update
  embedding gather / scatter   the other embedding lookups and their gradients
  optimizer            everything after the gradient: clip, Adam, decay, the finite check
  elementwise fwd / bwd        the rest (LayerNorm, GELU, dropout's multiply, residuals)
  copy                 layout copies and transposes XLA inserted
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from cwgnc_jax.training import host_memory  # pylint: disable=wrong-import-position

host_memory.keep_freed_memory()  # before JAX starts its threads

import jax  # pylint: disable=wrong-import-position

from cwgnc_jax import command_line  # pylint: disable=wrong-import-position
from cwgnc_jax import models  # pylint: disable=wrong-import-position
from cwgnc_jax.training import program as program_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.training import run as run_lib  # pylint: disable=wrong-import-position
from host import describe  # pylint: disable=wrong-import-position

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def _computations(hlo: str) -> dict[str, list[str]]:
  """The lines of each computation of an HLO module, by computation name."""
  comps, name = {}, None
  for line in hlo.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      comps[name] = []
    elif name is not None and line.strip() == "}":
      name = None
    elif name is not None:
      comps[name].append(line)
  return comps


def category(opcode: str, op_names: str, fused: str) -> str:
  """The category of one top-level instruction (module docstring)."""
  backward = "transpose(" in op_names
  if opcode == "copy" or fused == "copy":
    return "copy"
  if opcode == "dot" or " dot(" in fused:
    if "attention_scores" in op_names or "rhqk" in op_names:
      return "attention matmuls"
    return "matmul bwd" if backward else "matmul fwd"
  if "__ynn_fusion" in fused or "__onednn" in fused:  # a library fusion without a dot
    return "reductions (YNNPACK)"
  if "dropout" in op_names or re.search(r"_bernoulli|_uniform|random_bits", op_names):
    return "dropout (bits, mask)"
  if re.search(r"threefry_split|threefry_fold_in|split_rng|fold_in", op_names):
    return "rng keys"
  if "softmax" in op_names:
    return "softmax/mask"
  if re.search(r"scatter|gather|_take", op_names) or "scatter(" in fused:
    return "embedding gather / scatter"
  if "optimizer" in op_names or not re.search(r"jvp\(", op_names):
    return "optimizer"
  return "elementwise bwd" if backward else "elementwise fwd"


def categorize(hlo: str, embedding_shape: str = "") -> dict[str, tuple[str, str]]:
  """``{instruction name: (category, short description)}`` for every instruction of every
  computation that a thunk can run (fusions are described by their fused computation).
  Instructions whose result has ``embedding_shape`` (e.g. ``[30522,384]``) count as the
  word embedding's gradient and update, outside matmuls."""
  comps = _computations(hlo)
  out = {}
  for lines in comps.values():
    for line in lines:
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      name, result_type, opcode = match.groups()
      op_names = " ".join(_OP_NAME.findall(line))
      fused = ""
      calls = _CALLS.search(line)
      if opcode == "fusion" and calls:
        body = comps.get(calls.group(1), [])
        op_names += " " + " ".join(" ".join(_OP_NAME.findall(l)) for l in body)
        fused = line + "\n" + "\n".join(body)
        ops = collections.Counter(m.group(3) for m in map(_INSTRUCTION.match, body) if m)
        if (set(ops) <= {"parameter", "copy", "transpose", "bitcast"}
            and ops["transpose"] + ops["copy"]):
          fused = "copy"
      cat = category(opcode, op_names, fused)
      if embedding_shape and embedding_shape in result_type and not cat.startswith("matmul"):
        cat = "word embedding: gradient + update"
      out[name] = (cat, line.strip()[:160])
  return out


def trace_events(trace_dir: str) -> list[tuple[str, float]]:
  """(name, duration in ms) of every event of the XLA:CPU threads in a trace."""
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  data = jax.profiler.ProfileData.from_file(files[0])
  events = []
  for plane in data.planes:
    for line in plane.lines:
      if line.name == "python":
        continue
      events.extend((e.name, e.duration_ns / 1e6) for e in line.events)
  return events


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--config", default="demo", help="config name or path")
  parser.add_argument("--steps", type=int, default=12, help="batches traced")
  parser.add_argument("--top", type=int, default=0, help="also list the N costliest ops")
  parser.add_argument("--keep-trace", default="", help="keep the trace in this folder")
  args, rest = parser.parse_known_args(argv)
  config, _ = command_line.train_config(["--config", args.config, *rest])
  run = run_lib.prepare(config, tempfile.mkdtemp(prefix="profile_step_"))
  program = program_lib.first_stage_program(run)
  state, constants, train_step = program.fresh_state(), program.constants, program.train_step
  batches = program.batches(args.steps)
  model_config = models.load_config(config.model)
  embedding_shape = f"[{model_config.vocab_size},{model_config.hidden_size}]"
  by_shape = collections.defaultdict(list)
  for batch in batches:
    by_shape[batch["input_ids"].shape].append(batch)

  totals: collections.Counter = collections.Counter()
  per_op: collections.Counter = collections.Counter()
  described: dict[str, str] = {}
  wall = 0.0
  for shape, group in sorted(by_shape.items()):
    names = categorize(train_step.lower(state, group[0], constants).compile().as_text(),
                       embedding_shape)
    for batch in group:  # compile and warm up
      state, metrics = train_step(state, batch, constants)
    jax.block_until_ready((state, metrics))
    trace_dir = args.keep_trace or tempfile.mkdtemp(prefix="trace_")
    trace_dir = os.path.join(trace_dir, "x".join(map(str, shape)))
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    for batch in group:
      state, metrics = train_step(state, batch, constants)
      jax.block_until_ready((state, metrics))
    wall += time.perf_counter() - start
    jax.profiler.stop_trace()
    for name, ms in trace_events(trace_dir):
      if name in names:
        cat, text = names[name]
        totals[cat] += ms
        per_op[(shape, name)] += ms
        described[(shape, name)] = f"{cat:<26} {text}"
    if not args.keep_trace:
      shutil.rmtree(os.path.dirname(trace_dir), ignore_errors=True)

  n = len(batches)
  shapes = ", ".join(f"{len(g)} x {s}" for s, g in sorted(by_shape.items()))
  print(describe())
  print(f"config {args.config} {' '.join(rest)}: {n} steps ({shapes}), "
        f"wall {1e3 * wall / n:.0f} ms/step, thread time in thunks "
        f"{sum(totals.values()) / n:.0f} ms/step")
  print("| category | ms per step (thread time) | share |")
  print("|---|---|---|")
  total = sum(totals.values())
  for cat, ms in totals.most_common():
    print(f"| {cat} | {ms / n:.1f} | {100 * ms / total:.0f}% |")
  if args.top:
    print()
    for key, ms in per_op.most_common(args.top):
      print(f"{ms / n:8.2f} ms  {described[key]}")


if __name__ == "__main__":
  main(sys.argv[1:])
