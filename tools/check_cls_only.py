"""The [CLS]-only last layer against the whole one, beyond the test suite.

  rounding: on the first ``--batches`` packed batches of real RTE epoch 0 (MiniLM-L6, dropout
            on, one key), the loss and the largest absolute difference of any gradient entry
            between ``cls_only_last_layer`` True and False.
  compile:  seconds to compile the loss's gradient, each way, for the tiny 2-layer BERT of the
            unit tests and for MiniLM-L6, on a (10, 128) batch (the best of 3); and what the
            compiled program is made of: the kernels XLA generated and LLVM compiled (one
            ``*.ir-with-opt.ll`` module each in an XLA dump; identical fusions share one) and
            the fusions it handed to the YNNPACK library instead (``kind=kCustom``).

  PYTHONPATH=. GLUE_DIR=../shared/glue python tools/check_cls_only.py [--batches 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from cwgnc_jax import command_line
from cwgnc_jax import models
from cwgnc_jax.models import bert
from cwgnc_jax.training import run as run_lib


def loss_and_grad(graph: nnx.GraphDef, constants):
  """A jitted ``(params, batch, key) -> (loss, grads)`` of the model ``graph``."""
  apply = models.apply_fn(graph)
  loss = lambda p, batch, key: jnp.mean(jax.nn.log_softmax(
      apply(p, constants, {k: batch[k] for k in bert.INPUT_KEYS}, key))[:, 0])
  return jax.jit(jax.value_and_grad(loss))


def compile_seconds(model_config: bert.BertConfig, rows: int = 10, length: int = 128
                    ) -> tuple[float, int, int]:
  """(best seconds to compile the gradient, LLVM-compiled kernels, YNNPACK fusions)."""
  model = bert.BertForSequenceClassification(model_config, 2, rngs=nnx.Rngs(0))
  graph, constants, params = models.split_params(model)
  batch = {"input_ids": jnp.ones((rows, length), jnp.int32),
           "token_type_ids": jnp.zeros((rows, length), jnp.int32),
           "position_ids": jnp.tile(jnp.arange(length), (rows, 1)),
           "segment_ids": jnp.ones((rows, length), jnp.int32),
           "cls_index": jnp.arange(rows) * length}
  grad = jax.grad(lambda p: jnp.sum(models.apply_fn(graph)(p, constants, batch,
                                                           jax.random.key(0))))
  best = float("inf")
  for _ in range(3):
    jax.clear_caches()
    start = time.perf_counter()
    jax.jit(grad).lower(params).compile()
    best = min(best, time.perf_counter() - start)
  with tempfile.TemporaryDirectory() as dump:
    jax.clear_caches()
    compiled = jax.jit(grad).lower(params).compile(compiler_options={"xla_dump_to": dump})
    kernels = len(list(Path(dump).glob("*.ir-with-opt.ll")))
  return best, kernels, compiled.as_text().count("kind=kCustom")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=2, help="real RTE batches compared")
  args = parser.parse_args()
  config, _ = command_line.train_config(["--config", "demo"])
  run = run_lib.prepare(config, tempfile.mkdtemp(prefix="check_cls_only_"))
  graph_of = lambda c: models.split_params(bert.BertForSequenceClassification(
      c, run.task.num_labels, rngs=nnx.Rngs(0)))[0]
  base = models.load_config(config.model)
  steps = {cls_only: loss_and_grad(
      graph_of(dataclasses.replace(base, cls_only_last_layer=cls_only)), run.constants)
           for cls_only in (True, False)}
  for batch in itertools.islice(run_lib.epoch_batches(run, 0, row_multiple=1), args.batches):
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    (loss_cls, grads_cls), (loss_all, grads_all) = (steps[c](run.params, batch,
                                                             jax.random.key(3))
                                                    for c in (True, False))
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                         grads_cls, grads_all))
    print(f"rounding {tuple(batch['input_ids'].shape)}: loss {float(loss_cls):.9f} against "
          f"{float(loss_all):.9f}; largest gradient difference {max(diffs):.2e}; "
          f"{sum(d == 0 for d in diffs)} of {len(diffs)} tensors bit-identical")
  for name, model_config in (("tiny", bert.tiny_config(vocab_size=30522)), ("minilm-l6", base)):
    (cls_s, cls_kernels, cls_ynn), (all_s, all_kernels, all_ynn) = (
        compile_seconds(dataclasses.replace(model_config, cls_only_last_layer=c))
        for c in (True, False))
    print(f"compile ({name}): [CLS] only {cls_s:.2f} s, every token {all_s:.2f} s, "
          f"{cls_s / all_s:.2f}x; LLVM-compiled kernels {cls_kernels} against {all_kernels}, "
          f"YNNPACK fusions {cls_ynn} against {all_ynn}")


if __name__ == "__main__":
  main()
