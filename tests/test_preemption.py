"""SIGTERM and a disk that cannot take a write, in train.py and the study: one line, and a rerun
of the same command that ends as an uninterrupted run would, bit for bit.

The runs are the tiny random BERT of conftest.py on its first rows of the real RTE (32 train
rows: 4 steps of 8 per epoch): 3 epochs, an evaluation after each (steps 4, 8 and 12), a
checkpoint after every evaluation and every 3 steps. A signal is sent at a named point of the run by the process itself (``HOOK``:
train.py or the study run with one function wrapped), so where it lands does not depend on
timing. Python runs a signal's handler between two bytecodes of the main thread, so a signal
that arrives while XLA compiles, steps or evaluates (C++) is handled when that call returns:
a signal sent just before the call is handled at the same point.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cwgnc_jax import files

REPO = Path(__file__).resolve().parent.parent
STEPS = 12

# train.py (argv[1] 'train.py') or the study (argv[1] '-m') with one point wrapped, as
# $CWGNC_TEST_AT says: 'signal:<point>:<n>' sends SIGTERM to the process itself at the n-th
# (from 1) call of the point's function -- 'step' the jitted train step (the first call
# compiles it), 'evaluate' the loop's evaluation, 'save' a checkpoint save -- and again at
# the save after it (a second signal while saving); 'fail:<point>:<n>:<errno>' makes the
# n-th call raise that OSError instead: 'save' as orbax reports a failed write (its own
# words), 'results' the write of results.json. With several processes (jax.distributed)
# 'signal' and 'hold' (no signal) then wait until every process has told JAX's preemption
# service its last step boundary (the sync protocol's counters in the coordination service;
# it starts at the first SIGTERM of any process): a process held there is at the boundary
# before the call, so the step agreed on is the n-th whatever the timing.
HOOK = r"""
import errno, os, runpy, signal, sys, time
import jax
import orbax.checkpoint as ocp
from cwgnc_jax import files
from cwgnc_jax.training import checkpoint, loop
from cwgnc_jax.training import program as program_lib

action, point, n, *code = os.environ["CWGNC_TEST_AT"].split(":")
n, calls = int(n), {"count": 0}

def hit():
  calls["count"] += 1
  if calls["count"] != n:
    return False
  if action == "signal":
    os.kill(os.getpid(), signal.SIGTERM)
  if action in ("signal", "hold") and jax.process_count() > 1:
    from jax._src import distributed  # the counters' keys are XLA's preemption_sync_manager's
    while (len(distributed.global_state.client.key_value_dir_get("PREEMPTION_CURRENT_COUNTER/"))
           < jax.process_count()):
      time.sleep(0.01)
  return action == "fail"

def os_error(path):
  number = getattr(errno, code[0])
  return OSError(number, os.strerror(number), str(path))

if point == "step":
  jitted = program_lib.Stages.train_step
  def train_step(self, stage):
    step = jitted(self, stage)
    def wrapped(*args):
      hit()
      return step(*args)
    return wrapped
  program_lib.Stages.train_step = train_step
elif point == "evaluate":
  evaluate = loop.evaluate
  def wrapped(*args):
    hit()
    return evaluate(*args)
  loop.evaluate = wrapped
save = checkpoint.Checkpointer.save
def saving(self, step, *args, **kwargs):
  if action == "signal":
    if point == "save":
      hit()
    if calls["count"] >= n and step not in self.steps():
      os.kill(os.getpid(), signal.SIGTERM)  # a second signal, while the stop saves
  return save(self, step, *args, **kwargs)
checkpoint.Checkpointer.save = saving
orbax_save = ocp.CheckpointManager.save
def orbax_saving(self, step, *args, **kwargs):
  if action == "fail" and point == "save" and hit():  # orbax's words for a failed write
    raise ValueError(f"RESOURCE_EXHAUSTED: Error writing in OCDBT database at local file "
                     f"{self.directory}/{step}: {os.strerror(getattr(errno, code[0]))}")
  return orbax_save(self, step, *args, **kwargs)
ocp.CheckpointManager.save = orbax_saving
write_json = files.write_json
def writing_json(path, values):
  if point == "results" and path.name == files.RESULTS_FILE and hit():
    raise os_error(path)
  return write_json(path, values)
files.write_json = writing_json

if sys.argv[1] == "-m":
  sys.argv = sys.argv[2:]
  runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
  sys.argv = sys.argv[1:]
  runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
  return {**os.environ, "PYTHONPATH": str(REPO),
          "CWGNC_CACHE": str(tmp_path_factory.mktemp("cache") / "tokens")}


@pytest.fixture(scope="module")
def config_args(tiny_bert_dir, tiny_rte_dir) -> list[str]:
  return ["--config", "demo", f"--config.model={tiny_bert_dir}",
          f"--config.glue_dir={tiny_rte_dir}", "--config.batch_size=8",
          "--config.eval_batch_size=8", "--config.num_epochs=3", "--config.checkpoint_every=3",
          "--config.keep_checkpoints=2", "--config.keep_best=true", "--config.progress=false",
          "--config.optimizer.learning_rate=1e-3"]


def run(command: list[str], env: dict[str, str], at: str | None = None, **kwargs
        ) -> subprocess.CompletedProcess:
  """``command`` (train.py's or the study's arguments, first 'train.py' or '-m'), through
  ``HOOK`` when ``at`` names a point."""
  prefix = [sys.executable, "-c", HOOK] if at else [sys.executable]
  return subprocess.run([*prefix, *command], cwd=REPO, capture_output=True, text=True,
                        timeout=600, env={**env, "CWGNC_TEST_AT": at or ""}, check=False,
                        **kwargs)


def train(args, workdir, env, at=None, **kwargs) -> subprocess.CompletedProcess:
  return run(["train.py", *args, "--workdir", str(workdir)], env, at, **kwargs)


def one_line(done: subprocess.CompletedProcess, status: int) -> str:
  """The last line of stderr, after checking the status and that no traceback was printed."""
  assert done.returncode == status, done.stderr
  assert "Traceback" not in done.stderr and "Error" not in done.stderr.replace(
      "error: ", ""), done.stderr
  return done.stderr.splitlines()[-1]


def complete_checkpoints(workdir: Path) -> list[int]:
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit() and (p / "commit_success.txt").exists())


def restore_here(folder: Path) -> dict:
  checkpointer = ocp.StandardCheckpointer()
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here),
                        checkpointer.metadata(folder).item_metadata)
  return jax.tree.map(np.asarray, checkpointer.restore(folder, target))


def assert_same_run(workdir: Path, reference: Path, steps: int = STEPS) -> None:
  """Same results (timings aside), metrics.jsonl, and final checkpoint (of step ``steps``):
  the whole train state (parameters, Adam moments, step, RNG, skip count) and the best
  parameters."""
  results, expected = (json.loads((folder / files.RESULTS_FILE).read_text())
                       for folder in (workdir, reference))
  del results["timings"], expected["timings"]
  assert results == expected
  assert ((workdir / files.METRICS_FILE).read_text()
          == (reference / files.METRICS_FILE).read_text())
  assert complete_checkpoints(workdir)[-1] == complete_checkpoints(reference)[-1] == steps
  for item in ("state", "best"):
    got, want = (restore_here(folder / "checkpoints" / str(steps) / item)
                 for folder in (workdir, reference))
    jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config_args, env) -> Path:
  """An uninterrupted run."""
  workdir = tmp_path_factory.mktemp("runs") / "reference"
  done = train(config_args, workdir, env)
  assert done.returncode == 0, done.stderr
  return workdir


def reference_lines(reference: Path, last_step: int) -> str:
  """The reference's metrics.jsonl up to ``last_step``: what an interrupted run's must be."""
  return "".join(line + "\n" for line in
                 (reference / files.METRICS_FILE).read_text().splitlines()
                 if json.loads(line)["step"] <= last_step)


def assert_stopped(done: subprocess.CompletedProcess, workdir: Path, reference: Path,
                   stop: int) -> None:
  """SIGTERM stopped the run after step ``stop``, saved and flushed: status 143, one line
  naming the signal, the step and the checkpoint, that checkpoint complete and the latest,
  metrics.jsonl the reference's up to it, no results."""
  assert one_line(done, 128 + signal.SIGTERM) == (
      f"train.py: stopped by SIGTERM at step {stop}: checkpoint {workdir / 'checkpoints'}/"
      f"{stop}; rerun the same command to resume")
  assert complete_checkpoints(workdir)[-1] == stop
  assert (workdir / files.METRICS_FILE).read_text() == reference_lines(reference, stop)
  assert not (workdir / files.RESULTS_FILE).exists()


def resumed_from(done: subprocess.CompletedProcess, workdir: Path) -> int:
  """The step the run says it resumed from."""
  prefix = f"resumed from {workdir / 'checkpoints'}/"
  line, = (line for line in done.stderr.splitlines() if line.startswith(prefix))
  return int(line[len(prefix):])


def assert_rerun_ends_as(reference: Path, config_args: list[str], workdir: Path,
                         env: dict[str, str], start: int) -> None:
  """The same command again resumes from step ``start`` and ends as ``reference``."""
  done = train(config_args, workdir, env)
  assert done.returncode == 0, done.stderr
  assert resumed_from(done, workdir) == start
  assert_same_run(workdir, reference)


@pytest.mark.real
@pytest.mark.slow
def test_sigterm_during_a_step_saves_that_step_and_the_rerun_is_exact(reference, config_args,
                                                                     env, tmp_path):
  """SIGTERM while step 5 runs (neither an evaluation nor a checkpoint step; the last
  checkpoint is step 4's): the step ends and is saved, though a second SIGTERM comes during
  that save; nothing is lost. The rerun resumes at step 5 and ends as the uninterrupted run,
  bit for bit."""
  workdir = tmp_path / "run"
  done = train(config_args, workdir, env, at="signal:step:5")
  assert_stopped(done, workdir, reference, 5)
  assert_rerun_ends_as(reference, config_args, workdir, env, 5)


@pytest.mark.slow
@pytest.mark.real
def test_sigterm_during_compilation_a_save_or_an_evaluation_loses_nothing(
    reference, config_args, env, tmp_path):
  """One run stopped three times, each rerun resuming where the last stopped: SIGTERM while
  the first step compiles (stops after step 1), during the save of step 3 (every 3 steps;
  stops at 3, saved once), during the evaluation after step 8 (stops at 8, its checkpoint
  the one after the evaluation); a second SIGTERM comes during each stop's save. The last
  rerun ends as the uninterrupted run."""
  workdir = tmp_path / "run"
  for at, start, stop in (("step:1", None, 1), ("save:1", 1, 3), ("evaluate:2", 3, 8)):
    done = train(config_args, workdir, env, at=f"signal:{at}")
    assert_stopped(done, workdir, reference, stop)
    if start is not None:
      assert resumed_from(done, workdir) == start
  assert_rerun_ends_as(reference, config_args, workdir, env, 8)


@pytest.mark.slow
@pytest.mark.real
def test_sigterm_stops_a_two_seed_program_at_one_step(config_args, env, tmp_path):
  """SIGTERM during step 5 of a study training two seeds as one program: both seeds are
  saved at step 5, one line names both checkpoints, status 143; the rerun ends each seed as
  an uninterrupted two-seed study does."""
  study = lambda out, at=None: run(["-m", "cwgnc_jax.study", *config_args, "--seeds", "1,2",
                                    "--seeds-per-program", "2", "--out", str(out)], env, at)
  done = study(tmp_path / "reference")
  assert done.returncode == 0, done.stderr
  done = study(tmp_path / "stopped", at="signal:step:5")
  group, = (tmp_path / "stopped").iterdir()
  seeds = [files.seed_dir(group, seed) for seed in (1, 2)]
  assert one_line(done, 128 + signal.SIGTERM) == (
      f"cwgnc_jax.study: stopped by SIGTERM at step 5: checkpoints "
      f"{seeds[0] / 'checkpoints' / '5'}, {seeds[1] / 'checkpoints' / '5'}; rerun the same "
      "command to resume")
  expected = [files.seed_dir(tmp_path / "reference" / group.name, seed) for seed in (1, 2)]
  for seed_dir, reference in zip(seeds, expected):
    assert complete_checkpoints(seed_dir)[-1] == 5
    assert (seed_dir / files.METRICS_FILE).read_text() == reference_lines(reference, 5)
  done = study(tmp_path / "stopped")
  assert done.returncode == 0, done.stderr
  for seed_dir, reference in zip(seeds, expected):
    assert resumed_from(done, seed_dir) == 5
    assert_same_run(seed_dir, reference)


def two_processes(args: list[str], workdir: Path, env: dict[str, str],
                  at: list[str | None] = (None, None)) -> list[subprocess.CompletedProcess]:
  """train.py as two processes joined through $JAX_COORDINATOR_ADDRESS, 2 CPU devices each,
  on a (data 2, fsdp 2) mesh across them (as test_train.py's two-process test), process i
  through ``HOOK`` when ``at[i]`` names a point; each one's status and stderr once both have
  ended."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  flags = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
  processes = [subprocess.Popen(
      [*([sys.executable, "-c", HOOK] if point else [sys.executable]), "train.py", *args,
       "--config.mesh.fsdp=2", "--config.fsdp_min_size=1024", "--workdir", str(workdir)],
      cwd=REPO, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      env={**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, "CWGNC_TEST_AT": point or "",
           "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(index)}) for index, point in enumerate(at)]
  try:
    errors = [process.communicate(timeout=600)[1] for process in processes]
  finally:
    for process in processes:  # one left waiting for the other: never past the test (SIGKILL:
      # JAX takes SIGTERM)
      if process.poll() is None:
        process.kill()
        process.wait()
  return [subprocess.CompletedProcess(p.args, p.returncode, "", e)
          for p, e in zip(processes, errors)]


@pytest.mark.slow
@pytest.mark.real
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(config_args, env, tmp_path):
  """SIGTERM to the second of two processes (4 steps, one evaluation at the end, no
  checkpoint before it), before its step 2: JAX's preemption service tells the first, which
  no signal reached, and both stop after step 2, save their shards of it, print one line
  each and exit 143; the rerun of both ends as an uninterrupted two-process run, bit for
  bit. The first process is held before its step 2 as well until both have told the service
  their step (``HOOK``), so the step agreed on does not depend on timing."""
  args, steps = [*config_args, "--config.num_epochs=1", "--config.checkpoint_every=100"], 4
  reference = tmp_path / "reference"
  done = two_processes(args, reference, env)
  assert [d.returncode for d in done] == [0, 0], [d.stderr for d in done]
  workdir = tmp_path / "run"
  stopped = two_processes(args, workdir, env, at=["hold:step:2", "signal:step:2"])
  assert [one_line(done, 128 + signal.SIGTERM) for done in stopped] == [
      f"train.py: stopped by SIGTERM at step 2: checkpoint {workdir / 'checkpoints'}/2; "
      "rerun the same command to resume"] * 2
  assert complete_checkpoints(workdir) == [2]
  assert (workdir / files.METRICS_FILE).read_text() == reference_lines(reference, 2)
  assert not (workdir / files.RESULTS_FILE).exists()
  rerun = two_processes(args, workdir, env)
  assert [done.returncode for done in rerun] == [0, 0], [done.stderr for done in rerun]
  assert all("Traceback" not in done.stderr for done in [*stopped, *rerun])
  assert resumed_from(rerun[0], workdir) == 2
  assert_same_run(workdir, reference, steps)


def checkpoint_bytes(workdir: Path, step: int) -> int:
  """The bytes of a checkpoint's arrays: the train state (parameters, Adam moments, ...) and
  the best parameters."""
  return sum(leaf.nbytes for item in ("state", "best") for leaf in
             jax.tree.leaves(restore_here(workdir / "checkpoints" / str(step) / item)))


def _limit_file_size(limit: int):
  def limit_it():  # in the child: writes past ``limit`` bytes fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return limit_it


@pytest.mark.slow
@pytest.mark.real
def test_a_disk_that_cannot_take_a_write_is_one_line_and_a_rerun_resumes(
    reference, config_args, env, tmp_path):
  """A full disk at the save of step 4 (orbax's words for it), then a real file-size limit
  (``ulimit -f``: EFBIG) at that save again, then a read-only disk at results.json: each is
  one line naming the path and the cause (with a checkpoint's size), status 2, and leaves
  only complete checkpoints; each rerun resumes from the last complete one, and the last
  ends as the uninterrupted run."""
  workdir = tmp_path / "run"
  fix = ("free space, keep fewer checkpoints (--config.keep_checkpoints) or pass another "
         "--workdir; a rerun resumes from the last complete one")
  size = files.size_text(checkpoint_bytes(reference, STEPS))
  assert size.endswith(" MB") and float(size[:-3]) > 10  # the real vocabulary's embeddings
  done = train(config_args, workdir, env, at="fail:save:2:ENOSPC")
  assert one_line(done, 2) == (
      f"train.py: error: cannot write {workdir / 'checkpoints' / '4'} (No space left on "
      f"device; it needs about {size}); {fix}")
  assert complete_checkpoints(workdir) == [3]
  done = train(config_args, workdir, env, preexec_fn=_limit_file_size(2**20))
  assert one_line(done, 2) == (
      f"train.py: error: cannot write {workdir / 'checkpoints' / '4'} (File too large; it "
      f"needs about {size}); {fix}")
  assert resumed_from(done, workdir) == 3 and complete_checkpoints(workdir) == [3]
  assert any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())  # cut short
  done = train(config_args, workdir, env, at="fail:results:1:EROFS")
  assert one_line(done, 2) == (
      f"train.py: error: cannot write {workdir / files.RESULTS_FILE} (Read-only file system)"
      f"; {files.RERUN}")
  assert resumed_from(done, workdir) == 3 and complete_checkpoints(workdir)[-1] == STEPS
  assert not (workdir / files.RESULTS_FILE).exists()
  assert_rerun_ends_as(reference, config_args, workdir, env, STEPS)


@pytest.mark.real
def test_a_corrupt_checkpoint_is_the_last_line_printed(tiny_rte_run, tiny_rte_command, tmp_path):
  """The one line naming a checkpoint whose data files are cut short is all stderr holds:
  train.py, predict and export end at once after it (CI saw the reads of the other corrupt
  arrays print 3,586 lines as their coroutines were finalized at shutdown; this host's timing
  never did). On a copy of conftest's finished tiny run (checkpoints at steps 1 and 2), so no
  run of its own."""
  args, env = tiny_rte_command
  workdir = tmp_path / "corrupt"
  shutil.copytree(tiny_rte_run, workdir)
  last = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  data = list((workdir / "checkpoints" / str(last)).glob("*/ocdbt.process_0/d/*"))
  assert {path.parts[-4] for path in data} == {"state", "best"}  # the run kept its best
  for path in data:
    path.write_bytes(path.read_bytes()[:10])  # the data files, as the run had them
  item = workdir / "checkpoints" / str(last) / "best"  # what predict and export read
  for command in (["-m", "cwgnc_jax.predict", str(workdir), "--split", "dev", "--out",
                   str(tmp_path / "predictions.tsv")],
                  ["-m", "cwgnc_jax.export", str(workdir), str(tmp_path / "exported")]):
    done = run(command, env)
    assert done.returncode == 2
    assert done.stderr.startswith(f"{command[1]}: error: cannot read the parameters of "
                                  f"checkpoint item {item} (")
    assert done.stderr.count("\n") == 1, done.stderr
  assert not (tmp_path / "exported").exists() and not (tmp_path / "predictions.tsv").exists()
  (workdir / files.RESULTS_FILE).unlink()
  done = train(args, workdir, env)
  assert done.returncode == 2
  assert done.stderr.startswith(f"train.py: error: checkpoint {workdir / 'checkpoints'}/"
                                f"{last} cannot be restored (")
  assert done.stderr.count("\n") == 1, done.stderr


# -- In-process. ---------------------------------------------------------------------------

def test_sigint_and_sigterm_stop_at_once_outside_the_loop_and_at_a_boundary_inside_it():
  """Outside ``deferred`` (loading data, between programs) a signal raises Stopped at once;
  inside it, it is only noted for ``should_stop``, a second one changes nothing; status
  128 + the signal; the handlers before ``handled`` come back after it."""
  from cwgnc_jax.training import preemption  # pylint: disable=import-outside-toplevel
  before = signal.getsignal(signal.SIGINT)
  with preemption.handled():
    with pytest.raises(preemption.Stopped) as stopped:
      os.kill(os.getpid(), signal.SIGINT)
    assert stopped.value.exit_status == 130
    assert str(stopped.value) == ("stopped by SIGINT with no step under way: nothing to save; "
                                  "rerun the same command to resume")
  assert signal.getsignal(signal.SIGINT) is before
  with preemption.handled(), preemption.deferred():
    assert not preemption.should_stop(3)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.should_stop(3) and preemption.received() == signal.SIGTERM


@pytest.mark.parametrize("error, cause", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
    (ValueError("RESOURCE_EXHAUSTED: Error writing \"w/0.0\" in OCDBT database: Failed to "
                "write 2672998 bytes to file 14: Read-only file system [os_error_code='30']"),
     "Read-only file system"),  # orbax's and tensorstore's words
    (RuntimeError("a write failed"), None),
])
def test_write_errors_name_the_path_the_cause_and_the_size(tmp_path, error, cause):
  try:
    try:
      raise error
    except Exception as e:
      raise RuntimeError("wrapped") from e  # the cause is found down the chain
  except RuntimeError as wrapped:
    assert files.disk_error(wrapped) == cause
  with pytest.raises(files.WriteError if cause else type(error)) as raised:
    with files.writing(tmp_path / "f", needed=3 * 10**9, fix="do this"):
      raise error
  if cause:
    assert str(raised.value) == (f"cannot write {tmp_path / 'f'} ({cause}; it needs about "
                                 "3.0 GB); do this")


def test_a_failed_checkpoint_save_names_its_size_and_leaves_no_checkpoint(tmp_path,
                                                                          monkeypatch):
  from cwgnc_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  checkpoints = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=2)
  try:
    # 1 MB of parameters, 0.5 MB of moments, and the best parameters: 2.5 MB.
    state = {"params": np.zeros((1000, 250), np.float32), "mu": np.zeros(125000, np.float32)}
    def full(*args, **kwargs):
      raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    monkeypatch.setattr(checkpoints._manager, "save", full)  # pylint: disable=protected-access
    with pytest.raises(files.WriteError, match=(
        rf"^cannot write {tmp_path / 'checkpoints' / '7'} \(Disk quota exceeded; it needs "
        r"about 2.5 MB\); free space, keep fewer checkpoints")):
      checkpoints.save(7, state, {"step": 7}, best={"params": state["params"]})
    assert checkpoints.steps() == []
  finally:
    checkpoints.close()
    checkpoints.close()  # a second close does nothing


def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch,
                                                                   tiny_bert_dir):
  from cwgnc_jax import export  # pylint: disable=import-outside-toplevel
  from cwgnc_jax.models import bert  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  model = bert.BertForSequenceClassification(bert.tiny_config(), 2, rngs=nnx.Rngs(0))
  *_, params = bert.split_params(model)
  def full(*args, **kwargs):  # safetensors' words
    raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                       "message: \"No space left on device\" })")
  monkeypatch.setattr(export, "save_file", full)
  with pytest.raises(export.OutputError, match=(
      rf"^output folder {tmp_path / 'out'} cannot be written \(No space left on device; it "
      r"needs about [\d.]+ MB\): free space or pass another folder$")):
    export.write_hf_folder(tmp_path / "out", params, base_model=str(tiny_bert_dir),
                           label_names=["a", "b"])
  assert list(tmp_path.iterdir()) == []


def test_closed_loop_callbacks_after_a_failed_save_print_nothing(capsys):
  """tensorstore prints (through sys.excepthook) asyncio's 'Event loop is closed' for each
  write still pending when orbax gives a failed save up: the real EFBIG run above printed
  them before its one line, as the threads' timing fell. checkpoint.py drops exactly those;
  any other error, the same words raised elsewhere included, still prints."""
  import asyncio  # pylint: disable=import-outside-toplevel

  from cwgnc_jax.training import checkpoint  # pylint: disable=import-outside-toplevel,unused-import
  loop = asyncio.new_event_loop()
  loop.close()
  with pytest.raises(RuntimeError) as closed:
    loop.call_soon_threadsafe(print)
  sys.excepthook(closed.type, closed.value, closed.tb)
  assert capsys.readouterr().err == ""
  with pytest.raises(RuntimeError) as ours:
    raise RuntimeError("Event loop is closed")
  sys.excepthook(ours.type, ours.value, ours.tb)
  assert capsys.readouterr().err.endswith("RuntimeError: Event loop is closed\n")


def test_unraisable_closed_loop_callbacks_print_nothing():
  """tensorstore also reports them through sys.unraisablehook (PyErr_WriteUnraisable, a bare
  traceback: the slow EFBIG run printed them so after the excepthook filter above); pytest
  swaps that hook during a test, so this runs in a process of its own. A closed loop's
  callback raised where Python can only report it prints nothing; the same words raised
  elsewhere still print."""
  code = textwrap.dedent("""
      import asyncio, sys
      from cwgnc_jax.training import checkpoint
      loop = asyncio.new_event_loop()
      loop.close()
      class Pending:
        def __del__(self):
          loop.call_soon_threadsafe(print)
      class Other:
        def __del__(self):
          raise RuntimeError("Event loop is closed")
      Pending()
      print("between", file=sys.stderr, flush=True)
      Other()
      """)
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  before, after = done.stderr.split("between\n")
  assert before == ""
  assert "Other.__del__" in after and after.endswith("RuntimeError: Event loop is closed\n")


@pytest.mark.parametrize("raised_in, logged", [
    ("/site-packages/orbax/checkpoint/_src/serialization/serialization.py", False),
    ("/site-packages/somewhere/else.py", True)])
def test_unretrieved_reads_of_a_failed_restore_log_nothing(raised_in, logged, caplog):
  """A restore of a corrupt checkpoint fails on its first bad array; the reads of the others
  fail in asyncio tasks nobody awaits, which asyncio logs ("Task exception was never
  retrieved") when they are garbage-collected: CI saw 390 lines of them after the one line of
  the corrupt-checkpoint test above. checkpoint.py drops those of tasks raised in orbax; a
  task raised anywhere else is still logged."""
  import asyncio  # pylint: disable=import-outside-toplevel
  import gc  # pylint: disable=import-outside-toplevel

  from cwgnc_jax.training import checkpoint  # pylint: disable=import-outside-toplevel,unused-import
  namespace = {}
  exec(compile("async def read():\n  raise Exception('Encountered error while reading')\n",
               raised_in, "exec"), namespace)  # pylint: disable=exec-used

  async def start_and_forget():
    task = asyncio.ensure_future(namespace["read"]())
    await asyncio.sleep(0)  # the task runs and fails; nobody retrieves its exception
    del task

  with caplog.at_level(logging.ERROR, logger="asyncio"):
    asyncio.run(start_and_forget())
    gc.collect()
  unretrieved = [r for r in caplog.records
                 if r.getMessage().startswith("Task exception was never retrieved")]
  assert len(unretrieved) == int(logged)
