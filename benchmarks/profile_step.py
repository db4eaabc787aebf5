"""Where a training step's time goes: a ``jax.profiler`` trace summarised by op category.

Builds the run exactly as ``train.py`` does (``loop.prepare``), takes the first ``--steps``
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
  attention matmuls    the q k^T and p v contractions and their gradients
  dropout bits         drawing dropout's random bits (threefry, the bit hash, the compare)
  rng keys             splitting and folding keys
  softmax/mask         the attention softmax and mask (forward and backward)
  embedding gather / scatter   the word-embedding lookup and its gradient
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

from cwgnc_jax import config as config_lib  # pylint: disable=wrong-import-position
from cwgnc_jax import optimizers  # pylint: disable=wrong-import-position
from cwgnc_jax.data import batching  # pylint: disable=wrong-import-position
from cwgnc_jax.training import loop  # pylint: disable=wrong-import-position
from cwgnc_jax.training import step as step_lib  # pylint: disable=wrong-import-position

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
  if opcode == "copy" or (opcode == "fusion" and re.fullmatch(r"(copy|transpose)(\.\d+)?",
                                                               fused)):
    return "copy"
  if "rhqk" in op_names or "rqhd" in op_names or "attention_scores" in op_names:
    if " dot(" in fused or opcode == "dot" or "ynn" in fused or "onednn" in fused:
      return "attention matmuls"
  if opcode == "dot" or "__ynn_fusion" in fused or "__onednn" in fused or " dot(" in fused:
    return "matmul bwd" if backward else "matmul fwd"
  if re.search(r"_bernoulli|_uniform|random_bits|dropout_bits|_random_bits", op_names):
    return "dropout bits"
  if re.search(r"threefry_split|threefry_fold_in|split_rng|fold_in", op_names):
    return "rng keys"
  if "scatter" in op_names or "scatter(" in fused:
    return "embedding gather / scatter"
  if re.search(r"_take|gather", op_names):
    return "embedding gather / scatter"
  if "optimizer" in op_names or not re.search(r"jvp\(", op_names):
    return "optimizer"
  if re.search(r"softmax|reduce_max|attention_mask", op_names):
    return "softmax/mask"
  return "elementwise bwd" if backward else "elementwise fwd"


def categorize(hlo: str) -> dict[str, tuple[str, str]]:
  """``{instruction name: (category, short description)}`` for every instruction of every
  computation that a thunk can run (fusions are described by their fused computation)."""
  comps = _computations(hlo)
  out = {}
  for lines in comps.values():
    for line in lines:
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      name, _, opcode = match.groups()
      op_names = " ".join(_OP_NAME.findall(line))
      fused = ""
      calls = _CALLS.search(line)
      if opcode == "fusion" and calls:
        body = comps.get(calls.group(1), [])
        op_names += " " + " ".join(" ".join(_OP_NAME.findall(l)) for l in body)
        fused = line + "\n" + "\n".join(body)
        ops = collections.Counter(m.group(3) for m in map(_INSTRUCTION.match, body) if m)
        if set(ops) <= {"parameter", "copy", "transpose", "bitcast"} and ops["transpose"] + ops["copy"]:
          fused = "copy"
      out[name] = (category(opcode, op_names, fused), line.strip()[:160])
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
  config, _ = config_lib.from_command_line(["--config", args.config, *rest])
  run = loop.prepare(config, tempfile.mkdtemp(prefix="profile_step_"))
  mesh = step_lib.make_mesh(*config_lib.mesh_shape(config, run.num_devices))
  optimizer = optimizers.build_optimizer(config.optimizer, run.total_steps)
  abstract = step_lib.abstract_state(run.params, optimizer, config.seed, mesh,
                                     config.fsdp_min_size)
  state = step_lib.init_state(run.params, optimizer, config.seed, abstract)
  constants = step_lib.put_constants(run.constants, mesh, config.fsdp_min_size)
  train_step = step_lib.jit_train_step(run.apply, optimizer, mesh,
                                       step_lib.shardings_of(abstract))
  batches = []
  for batch in batching.train_batches(run.train_data, config.batch_size, seed=config.seed,
                                      epoch=0, layout=config.layout,
                                      max_length=config.max_length,
                                      row_multiple=run.num_devices):
    batches.append(step_lib.put_batch(batch, mesh))
    if len(batches) == args.steps:
      break
  by_shape = collections.defaultdict(list)
  for batch in batches:
    by_shape[batch["input_ids"].shape].append(batch)

  totals: collections.Counter = collections.Counter()
  per_op: collections.Counter = collections.Counter()
  described: dict[str, str] = {}
  wall = 0.0
  for shape, group in sorted(by_shape.items()):
    names = categorize(train_step.lower(state, group[0], constants).compile().as_text())
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
