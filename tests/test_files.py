"""The run-directory files: atomic writes with ordinary permissions, named JSON errors, the
run lock (held, refused, released when its holder dies)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cwgnc_jax import files


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_atomic_writes_follow_the_umask_and_leave_no_temporary_file(tmp_path):
  files.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
  assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1, 2], "b": 1}
  assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~_umask()
  with pytest.raises(RuntimeError, match="boom"):  # a failed write keeps the old file
    files.write_atomic(tmp_path / "a.json", lambda f: (f.write("{"), (_ for _ in ()).throw(
        RuntimeError("boom"))))
  assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1, 2], "b": 1}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_read_json_names_a_corrupt_file_and_its_line(tmp_path):
  path = tmp_path / "results.json"
  path.write_text('{\n "score": 1')
  with pytest.raises(ValueError) as error:
    files.read_json(path)
  assert str(error.value) == (f"{path}:2: not valid JSON (Expecting ',' delimiter); "
                              "restore it or remove its folder")
  path.write_bytes(b'{"task":\n\n "r\xe9te"}')
  with pytest.raises(ValueError) as error:
    files.read_json(path, "rerun it")
  assert str(error.value) == f"{path}:3: not UTF-8 text (byte 0xe9); rerun it"
  (tmp_path / "folder.json").mkdir()
  with pytest.raises(OSError) as error:
    files.read_json(tmp_path / "folder.json")
  assert str(error.value) == f"cannot read {tmp_path / 'folder.json'} (Is a directory)"


@pytest.mark.parametrize("values, problem", [
    ([1], " is an array, expected an object"),
    ({"metric": "accuracy", "score": 70.0, "majority_score": 52.7, "failed": False},
     " lacks ['skipped_steps']"),
    ({"metric": "accuracy", "score": "70", "majority_score": 52.7, "failed": False,
      "skipped_steps": 0}, ": score is '70', expected a number"),
    ({"metric": "accuracy", "score": True, "majority_score": 52.7, "failed": False,
      "skipped_steps": 0}, ": score is True, expected a number")])
def test_read_results_names_the_key_that_is_wrong(tmp_path, values, problem):
  path = tmp_path / "results.json"
  path.write_text(json.dumps(values))
  with pytest.raises(ValueError) as error:
    files.read_results(path, "rerun it")
  assert str(error.value) == f"{path}{problem}; rerun it"


def test_seed_dirs_round_trip(tmp_path):
  assert files.seed_dir(tmp_path, 7) == tmp_path / "seed_7"
  assert files.seed_of(tmp_path / "seed_7") == 7
  assert files.seed_of(tmp_path / "seed_x") is None and files.seed_of(tmp_path / "run") is None


def test_lock_is_exclusive_and_names_its_holder(tmp_path):
  with files.locked(tmp_path):
    assert files.is_locked(tmp_path)  # another open file: refused, as another process is
    with pytest.raises(files.LockedError) as error:
      with files.locked(tmp_path):
        pass
    assert str(error.value) == (f"run directory {tmp_path} is in use by another process (pid "
                                f"{os.getpid()}); wait for it to finish, or pass another "
                                "--workdir")
  assert not files.is_locked(tmp_path)
  with files.locked(tmp_path):  # free again
    pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; from cwgnc_jax import files\n"
      f"with files.locked({str(tmp_path)!r}):\n"
      "  print('held', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    assert files.is_locked(tmp_path)
    assert (tmp_path / files.LOCK_FILE).read_text().strip() == str(holder.pid)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  deadline = time.monotonic() + 10
  while files.is_locked(tmp_path):
    assert time.monotonic() < deadline
    time.sleep(0.01)
  with files.locked(tmp_path):
    pass


def test_a_run_dir_being_started_holds_no_files_yet(tmp_path):
  """Between taking the lock and renaming config.json into place, a starting process has
  written only its lock and write_atomic's temporary: another process checking the folder
  then must not call it a foreign, non-empty folder (a race two studies hit under load)."""
  assert not files.holds_files(tmp_path)
  (tmp_path / files.LOCK_FILE).write_text("123\n")
  (tmp_path / ".config.json.k2j3h4.tmp").write_text("{")
  assert not files.holds_files(tmp_path)
  (tmp_path / "metrics.jsonl").write_text("")
  assert files.holds_files(tmp_path)
