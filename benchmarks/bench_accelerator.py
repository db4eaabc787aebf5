"""BERT-large's training step on a GPU or TPU: step time, model-FLOPs utilisation, memory.

For the day an accelerator is at hand. A random-initialised BERT-large (no weights, tokenizer
or data needed) trains with the paper's optimizer (``optimizers.cwgnc``: the chain that
``build_optimizer(methods.recipe('cwgnc'))`` builds) and the per-tensor gradient norms of a
default run, in the step ``train.py`` jits (``step.jit_train_step``), on batches of 16
examples of at most 128 tokens made as ``train.py`` makes them (``batching.train_batches``),
packed and padded, in float32 (TF32 on NVIDIA's tensor cores: JAX's default matmul
precision) and in bfloat16. The examples are random tokens of RTE-like lengths: log-normal
with RTE's log-mean 4.08 and log-std 0.48 (its tokenized train split: mean 67 tokens, 13%
cut at 128), 8 to 128 tokens.

For each dtype and layout it compiles one batch shape (padded: 16 rows of 128; packed: the
most frequent shape of an epoch), runs 2 steps untimed, then times ``--steps`` steps over
the batches of that shape. It prints, for each:

- seconds per step and examples per second, and whether every step was applied (a skipped,
  non-finite step does no optimizer update and would flatter the time);
- MFU: useful matmul FLOPs (``accounting.useful_flops``: real tokens only) per second over
  the chip's dense peak (``PEAKS``, by JAX's ``device_kind``; n/a for a chip not listed),
  and XLA's FLOP count of the compiled step (padding and all) per second over the same peak;
- XLA's memory: the compiled step's buffer plan (``accounting.memory``), and the device's
  peak bytes in use so far (``Device.memory_stats``; GPUs and TPUs report it, CPUs do not).

It imports jax, flax, optax, numpy and this package's model, step, optimizer and batching
modules: no ml_collections, transformers, tokenizers or MiniLM package. Four BERT-large
compiles and 4 x 22 steps are meant to take under 5 minutes on an H100 (each line gives its
compile time and the time so far); it has not yet run on one. ``--small`` trains a 2-layer,
64-wide model instead: a trial on a CPU.

  python benchmarks/bench_accelerator.py                           # BERT-large
  PYTHONPATH=. python benchmarks/bench_accelerator.py --small --steps 3
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cwgnc_jax import optimizers
from cwgnc_jax.data import batching, glue
from cwgnc_jax.models import bert
from cwgnc_jax.training import step as step_lib
from accounting import cost, memory, useful_flops
from host import describe

BERT_LARGE = bert.BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24,
                             num_attention_heads=16, intermediate_size=4096)
SMALL = dataclasses.replace(BERT_LARGE, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=256)
NUM_LABELS = 2
# A default run's (configs/base.py) and the CWGNC row's (methods.py) settings.
BATCH_SIZE, MAX_LENGTH, ROW_LENGTH_STEP = 16, 128, 32
LEARNING_RATE, CLIP_NORM, WARMUP_FRACTION = 2e-5, 0.05, 0.1
SCHEDULE_STEPS = 1000  # long enough that every timed step has a learning rate above 0
EXAMPLES = 2490  # RTE's train split: an epoch of 156 batches
LOG_LENGTH = (4.08, 0.48)  # RTE's tokenized train split: mean and std of log(tokens)
UNTIMED_STEPS = 2
LAYOUTS = ("packed", "padded")
DTYPES = ("float32", "bfloat16")
# Dense peaks in FLOP/s per chip, (bfloat16, float32), from the datasheets (NVIDIA's "with
# sparsity" figures halved). float32 matmuls run as TF32 on NVIDIA's tensor cores and as
# one bfloat16 pass on TPUs (JAX's default precision), so a TPU's float32 peak is its
# bfloat16 one.
PEAKS = {"H100 SXM": (989e12, 494.7e12), "H200": (989e12, 494.7e12),
         "A100": (312e12, 156e12), "TPU v4": (275e12, 275e12),
         "TPU v5e": (197e12, 197e12), "TPU v5p": (459e12, 459e12)}
TPU_KINDS = {"TPU v4": "TPU v4", "TPU v5 lite": "TPU v5e", "TPU v5e": "TPU v5e",
             "TPU v5": "TPU v5p", "TPU v5p": "TPU v5p"}


def chip(device_kind: str) -> str | None:
  """The ``PEAKS`` entry of a JAX ``device_kind`` ('NVIDIA H100 80GB HBM3', 'TPU v5 lite',
  ...), or None. H100s and H200s in PCIe or NVL form have lower peaks: None."""
  if device_kind in TPU_KINDS:
    return TPU_KINDS[device_kind]
  if "A100" in device_kind:
    return "A100"
  if "PCIe" in device_kind or "NVL" in device_kind:
    return None
  return next((name for name in ("H100 SXM", "H200") if name.split()[0] in device_kind), None)


def synthetic_split(vocab_size: int) -> glue.TokenizedSplit:
  """``EXAMPLES`` examples of random tokens with RTE-like lengths (module docstring)."""
  rng = np.random.default_rng(0)
  lengths = np.clip(np.rint(rng.lognormal(*LOG_LENGTH, EXAMPLES)), 8, MAX_LENGTH)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  total = int(offsets[-1])
  return glue.TokenizedSplit(rng.integers(0, vocab_size, total, dtype=np.int32),
                             np.zeros(total, np.int32), offsets,
                             rng.integers(0, NUM_LABELS, EXAMPLES, dtype=np.int32))


def batches_of_one_shape(data: glue.TokenizedSplit, layout: str) -> list[batching.Batch]:
  """An epoch's batches in ``layout`` that have its most frequent shape (one compile)."""
  epoch = list(batching.train_batches(data, BATCH_SIZE, seed=1, epoch=0, layout=layout,
                                      max_length=MAX_LENGTH, row_length_step=ROW_LENGTH_STEP))
  shape = collections.Counter(b["input_ids"].shape for b in epoch).most_common(1)[0][0]
  return [b for b in epoch if b["input_ids"].shape == shape]


def measure(model_config: bert.BertConfig, dtype: str, data: glue.TokenizedSplit,
            steps: int, peak: float | None) -> list[dict]:
  """Compiles and times the train step in ``dtype``, in each layout (module docstring)."""
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  model = bert.BertForSequenceClassification(model_config, NUM_LABELS, rngs=nnx.Rngs(0),
                                             dtype=jnp.dtype(dtype))
  graphdef, constants, params = bert.split_params(model)
  optimizer = optimizers.cwgnc(
      optimizers.linear_warmup_decay(LEARNING_RATE, SCHEDULE_STEPS, WARMUP_FRACTION),
      CLIP_NORM)
  abstract = step_lib.abstract_state(params, optimizer, 0, mesh, min_size=1)  # 1 device
  state = step_lib.init_state(params, optimizer, 0, abstract)
  del model, params  # the state holds the parameters now
  train_step = step_lib.jit_train_step(bert.apply_fn(graphdef), optimizer, mesh,
                                       step_lib.shardings_of(abstract), diagnostics=True)
  results = []
  for layout in LAYOUTS:
    host = batches_of_one_shape(data, layout)
    placed = [step_lib.put_batch(b, mesh) for b in host]
    start = time.perf_counter()
    compiled = train_step.lower(state, placed[0], constants).compile()
    compile_seconds = time.perf_counter() - start
    finite = []
    for i in range(UNTIMED_STEPS + steps):
      if i == UNTIMED_STEPS:
        jax.block_until_ready(state)
        start = time.perf_counter()
      state, metrics = compiled(state, placed[i % len(placed)], constants)
      finite.append(metrics["finite"])
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - start) / steps
    timed = [host[i % len(host)] for i in range(UNTIMED_STEPS, UNTIMED_STEPS + steps)]
    useful = np.mean([useful_flops(b, model_config, NUM_LABELS) for b in timed])
    xla_flops = cost(compiled)["flops"]
    device_stats = jax.devices()[0].memory_stats() or {}
    fraction = lambda flops: None if peak is None else flops / seconds / peak
    results.append({
        "dtype": dtype, "layout": layout, "rows": list(host[0]["input_ids"].shape),
        "batches_of_this_shape": len(host),
        "real_token_fraction": float(np.mean([(b["segment_ids"] != 0).mean() for b in timed])),
        "compile_seconds": compile_seconds, "seconds_per_step": seconds,
        "examples_per_second": np.mean([b["example_mask"].sum() for b in timed]) / seconds,
        "all_steps_applied": bool(np.all(jax.device_get(finite))),
        "useful_tflops_per_second": useful / seconds / 1e12, "mfu": fraction(useful),
        "xla_tflops_per_second": xla_flops / seconds / 1e12,
        "xla_flops_over_peak": fraction(xla_flops), "compiled_memory_bytes": memory(compiled),
        "device_peak_bytes_in_use_so_far": device_stats.get("peak_bytes_in_use"),
        "device_bytes_limit": device_stats.get("bytes_limit")})
  return results


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
  parser.add_argument("--small", action="store_true",
                      help="a 2-layer, 64-wide model instead of BERT-large (a CPU trial)")
  args = parser.parse_args(argv)
  model_config = SMALL if args.small else BERT_LARGE
  device = jax.devices()[0]
  name = chip(device.device_kind)
  data = synthetic_split(model_config.vocab_size)
  report = {"device_kind": device.device_kind, "chip": name, "backend": jax.default_backend(),
            "jax": jax.__version__, "host": describe(),
            "model": dataclasses.asdict(model_config), "steps": args.steps, "runs": []}
  started = time.perf_counter()
  for dtype in DTYPES:
    peak = PEAKS[name][0 if dtype == "bfloat16" else 1] if name else None
    for result in measure(model_config, dtype, data, args.steps, peak):
      report["runs"].append(result)
      mfu = "n/a" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
      print(f"{dtype:8} {result['layout']:6} {result['rows']}: "
            f"{1e3 * result['seconds_per_step']:.1f} ms/step, "
            f"{result['examples_per_second']:.0f} examples/s, MFU {mfu} "
            f"({result['useful_tflops_per_second']:.3g} TFLOP/s useful, "
            f"{result['xla_tflops_per_second']:.3g} by XLA's count), compiled peak "
            f"{result['compiled_memory_bytes']['peak'] / 2**30:.2f} GiB, compile "
            f"{result['compile_seconds']:.0f} s ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr)
  print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
  main(sys.argv[1:])
