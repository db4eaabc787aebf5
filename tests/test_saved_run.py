"""A finished run read back: the scored parameters of its last checkpoint, and folders that
are not finished runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwgnc_jax import paths, saved_run
from cwgnc_jax.models import bert
from cwgnc_jax.training import checkpoint
from cwgnc_jax.training import step as step_lib


def flat(tree) -> dict[str, np.ndarray]:
  return {paths.path_to_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def copy_run(tiny_rte_run: Path, folder: Path) -> Path:
  shutil.copytree(tiny_rte_run, folder)
  return folder


@pytest.mark.real
def test_the_scored_parameters_are_loaded(tiny_rte_run, tmp_path):
  """``results.json``'s ``result`` picks the checkpoint item: 'final' the TrainState's
  parameters, 'best' the best ones (made different here); the optimizer state is not read."""
  run = saved_run.open_run(copy_run(tiny_rte_run, tmp_path / "run"))
  final = checkpoint.read_params(run.checkpoint_dir, checkpoint.STATE)
  best = jax.tree.map(lambda x: x + 1.0, final)
  shutil.rmtree(run.checkpoint_dir)
  checkpoints = checkpoint.Checkpointer(run.workdir / "checkpoints", keep=1)
  zero = jnp.zeros([], jnp.int32)
  state = step_lib.TrainState(zero, final, {"moment": jnp.ones(3)}, zero)
  checkpoints.save(run.results["steps"], state, {"step": run.results["steps"]}, best)
  checkpoints.close()
  for result, expected in (("final", final), ("best", best)):
    (run.workdir / "results.json").write_text(json.dumps({**run.results, "result": result}))
    model = saved_run.load_model(saved_run.open_run(run.workdir))
    loaded = flat(bert.split_params(model)[2])
    assert loaded.keys() == flat(expected).keys()
    for path, value in flat(expected).items():
      np.testing.assert_array_equal(loaded[path], value, err_msg=f"{result}: {path}")


@pytest.mark.real
def test_the_model_computes_as_the_run_did(tiny_rte_run, tmp_path):
  """The run's model choices reach the loaded model: the run's own values, and for a
  config.json from before a key, the value it was trained with (``identity.LATER_KEYS``)."""
  run = saved_run.open_run(copy_run(tiny_rte_run, tmp_path / "run"))
  assert run.config["cls_only_last_layer"] is True and run.config["dropout_bits"] == "hash"
  model_config = saved_run.load_model(run).config
  assert (model_config.cls_only_last_layer, model_config.dropout_bits) == (True, "hash")
  older = {k: v for k, v in run.config.items() if k not in ("cls_only_last_layer", "dropout_bits")}
  (run.workdir / "config.json").write_text(json.dumps(older))
  model_config = saved_run.load_model(saved_run.open_run(run.workdir)).config
  assert (model_config.cls_only_last_layer, model_config.dropout_bits) == (False, "threefry")


@pytest.mark.real
def test_a_folder_that_is_not_a_finished_run_is_named(tiny_rte_run, tmp_path):
  def error(folder: Path) -> str:
    with pytest.raises(saved_run.RunDirError) as info:
      saved_run.load_model(saved_run.open_run(folder))
    assert "\n" not in str(info.value)
    return str(info.value)

  assert error(tmp_path / "absent") == f"no run directory at {tmp_path / 'absent'}"
  assert error(tmp_path).startswith(f"{tmp_path} is not a run directory: it has no config.json")
  run = copy_run(tiny_rte_run, tmp_path / "run")
  results = json.loads((run / "results.json").read_text())
  (run / "results.json").write_text(json.dumps({**results, "result": "median"}))
  assert f"{run / 'results.json'} has result 'median'" in error(run)
  (run / "results.json").write_text(json.dumps({**results, "result": ["best"]}))
  assert error(run) == (f"{run / 'results.json'}: result is ['best'], expected a string; not "
                        "as train.py writes it: rerun the run's train.py command")
  (run / "results.json").write_text("[]")
  assert error(run).startswith(f"{run / 'results.json'} is an array, expected an object;")
  (run / "results.json").unlink()
  assert error(run).startswith(f"run {run} has not finished: it has no results.json")
  (run / "results.json").write_text(json.dumps(results))
  config = json.loads((run / "config.json").read_text())
  (run / "config.json").write_text(json.dumps({**config, "model": str(tmp_path / "gone")}))
  assert f"fine-tuned the model '{tmp_path / 'gone'}', which cannot be loaded" in error(run)
  (run / "config.json").write_text(json.dumps({**config, "task": "stsb"}))
  assert "unknown GLUE task 'stsb'" in error(run)
  (run / "config.json").write_text(json.dumps({**config, "dtype": "bfloat32"}))
  assert error(run) == (f"{run / 'config.json'}: dtype 'bfloat32' is not a dtype; not as "
                        "train.py writes it: rerun the run's train.py command")
  (run / "config.json").write_text('{"task": ')
  assert error(run).startswith(f"{run / 'config.json'}:1: not valid JSON (")
  (run / "config.json").write_text(json.dumps(config))
  (run / "checkpoints" / str(results["steps"]) / "best" / "_METADATA").unlink()
  with pytest.raises(checkpoint.CheckpointError) as info:  # there, but unreadable
    saved_run.load_model(saved_run.open_run(run))
  assert (f"cannot read the parameters of checkpoint item "
          f"{run / 'checkpoints' / str(results['steps']) / 'best'}" in str(info.value))
  shutil.rmtree(run / "checkpoints" / str(results["steps"]))
  assert (f"{run / 'checkpoints' / str(results['steps'])} is missing" in error(run))
