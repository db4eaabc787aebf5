"""The train and eval programs lower for GPU (``cuda``) and TPU on this CPU-only host.

No accelerator is at hand where the suite runs, so this is what keeps the programs
compilable there. The programs ``train.py`` builds for fine-tuning (``program.Stages``: the
train step with per-tensor gradient norms in float32 and in bfloat16, alone and
seed-stacked, and the eval step) are traced on abstract arrays and lowered to StableHLO for
each platform (``Traced.lower(lowering_platforms=...)``); nothing is compiled or run. The
model has two layers of BERT-large's width and its vocabulary, built with ``nnx.eval_shape``:
no parameter is allocated.

A lowering must hold no custom call: each is a kernel of one platform's runtime (LAPACK or a
Python callback on CPU, cuSOLVER on GPU, ...), and none is needed today; a new one is to be
checked against every platform before it is let in here. And ``low_precision_dense``'s
backward pass must take the plain transpose there (``bert._row_major_transpose``: its
row-major form, for XLA:CPU's bfloat16 kernels, is chosen by ``lax.platform_dependent``
when the program is lowered); the same program lowered for ``cpu`` holds the row-major form,
which shows that the check can tell the two apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cwgnc_jax import config as config_lib
from cwgnc_jax import tasks
from cwgnc_jax.data import glue
from cwgnc_jax.models import bert
from cwgnc_jax.training import program as program_lib
from cwgnc_jax.training import run as run_lib
from cwgnc_jax.training import step as step_lib

PLATFORMS = ("cuda", "tpu")
BERT_LARGE_WIDTH = dict(vocab_size=30522, hidden_size=1024, num_attention_heads=16,
                        intermediate_size=4096, num_hidden_layers=2)
# Examples of the stand-in train split: only the length of the learning-rate schedule
# depends on it.
TRAIN_EXAMPLES = 32
ROWS, EXAMPLES, LENGTH = 4, 8, 128  # a packed batch's shapes: 8 examples in 4 rows of 128
# On CPU every dense layer's backward pass stores both of its transposes row-major (the
# kernel's for dx, the inputs' for dw), except the classifier kernel's: its 2 columns have no
# chunks. Six dense layers per encoder layer, then the pooler and the classifier.
ROW_MAJOR_ON_CPU = {"float32": 0,
                    "bfloat16": 2 * (6 * BERT_LARGE_WIDTH["num_hidden_layers"] + 2) - 1}


def _run(dtype: str, seed: int) -> run_lib.Run:
  """A run of the rte_cwgnc config in ``dtype`` on the abstract model, without data."""
  config = config_lib.load("rte_cwgnc")
  config.dtype, config.seed = dtype, seed
  model_config = bert.BertConfig(**BERT_LARGE_WIDTH, **config_lib.model_overrides(config))
  model = nnx.eval_shape(lambda: bert.BertForSequenceClassification(
      model_config, 2, rngs=nnx.Rngs(seed), dtype=jnp.dtype(dtype)))
  graphdef, constants, params = bert.split_params(model)
  no_tokens = np.zeros(0, np.int32)
  examples = glue.TokenizedSplit(no_tokens, no_tokens, np.zeros(TRAIN_EXAMPLES + 1, np.int64),
                                 np.zeros(TRAIN_EXAMPLES, np.int32))
  return run_lib.Run(config, Path("unused"), tasks.get_task("rte"), examples, examples, params,
                  constants, bert.apply_fn(graphdef), num_devices=1, majority_score=0.0)


def _stacked(tree, seeds: int, shardings=None):
  """``tree``'s shapes, with a leading seed axis when ``seeds`` > 1, laid out by
  ``shardings``."""
  lead = (seeds,) if seeds > 1 else ()
  struct = lambda x, s=None: jax.ShapeDtypeStruct(lead + tuple(x.shape), x.dtype, sharding=s)
  return jax.tree.map(struct, tree) if shardings is None else jax.tree.map(struct, tree,
                                                                           shardings)


def _batch(seeds: int) -> dict[str, jax.ShapeDtypeStruct]:
  batch = {key: np.zeros((ROWS, LENGTH), np.int32)
           for key in ("input_ids", "token_type_ids", "position_ids", "segment_ids")}
  batch.update(cls_index=np.zeros(EXAMPLES, np.int32), labels=np.zeros(EXAMPLES, np.int32),
               example_mask=np.zeros(EXAMPLES, np.float32))
  return _stacked(batch, seeds)


@pytest.fixture(scope="module", params=[("float32", 1), ("bfloat16", 1), ("float32", 2),
                                        ("bfloat16", 2)], ids=lambda p: f"{p[0]}-{p[1]}seeds")
def programs(request):
  """``(dtype, train, eval)``: the traced train and eval steps of ``program.Stages`` for one
  seed or two stacked (vmapped), with per-tensor gradient norms."""
  dtype, seeds = request.param
  runs = [_run(dtype, seed) for seed in range(1, seeds + 1)]
  stages = program_lib.Stages(runs, step_lib.make_mesh(1, 1, jax.devices()[:1]), "", {},
                       diagnostics=True)
  stage = stages.all[0]
  shardings = stages.shardings(stage)
  state = _stacked(stages.setup(stage)[1], seeds, shardings)
  constants = _stacked(runs[0].constants, seeds)
  train = stages.train_step(stage).trace(state, _batch(seeds), constants)
  evaluate = stages.eval_step().trace(state.params, constants, _batch(1))
  return dtype, train, evaluate


def custom_calls(module: str) -> set[str]:
  """The targets of a StableHLO module's custom calls."""
  return set(re.findall(r"stablehlo\.custom_call @([\w$.-]+)", module))


def row_major_transposes(module: str) -> int:
  """How many of ``_row_major_transpose``'s reshapes a StableHLO module holds: bfloat16
  matrices cut into chunks of 128 columns (every dense width here is a multiple of 128)."""
  return len(re.findall(r"stablehlo\.reshape [^\n]*-> tensor<(?:\d+x){2,}128xbf16>", module))


def test_the_train_step_lowers_with_no_custom_call_and_the_plain_transpose(programs):
  dtype, train, _ = programs
  for platform in PLATFORMS:
    module = train.lower(lowering_platforms=(platform,)).as_text()
    assert custom_calls(module) == set(), platform
    assert row_major_transposes(module) == 0, platform
  # The same count on CPU: the row-major form is in the program, and is told apart.
  cpu = train.lower(lowering_platforms=("cpu",)).as_text()
  assert row_major_transposes(cpu) == ROW_MAJOR_ON_CPU[dtype]


def test_the_eval_step_lowers_with_no_custom_call(programs):
  _, _, evaluate = programs
  for platform in PLATFORMS:
    assert custom_calls(evaluate.lower(lowering_platforms=(platform,)).as_text()) == set()
