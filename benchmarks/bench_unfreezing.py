"""XLA FLOPs (and optionally time) of the train step in each gradual-unfreezing iteration.

Iteration k trains the head and the top k + 1 encoder layers; the hidden state entering the
lowest trained layer goes through ``stop_gradient``, so XLA should drop the backward pass of
every frozen layer. This lowers the jitted train step of every iteration (the optimizer with
its frozen-tensor mask, the model cut below its lowest trained layer) on an abstract batch of
``--batch`` examples of ``--length`` tokens (padded layout), and prints
``compiled.cost_analysis()['flops']`` relative to plain full fine-tuning. Nothing is loaded
but the model's config.json; ``--time`` also times each step on random tokens (best of
``--repeats``).

Measured (MiniLM-L6, AdamW, batch 16 x 128 tokens, 2 shared CPU cores): iteration 0 does 0.44x
the FLOPs of full fine-tuning (62.8 of 142.7 GFLOP) in 0.42x the time (1.02 of 2.46 s/step),
each further layer +0.11x; iteration 5 (all encoder layers, embeddings frozen) 0.98x. That is
forward (1/3) plus the backward of the trained layers only: the frozen layers' backward is gone.

  PYTHONPATH=. python benchmarks/bench_unfreezing.py                       # MiniLM-L6
  PYTHONPATH=. python benchmarks/bench_unfreezing.py --model bert-large-uncased --batch 4
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from cwgnc_jax import methods, models, unfreezing  # pylint: disable=wrong-import-position
from cwgnc_jax.training import step as step_lib  # pylint: disable=wrong-import-position


def batch(size: int, length: int, abstract: bool) -> dict:
  """A padded batch: ``size`` rows of ``length`` tokens, one example per row."""
  rng = np.random.default_rng(0)
  values = {"input_ids": rng.integers(1000, 2000, (size, length)).astype(np.int32),
            "token_type_ids": np.zeros((size, length), np.int32),
            "position_ids": np.tile(np.arange(length, dtype=np.int32), (size, 1)),
            "segment_ids": np.ones((size, length), np.int32),
            "cls_index": np.arange(size, dtype=np.int32) * length,
            "labels": rng.integers(0, 2, size).astype(np.int32),
            "example_mask": np.ones(size, np.float32)}
  if abstract:
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in values.items()}
  return {k: jnp.asarray(v) for k, v in values.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="minilm-l6")
  parser.add_argument("--method", default="adamw", help="an optimizer recipe")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--time", action="store_true", help="also time each step")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  bert_config = models.load_config(args.model)
  num_layers = bert_config.num_hidden_layers
  model = nnx.eval_shape(lambda: models.BertForSequenceClassification(
      bert_config, 2, rngs=nnx.Rngs(0)))
  graphdef, constants, params = models.split_params(model)
  apply = models.apply_fn(graphdef)
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  config = ml_collections.ConfigDict({
      "num_epochs": 1, "optimizer": methods.recipe(args.method),
      "unfreezing": {"mode": "gu", "iterations": None, "epochs_per_iteration": 1}})
  plain = unfreezing.Stage(0, 0, 100, None)
  stages = [plain] + unfreezing.stages(config, num_layers, steps_per_epoch=100)
  print(f"{args.model}: {num_layers} layers, batch {args.batch} x {args.length} tokens, "
        f"{args.method}; train-step FLOPs (XLA cost analysis) per GU iteration")
  full_flops = None
  for stage in stages:
    optimizer = unfreezing.stage_optimizer(config.optimizer, stage, params)
    abstract = step_lib.abstract_state(params, optimizer, 0, mesh, 2**62)
    step = jax.jit(step_lib.train_step_fn(unfreezing.stage_apply(apply, stage), optimizer))
    compiled = step.lower(abstract, batch(args.batch, args.length, abstract=True),
                          constants).compile()
    flops = compiled.cost_analysis()["flops"]
    full_flops = full_flops or flops
    if stage.bottom is None:
      name = "full fine-tuning"
    elif stage.bottom == unfreezing.EMBEDDINGS:
      name = f"GU iteration {stage.index:2d} (everything)"
    else:
      top = stage.index + 1
      name = f"GU iteration {stage.index:2d} (head + top {top} layer{'s' if top > 1 else ''})"
    line = f"  {name:<36} {flops / 1e9:9.1f} GFLOP  {flops / full_flops:6.3f} x full"
    if args.time:
      real = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract)
      real = real._replace(params=jax.tree.map(
          lambda x: 0.02 * jax.random.normal(jax.random.key(0), x.shape, x.dtype), real.params))
      inputs = batch(args.batch, args.length, abstract=False)
      state, _ = compiled(real, inputs, constants)
      best = float("inf")
      for _ in range(args.repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, inputs, constants)
        jax.block_until_ready(metrics)
        best = min(best, time.perf_counter() - start)
      line += f"  {best:7.3f} s/step"
    print(line, flush=True)


if __name__ == "__main__":
  main()
