"""train.py end to end: sharding, exact resume after SIGKILL, determinism, skipped steps, bad
input, and a few real steps of the demo.

Most runs use a tiny random BERT (2 layers, width 32, the real vocabulary so the real MiniLM
tokenizer works) in PyTorch naming, built in a temporary folder, on the first rows of the real
RTE files, so a training process takes seconds. Processes and workers share the session's
persistent compilation cache (conftest.py).
Device counts come from JAX: the tests run the same on a GPU or TPU host (the fake-device
test forces 8 CPU devices in its own process).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_batch
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from cwgnc_jax import config as config_lib
from cwgnc_jax import command_line, files, identity, methods, optimizers
from cwgnc_jax.models import bert, mixout
from cwgnc_jax.training import loop
from cwgnc_jax.training import run as run_lib
from cwgnc_jax.training import rundir
from cwgnc_jax.training import step as step_lib

REPO = Path(__file__).resolve().parent.parent
NUM_DEVICES = jax.device_count()
# A batch every device count divides: 8 on up to 8 devices (or 1, 2, 4), else 4 per device.
BATCH = 8 if 8 % NUM_DEVICES == 0 else 4 * NUM_DEVICES
TRAIN_ROWS, DEV_ROWS = 6 * BATCH, 2 * BATCH + 3  # 6 steps per epoch; a partial eval batch


# -- Fixtures: a GLUE subset and the environment of train.py processes (the tiny model folder,
# tiny_bert_dir, is in conftest.py). ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_glue(tmp_path_factory, glue_dir) -> Path:
  """The header and first rows of the real RTE train and dev files."""
  folder = tmp_path_factory.mktemp("glue")
  (folder / "RTE").mkdir()
  for split, rows in (("train", TRAIN_ROWS), ("dev", DEV_ROWS)):
    lines = (glue_dir / "RTE" / f"{split}.tsv").read_text(encoding="utf-8").splitlines(True)
    (folder / "RTE" / f"{split}.tsv").write_text("".join(lines[:rows + 1]), encoding="utf-8")
  return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
  """train.py's environment: a token cache of this module's own, and the session's XLA
  compilation cache (conftest.py), so each program compiles once for every worker."""
  return {**os.environ, "PYTHONPATH": str(REPO),
          "CWGNC_CACHE": str(tmp_path_factory.mktemp("cache") / "tokens")}


@pytest.fixture(scope="module")
def tiny_args(tiny_bert_dir, tiny_glue) -> list[str]:
  """train.py arguments of a tiny run: 3 epochs of 6 steps, 2 evaluations per epoch, the best
  one kept (so checkpoints carry best parameters too), checkpoints every 2 steps."""
  return ["--config", "demo", f"--config.model={tiny_bert_dir}", f"--config.glue_dir={tiny_glue}",
          f"--config.batch_size={BATCH}", f"--config.eval_batch_size={BATCH}",
          "--config.num_epochs=3", "--config.checkpoint_every=2", "--config.keep_checkpoints=3",
          "--config.keep_best=true", "--config.evals_per_epoch=2",
          "--config.progress=false", "--config.optimizer.learning_rate=1e-3"]


def train_py(args, workdir, env, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "train.py", *args, "--workdir", str(workdir)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def deterministic(results: dict) -> dict:
  return {k: v for k, v in results.items() if k != "timings"}


def restore_here(folder: Path) -> dict:
  """An orbax checkpoint item onto this process's first device, whatever mesh saved it."""
  checkpointer = ocp.StandardCheckpointer()
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here),
                        checkpointer.metadata(folder).item_metadata)
  return checkpointer.restore(folder, target)


def final_params(workdir: Path) -> dict:
  """The parameters and the best parameters of the run's last checkpoint, as host arrays."""
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  folder = workdir / "checkpoints" / str(steps[-1])
  best = restore_here(folder / "best") if (folder / "best").is_dir() else None
  return jax.tree.map(np.asarray, {"params": restore_here(folder / "state")["params"],
                                   "best": best})


def assert_same_run(workdir: Path, reference: Path) -> None:
  """Same results (timings aside), same metrics.jsonl, bit-identical final parameters."""
  results = json.loads((workdir / "results.json").read_text())
  expected = json.loads((reference / "results.json").read_text())
  assert deterministic(results) == deterministic(expected)
  assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
  params, expected_params = final_params(workdir), final_params(reference)
  if expected["config"]["keep_best"]:
    assert expected_params["best"] is not None
  jax.tree.map(np.testing.assert_array_equal, params, expected_params)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_args, env) -> Path:
  """An uninterrupted tiny run."""
  workdir = tmp_path_factory.mktemp("runs") / "reference"
  done = train_py(tiny_args, workdir, env)
  assert done.returncode == 0, done.stderr
  return workdir


# -- The step. -----------------------------------------------------------------------------

def test_param_spec_shards_the_largest_divisible_dimension():
  assert step_lib.param_spec((1024, 4096), 4, 1) == jax.sharding.PartitionSpec(None, "fsdp")
  assert step_lib.param_spec((30522, 1024), 4, 1) == jax.sharding.PartitionSpec(None, "fsdp")
  assert step_lib.param_spec((4096, 1024), 2, 1) == jax.sharding.PartitionSpec("fsdp")
  assert step_lib.param_spec((1024,), 2, 2**18) == jax.sharding.PartitionSpec()  # small
  assert step_lib.param_spec((7, 9), 2, 1) == jax.sharding.PartitionSpec()  # indivisible
  assert step_lib.param_spec((1024, 1024), 1, 1) == jax.sharding.PartitionSpec()  # no fsdp


def _tiny_step_inputs(diagnostics=False):
  """A tiny model's state and jitted step on one device, and ``batch(example_mask)``."""
  model = bert.BertForSequenceClassification(bert.tiny_config(), 2, rngs=nnx.Rngs(0))
  graphdef, constants, params = bert.split_params(model)
  opt_config = methods.recipe("cwgnc")
  opt_config.warmup_fraction = 0.0  # so the first applied update has a learning rate > 0
  optimizer = optimizers.build_optimizer(opt_config, 10)
  mesh = step_lib.make_mesh(1, 1, jax.devices()[:1])
  abstract = step_lib.abstract_state(params, optimizer, 0, mesh, 2**18)
  state = step_lib.init_state(params, optimizer, 0, abstract)
  jitted = step_lib.jit_train_step(bert.apply_fn(graphdef), optimizer, mesh,
                                   step_lib.shardings_of(abstract), diagnostics=diagnostics)
  step = lambda state, batch: jitted(state, batch, constants)
  batch = lambda mask: step_lib.put_batch(tiny_batch(mask), mesh)
  return state, step, batch


def test_nonfinite_step_is_skipped_and_counted():
  state, step, batch = _tiny_step_inputs()
  # The optimizer's own state (moments, counts, clip statistics; not apply_if_finite's
  # counters of skips) and the parameters stay as they were.
  before = jax.device_get((state.params, state.opt_state.inner_state))
  state, metrics = step(state, batch([1.0, np.nan, 1.0, 1.0]))  # NaN loss and gradients
  assert not bool(metrics["finite"]) and not math.isfinite(float(metrics["loss"]))
  assert (int(state.step), int(step_lib.skipped(state))) == (1, 1)
  after = jax.device_get((state.params, state.opt_state.inner_state))
  jax.tree.map(np.testing.assert_array_equal, after, before)
  # A finite step afterwards is applied (and not counted), at the schedule's first rate.
  state, metrics = step(state, batch([1.0, 1.0, 1.0, 1.0]))
  assert bool(metrics["finite"]) and (int(state.step), int(step_lib.skipped(state))) == (2, 1)
  np.testing.assert_allclose(float(metrics["learning_rate"]), 2e-5 * 10 / 10, rtol=1e-6)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                         jax.device_get(state.params), before[0])
  assert all(jax.tree.leaves(changed))


def test_skipped_step_reports_its_own_gradient_norms():
  """Diagnostics of a skipped step are that step's (NaN) norms, not the last applied ones;
  an applied step reports the norms of its gradients."""
  state, step, batch = _tiny_step_inputs(diagnostics=True)
  state, metrics = step(state, batch([1.0, 1.0, 1.0, 1.0]))
  assert bool(metrics["finite"]) and np.isfinite(metrics["tensor_norms"]).all()
  norms = np.asarray(metrics["tensor_norms"])
  # Values printed once from this step (2026-12-07, XLA:CPU): the embeddings' first three
  # tensors, the classifier's two, and the global norm (what ``grad_norm`` logs). rtol 1e-4:
  # another CPU's kernels sum in another order. The key biases' norms (entries 7 and 23,
  # ~5e-13) are rounding noise (softmax is shift invariant) and not pinned.
  assert norms.shape == (41,)
  np.testing.assert_allclose(norms[[0, 1, 2, 39, 40]],
                             [3.5311736e-03, 1.9730915e-01, 2.1584304e-03, 1.1096679e-02,
                              1.9879678e-01], rtol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(norms), 0.33567765, rtol=1e-5)
  assert np.all(norms[[7, 23]] < 1e-9)
  # Per-tensor components (the demo's CWGNC): each component's norm is its tensor's.
  np.testing.assert_allclose(metrics["component_norms"], norms, rtol=1e-6)
  state, metrics = step(state, batch([1.0, np.nan, 1.0, 1.0]))
  assert not bool(metrics["finite"]) and int(step_lib.skipped(state)) == 1
  # The NaN example's loss reaches every gradient: every norm of the step is NaN.
  assert np.isnan(metrics["tensor_norms"]).all() and np.isnan(metrics["component_norms"]).all()


def test_loss_is_the_mean_over_real_examples():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
  labels = jnp.array([0, 0, 1])
  mask = jnp.array([1.0, 1.0, 0.0])
  expected = optax.softmax_cross_entropy_with_integer_labels(logits[:2], labels[:2]).mean()
  np.testing.assert_allclose(step_lib.masked_mean_cross_entropy(logits, labels, mask), expected,
                             rtol=1e-6)


def test_eval_points_and_best_index():
  assert loop.eval_steps(6, 2, 1) == {6, 12}
  assert loop.eval_steps(6, 2, 3) == {2, 4, 6, 8, 10, 12}
  assert loop.eval_steps(5, 1, 2) == {3, 5}
  assert rundir.best_index([{"score": 1.0}, {"score": 3.0}, {"score": 3.0}]) == 1


# -- Whole runs. ---------------------------------------------------------------------------

# 5 steps on one CPU device or on a sharded mesh: evaluations at steps 3 and 5, checkpoints.
SHORT_RUN = ["--config.batch_size=8", "--config.eval_batch_size=8", "--config.train_limit=40",
             "--config.num_epochs=1"]
FSDP_MESH = ["--config.mesh.fsdp=2", "--config.fsdp_min_size=1024"]


def cpu_env(env: dict[str, str], devices: int) -> dict[str, str]:
  """``env`` with ``devices`` CPU devices; XLA flags already set (``.ci/run``'s
  ``--xla_cpu_max_isa=AVX2``) are kept."""
  flags = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags.strip()}


def records(workdir: Path) -> tuple[list[dict], list[dict]]:
  """The step records and the evaluation records of a run's metrics.jsonl."""
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in lines if "grad_norm" in r], [r for r in lines if "score" in r]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, tiny_args, env) -> Path:
  """The short run on a single CPU device: what the sharded runs must reproduce."""
  workdir = tmp_path_factory.mktemp("runs") / "one_device"
  done = train_py([*tiny_args, *SHORT_RUN], workdir, cpu_env(env, 1))
  assert done.returncode == 0, done.stderr
  return workdir


@pytest.mark.slow
@pytest.mark.real
def test_eight_fake_devices_match_one(one_device, tiny_args, env, tmp_path):
  """5 steps on a (data 4, fsdp 2) mesh of 8 CPU devices give the single-device losses."""
  done = train_py([*tiny_args, *SHORT_RUN, *FSDP_MESH], tmp_path / "eight", cpu_env(env, 8))
  assert done.returncode == 0, done.stderr
  expected = [r["loss"] for r in records(one_device)[0]]
  assert len(expected) == 5
  np.testing.assert_allclose([r["loss"] for r in records(tmp_path / "eight")[0]], expected,
                             atol=1e-5, rtol=0)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.real
def test_two_processes_match_one(one_device, tiny_args, env, tmp_path):
  """Two train.py processes joined through $JAX_COORDINATOR_ADDRESS, 2 CPU devices each, a
  (data 2, fsdp 2) mesh across them (data across the processes, so every array spans both and
  none is fully addressable from one process), write one run directory with the
  single-device run's losses, evaluations and per-layer drift (gathered across the
  processes), and a checkpoint that restores to its parameters."""
  workdir, port = tmp_path / "two", free_port()
  processes = [
      subprocess.Popen([sys.executable, "train.py", *tiny_args, *SHORT_RUN, *FSDP_MESH,
                        "--workdir", str(workdir)], cwd=REPO, text=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env={**cpu_env(env, 2), "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                            "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(index)})
      for index in range(2)]
  errors = [process.communicate(timeout=600)[1] for process in processes]
  assert [process.returncode for process in processes] == [0, 0], errors
  (steps, evals), (expected_steps, expected_evals) = records(workdir), records(one_device)
  np.testing.assert_allclose([r["loss"] for r in steps], [r["loss"] for r in expected_steps],
                             atol=1e-5, rtol=0)
  # Scores exactly, though a mesh of two processes is another program: at the evaluations
  # (steps 3 and 5) every one of the 19 dev examples' margins is at least 7.6e-3 from the
  # decision boundary (measured on the one-device run, 2026-12-07: 7.6e-3 and 1.06e-2), over
  # 700 times the losses' atol 1e-5, itself far above the meshes' rounding.
  for got, want in zip(evals, expected_evals, strict=True):
    assert (got["step"], got["score"], got["examples"]) == (want["step"], want["score"], DEV_ROWS)
    np.testing.assert_allclose(got["loss"], want["loss"], atol=1e-6, rtol=0)
    assert got["drift"].keys() == want["drift"].keys()
    for layer, drift in got["drift"].items():
      np.testing.assert_allclose(list(drift.values()), list(want["drift"][layer].values()),
                                 atol=1e-5, rtol=0)
  results, expected = (json.loads((folder / "results.json").read_text())
                       for folder in (workdir, one_device))
  assert (results["steps"], results["score"]) == (5, expected["score"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0),
               final_params(workdir), final_params(one_device))


@pytest.mark.slow  # a second 18-step train.py run (17 s); in-process reruns are in the fast set
@pytest.mark.real
def test_same_seed_gives_identical_results(reference, tiny_args, env, tmp_path):
  # The reference kept freed host memory mapped (train.py's default); this run uses glibc's
  # default allocation: where buffers live must not change a number.
  done = train_py(tiny_args, tmp_path / "again", {**env, "CWGNC_KEEP_FREED_MEMORY": "0"})
  assert done.returncode == 0, done.stderr
  assert_same_run(tmp_path / "again", reference)
  results = json.loads((reference / "results.json").read_text())
  assert results["seed"] == 1 and results["steps"] == 18 and results["skipped_steps"] == 0
  evals = results["evaluations"]
  assert [e["step"] for e in evals] == [3, 6, 9, 12, 15, 18]
  assert all(e["examples"] == DEV_ROWS for e in evals)
  best = max(evals, key=lambda e: e["score"])  # keep_best: the first of the best evaluations
  assert (results["result"], results["score"], results["result_step"]) == (
      "best", best["score"], best["step"])
  assert set(results["timings"]) >= {"train_seconds", "eval_seconds"}


def _kill_when(process: subprocess.Popen, condition, timeout: float = 120.0) -> None:
  """SIGKILLs ``process`` as soon as ``condition()`` holds (polled every millisecond)."""
  end = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, "the run ended before it could be killed"
    assert time.monotonic() < end, "timed out waiting to kill the run"
    time.sleep(0.001)
  process.send_signal(signal.SIGKILL)
  process.wait()


def _start(args, workdir, env) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "train.py", *args, "--workdir", str(workdir)],
                          cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


def _checkpoints(workdir: Path) -> tuple[list[int], list[Path]]:
  """(complete checkpoint steps, partial save folders) of a run directory."""
  folder = workdir / "checkpoints"
  entries = list(folder.iterdir()) if folder.is_dir() else []
  complete = sorted(int(p.name) for p in entries
                    if p.name.isdigit() and (p / "commit_success.txt").exists())
  return complete, [p for p in entries if "tmp" in p.name]


@pytest.mark.real
@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_is_bit_identical(reference, tiny_args, env, tmp_path):
  workdir = tmp_path / "killed"
  process = _start(tiny_args, workdir, env)
  _kill_when(process, lambda: _checkpoints(workdir)[0])  # right after the first checkpoint
  assert process.returncode == -signal.SIGKILL
  steps, _ = _checkpoints(workdir)
  assert not (workdir / "results.json").exists() and steps[-1] < 18
  done = train_py(tiny_args, workdir, env)
  assert done.returncode == 0, done.stderr
  assert "resumed from" in done.stderr
  assert_same_run(workdir, reference)


@pytest.mark.slow
@pytest.mark.real
def test_sigkill_during_a_save_leaves_the_previous_checkpoint(reference, tiny_args, env,
                                                               tmp_path):
  for attempt in range(5):  # the kill must land inside a save that follows a complete one
    workdir = tmp_path / f"attempt{attempt}"
    process = _start(tiny_args, workdir, env)
    _kill_when(process, lambda: all(_checkpoints(workdir)))
    complete, partial = _checkpoints(workdir)
    if partial and complete:
      break
  else:
    pytest.fail("no kill landed inside a save in 5 attempts")
  done = train_py(tiny_args, workdir, env)
  assert done.returncode == 0, done.stderr
  assert f"resumed from {workdir / 'checkpoints' / str(complete[-1])}" in done.stderr
  assert not _checkpoints(workdir)[1]  # the partial save was removed
  assert_same_run(workdir, reference)


def _tree_digest(folder: Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupted_copy(reference: Path, workdir: Path) -> list[int]:
  """``reference`` copied to ``workdir`` as if killed after its last checkpoint (no
  results.json); returns its checkpoint steps."""
  shutil.copytree(reference, workdir)
  (workdir / "results.json").unlink()
  return _checkpoints(workdir)[0]


@pytest.mark.slow
@pytest.mark.real
def test_corrupt_checkpoint_is_named_and_an_older_one_resumes(reference, tiny_args, env,
                                                               tmp_path):
  workdir = tmp_path / "corrupt"
  steps = _interrupted_copy(reference, workdir)
  for path in (workdir / "checkpoints" / str(steps[-1]) / "state").rglob("*"):
    if path.is_file() and path.name not in ("_CHECKPOINT_METADATA", "commit_success.txt"):
      path.write_bytes(path.read_bytes()[:10])  # truncated
  done = train_py(tiny_args, workdir, env)
  assert done.returncode == 2
  assert done.stderr.count("\n") == 1
  assert f"checkpoint {workdir / 'checkpoints' / str(steps[-1])} cannot be restored" in done.stderr
  assert f"--config.resume_step={steps[-2]}" in done.stderr
  done = train_py([*tiny_args, f"--config.resume_step={steps[-2]}"], workdir, env)
  assert done.returncode == 0, done.stderr
  assert_same_run(workdir, reference)


@pytest.mark.real
def test_a_damaged_gradient_norm_log_stops_a_resume_naming_it(reference, tiny_args, env,
                                                              tmp_path):
  workdir = tmp_path / "damaged"
  steps = _interrupted_copy(reference, workdir)
  log = workdir / "grad_norms.npz"
  log.write_bytes(log.read_bytes()[:100])  # as a full disk could leave it
  unlocked = lambda: {k: v for k, v in _tree_digest(workdir).items() if k != ".lock"}
  before = unlocked()
  # From an older checkpoint: the later ones must stay too.
  done = train_py([*tiny_args, f"--config.resume_step={steps[-2]}"], workdir, env)
  assert done.returncode == 2
  resumed, error = done.stderr.splitlines()
  assert resumed.startswith("resumed from ")
  assert error.startswith(f"train.py: error: {log} is not a readable gradient-norm log (")
  assert error.endswith("; move it away to resume without the norms logged so far")
  assert unlocked() == before  # checkpoints, metrics.jsonl and the rest as they were


@pytest.mark.real
def test_run_directory_of_another_config_is_left_alone(reference, tiny_args, env):
  before = _tree_digest(reference)
  done = train_py([*tiny_args, "--config.seed=2"], reference, env)
  assert done.returncode == 2
  assert done.stderr.count("\n") == 1
  assert f"run directory {reference} holds a run of another config (differs in seed)" in done.stderr
  assert _tree_digest(reference) == before


@pytest.mark.parametrize("key, default, old, unaffected", [
    ("row_length_step", 32, 0, ("rte_cwgnc", {"layout": "padded"})),
    ("dropout_bits", "hash", "threefry", ("rte_mixout", {})),
    ("cls_only_last_layer", True, False, None),  # float rounding differs in every config
    ("gelu", "erf", "erfc", None),  # so does the GELU's
])
def test_run_dirs_from_before_a_later_key_resume_with_its_old_value(tmp_path, key, default, old,
                                                                   unaffected):
  """A config.json without a ``LATER_KEYS`` key was trained with the key's old value (rows of
  max_length; jax.random.bernoulli's masks; every token through the last layer): it resumes
  with that value and is refused, naming the key, with today's default; where the key changes
  nothing (padded rows; Mixout, whose dropout rates are all 0) the default resumes it too."""
  assert identity.LATER_KEYS[key] == old
  config = config_lib.load("rte_cwgnc")
  assert config[key] == default
  older = identity.run_identity(config)
  del older[key]
  (tmp_path / "config.json").write_text(json.dumps(older))
  with pytest.raises(config_lib.ConfigError, match=rf"differs in {key}\)"):
    rundir.check_run_dir(tmp_path, config)
  assert identity.later_key(ml_collections.ConfigDict(older), key) == old
  with_old = config.copy_and_resolve_references()
  with_old[key] = old
  rundir.check_run_dir(tmp_path, with_old)
  if unaffected is None:
    return
  name, overrides = unaffected
  config = config_lib.load(name)
  config.update(overrides)
  older = identity.run_identity(config)
  del older[key]
  (tmp_path / "config.json").write_text(json.dumps(older))
  rundir.check_run_dir(tmp_path, config)


@pytest.mark.parametrize("method", ["demo", "rte_mixout"])
def test_the_run_model_draws_the_configs_dropout_bits_and_last_layer(method):
  """``config.dropout_bits``, ``config.cls_only_last_layer`` and ``config.gelu`` reach the
  pretrained model's ``BertConfig`` (Mixout's too): the two generators train with other masks
  and evaluate the same; either last layer, and either GELU, gives the same logits."""
  models_by = {}
  for bits, cls_only in (("hash", True), ("threefry", True), ("hash", False)):
    config = config_lib.load(method)
    config.model, config.dropout_bits, config.cls_only_last_layer = "minilm-l6", bits, cls_only
    models_by[bits, cls_only] = run_lib.load_model(config, 2)
    assert models_by[bits, cls_only].config.dropout_bits == bits
    assert models_by[bits, cls_only].config.cls_only_last_layer is cls_only
  rows, length = 2, 16  # two padded examples of 16 tokens
  batch = {"input_ids": jnp.asarray(np.random.default_rng(0).integers(1000, 2000, (rows, length))),
           "token_type_ids": jnp.zeros((rows, length), jnp.int32),
           "position_ids": jnp.tile(jnp.arange(length), (rows, 1)),
           "segment_ids": jnp.ones((rows, length), jnp.int32),
           "cls_index": jnp.arange(rows) * length}
  key = jax.random.key(0)
  hashed, threefry, every_token = (models_by["hash", True], models_by["threefry", True],
                                   models_by["hash", False])
  hashed_train = hashed(batch, dropout_rng=key)
  if method == "demo":  # Mixout has no dropout: its masks are moot
    assert not np.allclose(hashed_train, threefry(batch, dropout_rng=key), atol=1e-4)
  np.testing.assert_array_equal(hashed(batch), threefry(batch))
  np.testing.assert_allclose(every_token(batch, dropout_rng=key), hashed_train, rtol=1e-5,
                             atol=1e-6)
  assert isinstance(hashed.classifier, mixout.MixoutLinear) == (method == "rte_mixout")
  # config.gelu reaches the model too: jax.nn.gelu's form gives the same logits up to rounding.
  config = config_lib.load(method)
  config.model, config.gelu = "minilm-l6", "erfc"
  erfc = run_lib.load_model(config, 2)
  assert (erfc.config.gelu, hashed.config.gelu) == ("erfc", "erf")
  np.testing.assert_allclose(erfc(batch), hashed(batch), rtol=1e-5, atol=1e-6)
  assert not np.array_equal(erfc(batch), hashed(batch))


def _wait_for(condition, process: subprocess.Popen, timeout: float = 300.0) -> None:
  end = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, "the process ended first"
    assert time.monotonic() < end, "timed out"
    time.sleep(0.01)


@pytest.mark.real
@pytest.mark.slow
def test_a_second_process_on_a_run_directory_is_refused(reference, tiny_args, env, tmp_path):
  """While one process trains a run directory (held still with SIGSTOP once it has its
  lock), a second one exits 2 naming the holder and changes nothing; the first then ends
  exactly as an uninterrupted run."""
  workdir = tmp_path / "shared"
  first = _start(tiny_args, workdir, env)
  try:
    _wait_for(lambda: files.is_locked(workdir), first)
    first.send_signal(signal.SIGSTOP)
    before = _tree_digest(workdir)
    done = train_py(tiny_args, workdir, env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert (f"run directory {workdir} is in use by another process (pid {first.pid})"
            in done.stderr)
    assert _tree_digest(workdir) == before
  finally:
    first.send_signal(signal.SIGCONT)
  assert first.wait(timeout=300) == 0
  assert_same_run(workdir, reference)
  # Results follow the umask as every other file does (mkstemp alone would make them 0600).
  mode = 0o666 & ~_umask()
  for name in ("results.json", "config.json", "metrics.jsonl", "grad_norms.npz"):
    assert (workdir / name).stat().st_mode & 0o777 == mode, name


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@pytest.mark.real
def test_nothing_is_written_before_the_input_is_accepted(tiny_args, env, tmp_path):
  """A resume step with no checkpoint, a run directory that is a file or lies under a file:
  one line, exit 2, nothing made or changed."""
  done = train_py([*tiny_args, "--config.resume_step=4"], tmp_path / "fresh", env)
  assert done.returncode == 2 and done.stderr.count("\n") == 1
  assert (f"config.resume_step=4 has no checkpoint in {tmp_path / 'fresh' / 'checkpoints'}"
          in done.stderr)
  assert not (tmp_path / "fresh").exists()
  (tmp_path / "a_file").write_text("keep me")
  for workdir, message in ((tmp_path / "a_file", "is a file, not a folder"),
                           (tmp_path / "a_file" / "run", "a_file is a file, not a folder")):
    done = train_py(tiny_args, workdir, env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
  assert (tmp_path / "a_file").read_text() == "keep me"


def test_unwritable_run_directories_are_named(tmp_path, monkeypatch):
  """As root every folder is writable, so the permission check is tested with os.access
  answering as it does for an ordinary user."""
  (tmp_path / "locked").mkdir()
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda path, mode: (
      Path(path) != tmp_path / "locked" and real_access(path, mode)))
  assert files.unwritable_reason(tmp_path / "locked" / "run") == (
      f"cannot write to {tmp_path / 'locked'} (to make {tmp_path / 'locked' / 'run'} in it): "
      "permission denied")
  assert files.unwritable_reason(tmp_path / "locked") == (
      f"cannot write to {tmp_path / 'locked'}: permission denied")
  assert files.unwritable_reason(tmp_path / "new" / "run") is None


BAD_INPUTS = [
    (["--config.task=stsb"],
     "unknown task 'stsb'; valid: rte, mrpc, cola, sst2, qnli, qqp, mnli"),
    (["--config.model=nope"], "unknown model 'nope'; valid: minilm-l6"),
    (["--config.method=sgd"], "unknown method 'sgd'; valid: bertadam"),
    (["--config.glue_dir=/no/such/glue"], "cannot read /no/such/glue/RTE/train.tsv"),
    (["--config.optimizer.clip_norm=0"], "clip_norm (the CWGNC threshold) must be > 0, got 0.0"),
    (["--config.model=cwgnc-no-such-org/no-such-model"],
     "model 'cwgnc-no-such-org/no-such-model' is not a local folder and could not be downloaded"),
]


@pytest.mark.real
@pytest.mark.parametrize("extra, message", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(extra, message, tiny_args, env, tmp_path):
  log_compiles = {**env, "JAX_LOG_COMPILES": "1"}
  done = train_py([*tiny_args, *extra], tmp_path / "run", log_compiles)
  assert done.returncode == 2
  assert done.stderr.startswith("train.py: error: ") and done.stderr.count("\n") == 1
  assert message in done.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.real
def test_unknown_config_and_indivisible_batch_exit_2(tiny_args, env, tmp_path):
  done = train_py(["--config", "no_such_config"], tmp_path / "run", env)
  assert done.returncode == 2 and "unknown config 'no_such_config'; valid: " in done.stderr
  devices = max(2, NUM_DEVICES)
  done = train_py([*tiny_args, f"--config.batch_size={devices + 1}"], tmp_path / "run",
                  {**cpu_env(env, devices), "JAX_LOG_COMPILES": "1"})
  assert done.returncode == 2 and done.stderr.count("\n") == 1
  assert (f"config.batch_size={devices + 1} is not divisible by the {devices} devices"
          in done.stderr)
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.real
def test_demo_config_learns_on_real_rte(glue_dir, env, tmp_path):
  """MiniLM-L6 on 32 real RTE examples, 3 epochs of 2 steps: the training loss falls, and
  every dev evaluation covers all 277 dev examples."""
  args = ["--config", "demo", f"--config.glue_dir={glue_dir}", "--config.train_limit=32",
          "--config.num_epochs=3", "--config.progress=false"]
  done = train_py(args, tmp_path / "demo", env)
  assert done.returncode == 0, done.stderr
  records = [json.loads(line) for line in
             (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if "grad_norm" in r]
  assert len(losses) == 6
  assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.02, losses  # last vs first epoch
  results = json.loads((tmp_path / "demo" / "results.json").read_text())
  assert [e["examples"] for e in results["evaluations"]] == [277] * 3
  assert results["result"] == "final" and results["score"] == results["evaluations"][-1]["score"]
  assert results["dev_examples"] == 277
  assert math.isclose(results["majority_score"], 100 * 146 / 277, rel_tol=1e-9)


@pytest.mark.real
def test_a_rerun_loads_its_compiled_steps_from_the_cache(tiny_rte_run, tiny_rte_command,
                                                         tmp_path):
  """train.py keeps its compiled programs in <cache_dir>/xla by default: the same command in
  another run directory loads its training and evaluation steps instead of compiling them,
  and computes the same run."""
  args, env = tiny_rte_command
  cache_dir, = (a.split("=", 1)[1] for a in args if a.startswith("--config.cache_dir="))
  cache = Path(cache_dir) / "xla"
  assert any(cache.iterdir())
  done = train_py(args, tmp_path / "again", {**env, "JAX_LOG_COMPILES": "1"})
  assert done.returncode == 0, done.stderr
  for step in ("step", "forward"):  # the training and evaluation steps
    assert f"Persistent compilation cache hit for 'jit_{step}'" in done.stderr, step
  assert "PERSISTENT COMPILATION CACHE MISS" not in done.stderr  # nothing compiled anew
  assert_same_run(tmp_path / "again", tiny_rte_run)


def test_compilation_cache_takes_effect_in_a_process_that_compiled_before(tmp_path):
  """``use_compilation_cache``: <cache_dir>/xla unless JAX has a folder already; programs
  compiled after the call are kept there even though the process compiled (and so read
  JAX's cache settings) before it; ``compilation_cache=false`` turns the cache off."""
  config = config_lib.load("rte_cwgnc")
  before = {name: getattr(jax.config, name) for name in
            ("jax_compilation_cache_dir", "jax_enable_compilation_cache",
             "jax_persistent_cache_min_compile_time_secs")}
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax_cache.reset_cache()
    jax.jit(lambda x: x + 1)(1.0)  # the process reads the cache settings: no folder
    config.cache_dir = str(tmp_path)
    assert run_lib.use_compilation_cache(config) == tmp_path / "xla"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    jax.jit(lambda x: x * 3 - 2)(jnp.arange(7.0))
    assert any((tmp_path / "xla").iterdir())
    config.cache_dir = str(tmp_path / "other")  # a folder JAX already has stays
    assert run_lib.use_compilation_cache(config) == tmp_path / "xla"
    config.compilation_cache = False
    assert run_lib.use_compilation_cache(config) is None
    assert jax.config.jax_enable_compilation_cache is False
    kept = set((tmp_path / "xla").iterdir())
    jax.jit(lambda x: x * 5 - 4)(jnp.arange(7.0))
    assert set((tmp_path / "xla").iterdir()) == kept
    with pytest.raises(config_lib.ConfigError, match=r"^--config.compilation_cache=maybe: "
                       r"expected true or false$"):
      command_line.train_config(["--config", "rte_cwgnc", "--config.compilation_cache=maybe"])
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    jax_cache.reset_cache()
