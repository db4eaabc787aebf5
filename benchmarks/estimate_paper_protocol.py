"""The paper's protocol on 8 H100s: GPU-hours and wall-clock from XLA's FLOP count per step.

The protocol: Table 1's five rows (``cwgnc_jax.methods.METHODS``: BertAdam and + bias
correction 3 epochs, Mixout and Mosbach et al. 20 epochs with 3 dev evaluations per epoch,
CWGNC 5 epochs, the others one evaluation per epoch) x RTE, MRPC, CoLA x 25 seeds,
BERT-large-uncased, batch 16, max length 128, the dev set evaluated as each method says.

1. FLOPs per step, measured: the project's jitted train step (``step.jit_train_step``, with
   each row's optimizer ``build_optimizer(recipe(name))``, the per-tensor diagnostics of a
   default run, and Mixout's model for its row) is lowered and compiled for BERT-large on
   abstract inputs (``jax.ShapeDtypeStruct``s from ``nnx.eval_shape``: the 335M parameters
   are never created) and ``compiled.cost_analysis()['flops']`` is read (JAX 0.10 returns a
   dict). A step over R rows of 128 tokens costs ``F(R) = a + b R`` (the encoder's work is
   per row, attention included since T is fixed; the optimizer update, the classifier head
   on the B = 16 [CLS] rows and the diagnostics are per step): a and b from R = 16 and 2,
   checked at R = 8 (on the first program). The eval step (forward only, batches of 32
   examples) likewise, from R = 32 and 2. Methods whose steps are one program share it
   (Mosbach et al.'s optimizer is AdamW's, his 20 epochs aside). The
   8-seed program (``jit_train_step(seeds=True)`` on a ``seeds`` mesh axis of 8 fake CPU
   devices) is compiled once: XLA's per-device count of it is one seed's step.
2. Rows per step: padded, R = 16. Packed (the default layout): rows of one epoch of the real
   RTE and CoLA train files tokenized with the uncased WordPiece vocabulary of
   bert-large-uncased (``load_tokenizer('minilm-l6')`` ships the same vocab.txt), seeds 1-8;
   in an 8-seed program every seed's batch is padded to the step's largest
   (``batching.stack_batches``), so a GPU computes ``mean_s max_seeds R``. MRPC is not on
   this machine: its packed count is taken as its padded one (an upper bound).
3. Steps per seed = epochs x ceil(N_train / 16); evaluations = epochs x evals per epoch; an
   evaluation computes the forward pass of every dev row.
4. Time at an assumed model-FLOPs utilisation (MFU) of the H100 SXM dense peak:
   989 TFLOP/s bf16 and 494.7 TFLOP/s TF32 (NVIDIA H100 Tensor Core GPU datasheet: 1,979 and
   989 TFLOP/s "with sparsity", halved for dense); ``t = FLOPs / (MFU * peak)``. bf16 is
   ``--config.dtype=bfloat16``; TF32 is the float32 default (JAX's default matmul precision
   lets XLA run float32 matmuls on TF32 tensor cores on these GPUs). A second model adds to
   every train step the least HBM traffic of the optimizer update (read parameter, gradient,
   m, v; write parameter, m, v: 28 bytes per float32 parameter at 3.35 TB/s, datasheet),
   which a FLOP count does not see and which outweighs the compute of a small packed step
   (CoLA: 2 rows).
   Two layouts of the 375 runs on 8 GPUs:
     A. ``study --seeds 25 --seeds-per-program 8 --config.mesh.seeds=8`` per (row, task):
        programs of 8, 8, 8 and 1 seeds; the last seed trains alone, data-parallel over the 8
        GPUs (``study``: a seeds axis of gcd(1, 8) = 1). Its per-step fixed costs (the
        optimizer over 335M parameters on every GPU, an all-reduce of 1.3 GB of gradients)
        do not shrink with 2 rows per GPU, so it is taken to last as long as a full program.
     B. the same with ``--seeds 1-24``, then the 15 seed-25 runs (5 rows x 3 tasks; a program
        holds one config) as one-GPU processes, 8 at a time, longest first.
   Every 8-seed program lasts as long as its seeds' common step count at the per-GPU FLOPs.
   ``work`` GPU-hours are the runs' own compute (every GPU busy, no stacking padding).
5. Memory per GPU: one seed's parameters, gradients and Adam moments in float32 (16 bytes a
   parameter; Mixout adds its targets), and XLA's memory analysis of the compiled 8-seed
   program per device (its temporaries are the CPU backend's buffer plan: an indicator of
   the activations, not a GPU measurement), against 80 GB.
6. Not in the hours: the loop's checkpoints. It saves every seed's state (parameters and
   Adam moments, 12 bytes a parameter; with ``keep_best`` also the best parameters, 4 more)
   at every evaluation and every ``checkpoint_every`` steps, synchronously, seed after seed.
   They are counted, with their writing time at an assumed 2 GB/s.

What is measured here is XLA's FLOP count on this CPU; the utilisation and the peak are
assumptions; no GPU speed was measured. Nothing is run: the script compiles 13 BERT-large
programs (about a minute and 1.5 GB of memory each on this machine) and packs the data.

  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/estimate_paper_protocol.py
  PYTHONPATH=. GLUE_DIR=../shared/glue python benchmarks/estimate_paper_protocol.py --layers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
DEVICES = 8  # fake CPU devices for the 8-seed program (before JAX starts)
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={DEVICES}").strip()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from cwgnc_jax import clipping, methods, optimizers  # pylint: disable=wrong-import-position
from cwgnc_jax import config as config_lib  # pylint: disable=wrong-import-position
from cwgnc_jax.data import batching, glue  # pylint: disable=wrong-import-position
from cwgnc_jax.models import bert, load_tokenizer, mixout  # pylint: disable=wrong-import-position
from cwgnc_jax.training import loop  # pylint: disable=wrong-import-position
from cwgnc_jax.training import step as step_lib  # pylint: disable=wrong-import-position
from accounting import cost, memory  # pylint: disable=wrong-import-position

BERT_LARGE = {"vocab_size": 30522, "hidden_size": 1024, "num_hidden_layers": 24,
              "num_attention_heads": 16, "intermediate_size": 4096,
              "max_position_embeddings": 512, "type_vocab_size": 2}
ROWS = ("bertadam", "adamw", "mixout", "mosbach", "cwgnc")  # Table 1
TASKS = {"rte": (2490, 277), "mrpc": (3668, 408), "cola": (8551, 1043)}  # train, dev
MEASURED_TASKS = ("rte", "cola")  # on this machine
SEEDS = 25
SEEDS_PER_PROGRAM = 8
PEAK = {"bf16": 989e12, "tf32": 494.7e12}  # H100 SXM dense tensor-core FLOP/s
HBM_BYTES_PER_SECOND = 3.35e12  # H100 SXM HBM3 (datasheet)
# The least an Adam update moves per float32 parameter: read parameter, gradient, m and v,
# write parameter, m and v (the clips' norms and the diagnostics read the gradient again).
OPTIMIZER_BYTES_PER_PARAMETER = 7 * 4
GPU_MEMORY = 80e9
CHECKPOINT_BYTES_PER_SECOND = 2e9  # assumed: one local NVMe SSD, written by one process
MFUS = (0.3, 0.4, 0.5)
TRAIN_ROWS = (16, 8, 2)  # fit on the first and last, check the middle (first method only)


def batch_struct(rows: int, examples: int, length: int, seeds: int = 0) -> dict:
  lead = (seeds,) if seeds else ()
  i32 = lambda *shape: jax.ShapeDtypeStruct(lead + shape, jnp.int32)
  batch = {k: i32(rows, length)
           for k in ("input_ids", "token_type_ids", "position_ids", "segment_ids")}
  batch.update(cls_index=i32(examples), labels=i32(examples),
               example_mask=jax.ShapeDtypeStruct(lead + (examples,), jnp.float32))
  return batch


@dataclasses.dataclass
class Program:
  """One Table 1 row's step on abstract BERT-large: its model and optimizer."""
  name: str
  apply: object
  params: object
  constants: object
  optimizer: object


def abstract_model(layers: int, mixout_p: float):
  fields = {**BERT_LARGE, "num_hidden_layers": layers}
  linear = bert.Linear
  if mixout_p:
    fields.update(mixout.NO_DROPOUT)
    linear = mixout.linear_factory(mixout_p, "reference")
  config = bert.BertConfig.from_dict(fields)
  model = nnx.eval_shape(lambda: bert.BertForSequenceClassification(
      config, 2, rngs=nnx.Rngs(0), linear=linear))
  graphdef, constants, params = bert.split_params(model)
  return bert.apply_fn(graphdef), params, constants


def train_compile(program: Program, rows: int, config, *, seeds: int = 0):
  """The compiled train step of ``rows`` rows (``seeds`` > 0: the seed-stacked program on a
  ``seeds`` mesh axis of that many devices)."""
  devices = jax.devices()[:max(seeds, 1)]
  mesh = step_lib.make_mesh(1, 1, devices, seeds=max(seeds, 1))
  abstract = step_lib.abstract_state(program.params, program.optimizer, 1, mesh,
                                     config.fsdp_min_size)
  shardings = step_lib.shardings_of(abstract)
  constants = program.constants
  if seeds:
    shardings = step_lib.stacked(shardings)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct((seeds, *x.shape), x.dtype,
                                                              sharding=s), abstract, shardings)
    constants = jax.tree.map(lambda x: jax.ShapeDtypeStruct((seeds, *x.shape), x.dtype),
                             constants)
  step = step_lib.jit_train_step(program.apply, program.optimizer, mesh, shardings,
                                 diagnostics=config.diagnostics_every > 0, seeds=bool(seeds))
  batch = batch_struct(rows, config.batch_size, config.max_length, seeds)
  return step.lower(abstract, batch, constants).compile()


def eval_compile(program: Program, rows: int, config):
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  shardings = step_lib.tree_shardings(mesh, program.params, config.fsdp_min_size)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        program.params, shardings)
  step = step_lib.jit_eval_step(program.apply, mesh, shardings)
  batch = batch_struct(rows, config.eval_batch_size, config.max_length)
  return step.lower(params, program.constants, batch).compile()


def fit(points: dict[int, float]) -> tuple[float, float]:
  """(a, b) of F(R) = a + b R through the largest and smallest R."""
  hi, lo = max(points), min(points)
  b = (points[hi] - points[lo]) / (hi - lo)
  return points[hi] - b * hi, b


def formula_flops_per_row(layers: int, length: int) -> float:
  """Forward + backward matmul FLOPs of one full row (accounting.useful_flops)."""
  h, i = BERT_LARGE["hidden_size"], BERT_LARGE["intermediate_size"]
  return 6 * layers * (4 * h * h + 2 * h * i) * length + 12 * layers * h * length**2


def measure_rows(config, glue_dir: str) -> dict[str, dict[str, float]]:
  """Train step slots, in rows of max_length tokens (one seed alone; 8 seeds stacked as the
  loop stacks a program's), and dev rows, per task."""
  tokenizer = load_tokenizer("minilm-l6")
  out = {}
  for task in MEASURED_TASKS:
    load = lambda split: glue.load_tokenized(task, split, tokenizer, source=glue_dir,
                                             max_length=config.max_length,
                                             cache_dir=config.cache_dir)
    train, dev = load("train"), load("dev")
    # Token slots per step in rows of max_length tokens, packed as train.py packs (rows
    # shorter than max_length where row_length_step saves slots): a seed alone, and a
    # program of seeds stacked (the loop's batching.train_batches_together, stack_batches).
    seeds = range(1, SEEDS_PER_PROGRAM + 1)
    packing = dict(epoch=0, layout="packed", max_length=config.max_length,
                   row_length_step=config.row_length_step)
    alone = np.array([[b["input_ids"].size / config.max_length for b in batching.train_batches(
        train, config.batch_size, seed=seed, **packing)] for seed in seeds])
    together = np.array([batching.stack_batches(batches)["input_ids"][0].size
                         / config.max_length for batches in batching.train_batches_together(
                             [train] * len(seeds), seeds, config.batch_size, **packing)])
    dev_rows = [b["input_ids"].shape[0] for b in batching.eval_batches(
        dev, config.eval_batch_size, layout="packed", max_length=config.max_length)]
    out[task] = {"train_examples": len(train), "dev_examples": len(dev),
                 "mean_tokens": float(train.lengths.mean()),
                 "rows_per_step": float(alone.mean()),
                 "rows_per_step_8_seed_program": float(together.mean()),
                 "dev_rows": int(sum(dev_rows)), "dev_batches": len(dev_rows)}
  return out


def rows_by_layout(measured: dict, config) -> dict[str, dict[str, dict[str, float]]]:
  """Per layout and task: rows per step (one seed alone, and per GPU in an 8-seed program),
  dev rows and dev batches."""
  table = {"padded": {}, "packed": {}}
  for task, (n_train, n_dev) in TASKS.items():
    batches = -(-n_dev // config.eval_batch_size)
    padded = {"rows_per_step": float(config.batch_size),
              "rows_per_step_8_seed_program": float(config.batch_size),
              "dev_rows": batches * config.eval_batch_size, "dev_batches": batches}
    table["padded"][task] = padded
    if task in measured:
      assert measured[task]["train_examples"] == n_train, (task, measured[task])
      assert measured[task]["dev_examples"] == n_dev, (task, measured[task])
      table["packed"][task] = {k: measured[task][k] for k in padded}
    else:
      table["packed"][task] = dict(padded, assumed="padded (not on this machine)")
  return table


def row_record(name: str) -> dict:
  method = methods.get(name)
  return {"display_name": method.display_name, "optimizer": dict(method.optimizer),
          "epochs": method.num_epochs, "evals_per_epoch": method.evals_per_epoch,
          "keep_best": method.keep_best, "mixout_p": method.mixout_p}


def checkpoint_steps(steps: int, steps_per_epoch: int, method, config) -> set[int]:
  """The steps after which ``loop._train`` saves a checkpoint: every evaluation and every
  ``checkpoint_every`` steps."""
  evals = loop.eval_steps(steps_per_epoch, method.num_epochs, method.evals_per_epoch)
  every = config.checkpoint_every
  return evals | (set(range(every, steps + 1, every)) if every else set())


def lpt_makespan(jobs: list[float], machines: int) -> float:
  """Longest-processing-time-first list scheduling of ``jobs`` on ``machines``."""
  loads = [0.0] * machines
  for job in sorted(jobs, reverse=True):
    loads[loads.index(min(loads))] += job
  return max(loads)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--layers", type=int, default=24, help="encoder layers (24: BERT-large; "
                      "fewer for a quick trial of the script)")
  parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"),
                      help="GLUE folder with RTE and CoLA (default $GLUE_DIR)")
  parser.add_argument("--no-mesh-check", action="store_true",
                      help="skip compiling the 8-seed program on 8 fake devices")
  args = parser.parse_args(argv)
  if not args.glue_dir:
    parser.error("no GLUE folder: pass --glue-dir or set GLUE_DIR")
  started = time.perf_counter()
  config = config_lib.load("rte_cwgnc")  # batch, lengths, diagnostics of a default run

  # 2. Rows per step (first: a missing GLUE file fails before minutes of compiling).
  measured = measure_rows(config, args.glue_dir)
  layouts = rows_by_layout(measured, config)

  # 1. FLOPs per step of every distinct program (Mosbach et al.'s step is AdamW's).
  models = {p: abstract_model(args.layers, p) for p in {methods.get(r).mixout_p for r in ROWS}}
  programs, program_of = {}, {}
  for row in ROWS:
    method = methods.get(row)
    key = json.dumps([methods.recipe(row).to_dict(), method.mixout_p], sort_keys=True)
    if key not in programs:
      apply, params, constants = models[method.mixout_p]
      programs[key] = Program(row, apply, params, constants,
                              optimizers.build_optimizer(methods.recipe(row), 1000))
    program_of[row] = programs[key].name
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(models[0.0][1]))
  nbytes = lambda tree: sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))
  one_device = step_lib.make_mesh(1, 1, jax.devices()[:1])
  state_bytes = {p.name: nbytes(step_lib.abstract_state(p.params, p.optimizer, 1, one_device,
                                                        config.fsdp_min_size))
                 for p in programs.values()}

  train, train_memory = {}, {}
  for index, program in enumerate(programs.values()):
    points, rows = {}, TRAIN_ROWS if index == 0 else (TRAIN_ROWS[0], TRAIN_ROWS[-1])
    for r in rows:
      compiled = train_compile(program, r, config)
      points[r] = cost(compiled)
      if r == config.batch_size:
        train_memory[program.name] = memory(compiled)
      print(f"compiled {program.name} train step, {r} rows: {points[r]['flops']:.4g} FLOPs "
            f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    a, b = fit({r: p["flops"] for r, p in points.items()})
    entry = {"flops": {str(r): p["flops"] for r, p in points.items()},
             "bytes_accessed": {str(r): p["bytes"] for r, p in points.items()},
             "a_per_step": a, "b_per_row": b}
    middle = [r for r in points if r not in (max(points), min(points))]
    if middle:
      r = middle[0]
      entry["linearity_check"] = {"rows": r, "fit": a + b * r, "measured": points[r]["flops"],
                                  "relative_error": (a + b * r) / points[r]["flops"] - 1}
    train[program.name] = entry

  first = next(iter(programs.values()))
  eval_points = {}
  for r in (32, 8, 2):
    eval_points[r] = cost(eval_compile(first, r, config))["flops"]
  a_e, b_e = fit(eval_points)
  eval_flops = {"flops": {str(r): f for r, f in eval_points.items()}, "a_per_batch": a_e,
                "b_per_row": b_e, "linearity_check": {
                    "rows": 8, "fit": a_e + 8 * b_e, "measured": eval_points[8],
                    "relative_error": (a_e + 8 * b_e) / eval_points[8] - 1}}
  print(f"compiled the eval step ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

  # The optimizer update alone (the step runs it inside apply_if_finite's branch), and the
  # clip alone.
  params = models[0.0][1]
  updates = {}
  for program in programs.values():
    if jax.tree.leaves(program.constants):  # Mixout: its optimizer is AdamW's
      continue
    opt = program.optimizer
    state = jax.eval_shape(opt.init, params)
    updates[program.name] = cost(jax.jit(opt.update).lower(params, state, params).compile())
  clip = clipping.clip_by_component_norm(0.05)
  updates["component_clip_alone"] = cost(jax.jit(clip.update).lower(
      params, jax.eval_shape(clip.init, params)).compile())
  for name, entry in updates.items():
    entry["share_of_padded_step"] = entry["flops"] / train[
        program_of.get(name, "cwgnc")]["flops"][str(config.batch_size)]

  mesh_check = None
  if not args.no_mesh_check:
    program = programs[next(k for k, p in programs.items() if p.name == "cwgnc")]
    compiled = train_compile(program, config.batch_size, config, seeds=SEEDS_PER_PROGRAM)
    flops = cost(compiled)["flops"]
    mesh_check = {"seeds": SEEDS_PER_PROGRAM, "rows": config.batch_size,
                  "per_device_flops": flops,
                  "over_one_seed_step": flops / train["cwgnc"]["flops"][str(config.batch_size)],
                  "per_device_memory": memory(compiled)}
    print(f"compiled the 8-seed program ({time.perf_counter() - started:.0f} s)",
          file=sys.stderr)

  # 3. Steps and FLOPs of the protocol, per (row, task): a seed alone and a seed (per GPU)
  #    in an 8-seed program, whose batches are padded to the step's largest.
  cells, totals = [], {}
  for layout, by_task in layouts.items():
    totals[layout] = {"train_steps": 0, "evaluations": 0, "train_flops": 0.0,
                      "eval_flops": 0.0, "train_flops_8_seed_programs": 0.0}
    for row in ROWS:
      method, fitted = methods.get(row), train[program_of[row]]
      for task, (n_train, _) in TASKS.items():
        rows = by_task[task]
        steps_per_epoch = batching.steps_per_epoch(n_train, config.batch_size)
        steps = method.num_epochs * steps_per_epoch
        evals = len(loop.eval_steps(steps_per_epoch, method.num_epochs,
                                    method.evals_per_epoch))
        step_flops = lambda r: fitted["a_per_step"] + fitted["b_per_row"] * r
        cell = {"layout": layout, "row": row, "task": task, "steps": steps,
                "evaluations": evals,
                "checkpoints": len(checkpoint_steps(steps, steps_per_epoch, method, config)),
                "checkpoints_at_evaluations_only": evals,
                "checkpoint_bytes": state_bytes[program_of[row]]
                                    + (4 * n_params if method.keep_best else 0),
                "step_flops_alone": step_flops(rows["rows_per_step"]),
                "step_flops_in_program": step_flops(rows["rows_per_step_8_seed_program"]),
                "eval_flops": rows["dev_batches"] * a_e + rows["dev_rows"] * b_e}
        cells.append(cell)
        total = totals[layout]
        total["train_steps"] += SEEDS * steps
        total["evaluations"] += SEEDS * evals
        total["train_flops"] += SEEDS * steps * cell["step_flops_alone"]
        total["train_flops_8_seed_programs"] += SEEDS * steps * cell["step_flops_in_program"]
        total["eval_flops"] += SEEDS * evals * cell["eval_flops"]

  # 4. Hours on 8 H100s. A step takes FLOPs / (MFU * peak); the second model adds the
  #    optimizer update's minimal HBM traffic (OPTIMIZER_BYTES_PER_PARAMETER).
  optimizer_seconds = OPTIMIZER_BYTES_PER_PARAMETER * n_params / HBM_BYTES_PER_SECOND
  full_programs = SEEDS // SEEDS_PER_PROGRAM  # 3, and 1 seed left per (row, task)
  leftover = SEEDS - full_programs * SEEDS_PER_PROGRAM
  hours = {}
  for model, floor in (("mfu", 0.0), ("mfu_plus_optimizer_memory", optimizer_seconds)):
    for precision, peak in PEAK.items():
      for mfu in MFUS:
        speed = mfu * peak
        train_s = lambda c, key: c["steps"] * (c[key] / speed + floor)
        eval_s = lambda c: c["evaluations"] * c["eval_flops"] / speed
        for layout in layouts:
          mine = [c for c in cells if c["layout"] == layout]
          alone = [train_s(c, "step_flops_alone") + eval_s(c) for c in mine]
          program = [train_s(c, "step_flops_in_program") + eval_s(c) for c in mine]
          train_h = SEEDS * sum(train_s(c, "step_flops_alone") for c in mine) / 3600
          eval_h = SEEDS * sum(eval_s(c) for c in mine) / 3600
          wall_a = (full_programs + leftover) * sum(program) / 3600
          wall_b = (full_programs * sum(program)
                    + lpt_makespan([t for t in alone for _ in range(leftover)], DEVICES)) / 3600
          hours[f"{model} {precision} {mfu:.0%} {layout}"] = {
              "work_gpu_hours": train_h + eval_h, "train_gpu_hours": train_h,
              "eval_gpu_hours": eval_h, "ideal_wall_hours": (train_h + eval_h) / DEVICES,
              "layout_a_wall_hours": wall_a, "layout_a_gpu_hours": DEVICES * wall_a,
              "layout_b_wall_hours": wall_b, "layout_b_gpu_hours": DEVICES * wall_b}

  # Per step, at 40% of the bf16 peak: the optimizer's HBM time against the step's compute.
  step_times = {"optimizer_ms_at_hbm_bandwidth": 1e3 * optimizer_seconds}
  for layout in layouts:
    for task in TASKS:
      cell = next(c for c in cells
                  if c["layout"] == layout and c["task"] == task and c["row"] == "cwgnc")
      step_times[f"cwgnc_{task}_{layout}_step_ms_bf16_40pct"] = (
          1e3 * cell["step_flops_in_program"] / (0.4 * PEAK["bf16"]))

  # Checkpoints the loop writes (not in the hours above): every seed's state at every
  # evaluation and every checkpoint_every steps, synchronously, seed after seed.
  checkpoints = {"checkpoint_every": config.checkpoint_every,
                 "assumed_write_bytes_per_second": CHECKPOINT_BYTES_PER_SECOND}
  for layout in layouts:
    mine = [c for c in cells if c["layout"] == layout]
    if layout == "padded":  # the same for both layouts
      saves = SEEDS * sum(c["checkpoints"] for c in mine)
      volume = SEEDS * sum(c["checkpoints"] * c["checkpoint_bytes"] for c in mine)
      at_evals = SEEDS * sum(c["checkpoints_at_evaluations_only"] * c["checkpoint_bytes"]
                             for c in mine)
      checkpoints.update(saves=saves, bytes=volume,
                         write_hours=volume / CHECKPOINT_BYTES_PER_SECOND / 3600,
                         bytes_with_checkpoint_every_0=at_evals,
                         write_hours_with_checkpoint_every_0=(
                             at_evals / CHECKPOINT_BYTES_PER_SECOND / 3600))

  # 5. Memory per GPU.
  training_bytes = 16 * n_params  # params, gradients, Adam m and v, float32
  memory_check = {"parameters": n_params,
                  "params_grads_adam_float32_bytes": training_bytes,
                  "mixout_targets_bytes": 4 * n_params,
                  "xla_one_seed_step_by_row": train_memory,
                  "xla_8_seed_program_per_device": mesh_check and mesh_check["per_device_memory"],
                  "gpu_bytes": GPU_MEMORY}
  largest = max(m["peak"] for m in train_memory.values())
  memory_check["fits"] = bool(max(largest, training_bytes + 4 * n_params) < GPU_MEMORY)

  report = {
      "inputs": {
          "model": dict(BERT_LARGE, num_hidden_layers=args.layers), "num_labels": 2,
          "parameters": n_params, "rows": {r: row_record(r) for r in ROWS},
          "step_program_of_row": program_of, "tasks": {t: {"train": n, "dev": d}
                                                       for t, (n, d) in TASKS.items()},
          "seeds": SEEDS, "batch_size": config.batch_size,
          "eval_batch_size": config.eval_batch_size, "max_length": config.max_length,
          "diagnostics_in_step": config.diagnostics_every > 0,
          "peak_flops": PEAK, "hbm_bytes_per_second": HBM_BYTES_PER_SECOND, "mfu": MFUS,
          "optimizer_bytes_per_parameter": OPTIMIZER_BYTES_PER_PARAMETER,
          "gpus": DEVICES, "seeds_per_program": SEEDS_PER_PROGRAM,
          "backend": jax.default_backend(), "jax": jax.__version__,
      },
      "train_step": train,
      "formula_matmul_flops_per_row": formula_flops_per_row(args.layers, config.max_length),
      "eval_step": eval_flops,
      "optimizer_update": updates,
      "step_times": step_times,
      "eight_seed_program": mesh_check,
      "rows": {"measured": measured, "by_layout": layouts},
      "protocol": {"totals": totals, "cells": cells},
      "h100": hours,
      "checkpoints": checkpoints,
      "memory": memory_check,
      "seconds": time.perf_counter() - started,
  }
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main(sys.argv[1:])
