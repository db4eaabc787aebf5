"""Several seeds in one vmapped program: batch stacking, the step against the sequential one,
and a study trained that way against one trained seed by seed."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from cwgnc_jax import methods, optimizers, study
from cwgnc_jax.data import batching, glue
from cwgnc_jax.models import bert
from cwgnc_jax.training import multiseed
from cwgnc_jax.training import step as step_lib


def _split(lengths):
  """A tokenized split of examples with the given lengths (token ids 5, 6, ...)."""
  ids = np.concatenate([np.arange(5, 5 + n, dtype=np.int32) for n in lengths])
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  return glue.TokenizedSplit(ids, np.zeros_like(ids), offsets,
                             np.arange(len(lengths), dtype=np.int64) % 2)


def test_stack_batches_pads_rows_with_empty_rows():
  data = _split([30, 30, 30, 30, 10, 10, 10, 10])
  long = batching.make_batch(data, np.arange(4), 4, layout="packed", max_length=32)
  short = batching.make_batch(data, np.arange(4, 8), 4, layout="packed", max_length=32)
  assert (long["input_ids"].shape[0], short["input_ids"].shape[0]) == (4, 2)
  stacked = multiseed.stack_batches([long, short])
  assert stacked["input_ids"].shape == (2, 4, 32) and stacked["labels"].shape == (2, 4)
  for key in long:
    np.testing.assert_array_equal(stacked[key][0], long[key])
  np.testing.assert_array_equal(stacked["segment_ids"][1, :2], short["segment_ids"])
  np.testing.assert_array_equal(stacked["segment_ids"][1, 2:], 0)  # empty rows
  np.testing.assert_array_equal(stacked["cls_index"][1], short["cls_index"])
  tree = multiseed.stack([{"a": np.ones(2)}, {"a": np.zeros(2)}])
  np.testing.assert_array_equal(multiseed.unstack(tree, 1)["a"], [0, 0])


def test_vmapped_step_equals_the_step_of_each_seed():
  model = bert.BertForSequenceClassification(bert.tiny_config(num_hidden_layers=1), 2,
                                             rngs=nnx.Rngs(0))
  graphdef, constants, params = bert.split_params(model)
  apply = bert.apply_fn(graphdef)
  opt = methods.recipe("cwgnc")
  opt.warmup_fraction = 0.0  # the first step updates
  optimizer = optimizers.build_optimizer(opt, 10)
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  abstract = step_lib.abstract_state(params, optimizer, 0, mesh, 2**18)
  data = _split([12, 20, 7, 9, 30, 15, 11, 8])
  batches = [batching.make_batch(data, order, 4, layout="packed", max_length=32)
             for order in (np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7]))]
  states = [step_lib.init_state(params, optimizer, seed, abstract) for seed in (1, 2)]
  stacked_state = multiseed.stack(states)
  single = step_lib.jit_train_step(apply, optimizer, mesh, step_lib.shardings_of(abstract),
                                   diagnostics=True)
  expected = [jax.device_get(single(state, step_lib.put_batch(batch, mesh), constants))
              for state, batch in zip(states, batches)]
  together, metrics = jax.device_get(multiseed.jit_train_steps(apply, optimizer,
                                                               diagnostics=True)(
      stacked_state, jax.device_put(multiseed.stack_batches(batches)),
      multiseed.stack([constants, constants])))
  for s, (state, step_metrics) in enumerate(expected):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 multiseed.unstack(together, s), state)
    for key, value in step_metrics.items():
      np.testing.assert_allclose(metrics[key][s], value, rtol=1e-5, atol=1e-7)
  assert not np.allclose(metrics["loss"][0], metrics["loss"][1])  # two different seeds


@pytest.mark.real
def test_study_with_seeds_in_one_program_matches_seed_by_seed(tiny_bert_dir, tiny_rte_dir,
                                                              tmp_path):
  overrides = [("model", str(tiny_bert_dir)), ("glue_dir", str(tiny_rte_dir)),
               ("batch_size", "8"), ("eval_batch_size", "8"), ("num_epochs", "2"),
               ("layout", "padded"),
               ("progress", "false"), ("optimizer.learning_rate", "1e-3"),
               ("diagnostics_every", "2"), ("keep_best", "true")]
  together = study.run_study("demo", overrides, [1, 2], tmp_path / "together", 2)
  alone = study.run_study("demo", overrides, [2], tmp_path / "alone")
  group = together["group"]
  results = {way: json.loads((tmp_path / way / group / "seed_2" / "results.json").read_text())
             for way in ("together", "alone")}
  assert results["together"]["timings"]["seeds_in_program"] == 2
  assert set(results["together"]) == set(results["alone"])
  for key in ("seed", "steps", "result_step", "skipped_steps", "train_examples", "config"):
    assert results["together"][key] == results["alone"][key]
  for a, b in zip(results["together"]["evaluations"], results["alone"]["evaluations"]):
    assert (a["step"], a["examples"]) == (b["step"], b["examples"])
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for layer in b["drift"]:
      assert a["drift"][layer] == pytest.approx(b["drift"][layer], rel=1e-3, abs=1e-9)
  records = {way: [json.loads(line) for line in (tmp_path / way / group / "seed_2" /
                                                  "metrics.jsonl").read_text().splitlines()]
             for way in ("together", "alone")}
  np.testing.assert_allclose([r["loss"] for r in records["together"] if "grad_norm" in r],
                             [r["loss"] for r in records["alone"] if "grad_norm" in r],
                             rtol=1e-4)
  norms = {way: np.load(tmp_path / way / group / "seed_2" / "grad_norms.npz")
           for way in ("together", "alone")}
  np.testing.assert_array_equal(norms["together"]["step"], norms["alone"]["step"])
  np.testing.assert_allclose(norms["together"]["tensor_norms"], norms["alone"]["tensor_norms"],
                             rtol=1e-3, atol=1e-7)
  assert together["finished"] == 2 and together["seeds"] == [1, 2]

  # Its checkpoints resume seed by seed: without results.json, seed 2 ends from its last one.
  shutil.move(tmp_path / "together" / group / "seed_2" / "results.json", tmp_path / "old.json")
  study.run_study("demo", overrides, [1, 2], tmp_path / "together", 2)
  resumed = json.loads((tmp_path / "together" / group / "seed_2" / "results.json").read_text())
  old = json.loads((tmp_path / "old.json").read_text())
  assert {k: v for k, v in resumed.items() if k != "timings"} == {
      k: v for k, v in old.items() if k != "timings"}
