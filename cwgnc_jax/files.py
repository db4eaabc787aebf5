"""The project's files: the run-directory layout, atomic writes, JSON reads, the run lock.

A run directory (``train.py --workdir``, a study's ``<group>/seed_<s>/``) holds::

  config.json      what the run computes (``identity.run_identity``)
  metrics.jsonl    one line per logged step and per evaluation
  tb/              TensorBoard events
  grad_norms.npz   per-tensor gradient norms (``diagnostics.GradientNormLog``)
  checkpoints/     orbax checkpoints (``training/checkpoint.py``)
  results.json     at the end: the dev score and everything the study and report read
  .lock            held (``flock``) while a process trains the run

A study group folder holds ``summary.json`` and ``seed_<s>/`` run directories. Every name is
defined here once; every file the project writes goes through :func:`write_atomic` (a
temporary file renamed into place, so a reader or a killed writer never leaves a half file),
but for ``metrics.jsonl``, which grows a line at a time (and is cut back to the step a
resume starts from); every JSON file it reads back goes through :func:`read_json` (a
corrupt file is named, with its line).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, IO, Iterator

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
GRAD_NORMS_FILE = "grad_norms.npz"
CHECKPOINTS_DIR = "checkpoints"
RESULTS_FILE = "results.json"
LOCK_FILE = ".lock"
SUMMARY_FILE = "summary.json"


def seed_dir(group_dir: str | os.PathLike, seed: int) -> Path:
  """The run directory of ``seed`` in a study group folder."""
  return Path(group_dir) / f"seed_{seed}"


def seed_of(run_dir: str | os.PathLike) -> int | None:
  """The seed a study run directory is named for (``seed_<s>``), else None."""
  name = Path(run_dir).name
  digits = name[len("seed_"):]
  return int(digits) if name.startswith("seed_") and digits.isdigit() else None


def unwritable_reason(folder: str | os.PathLike) -> str | None:
  """Why ``folder`` cannot be written (made if missing) by this process, or None if it can:
  it is a file, or it (or the nearest folder above it that exists) is not writable."""
  folder = Path(folder)
  if folder.exists() and not folder.is_dir():
    return f"{folder} is a file, not a folder"
  existing = folder
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    return f"cannot make {folder}: {existing} is a file, not a folder"
  if not os.access(existing, os.W_OK | os.X_OK):
    what = folder if existing == folder else f"{existing} (to make {folder} in it)"
    return f"cannot write to {what}: permission denied"
  return None


# The errors of a disk that cannot take a write: full, over quota, read-only, a file over the
# process's size limit (``ulimit -f``), failing, or not ours to write.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES,
               errno.EPERM)


class WriteError(OSError):
  """A file or folder could not be written for a reason of its disk; the message names it,
  the cause and the way out, in one line."""
  leaves_orbax_work = True  # a checkpoint's other writer threads: command_line.fail_on


def disk_error(error: BaseException) -> str | None:
  """The cause (``os.strerror``'s words) when ``error``, or one it was raised from, is an
  OSError of ``DISK_ERRNOS`` or carries one's words in its message (orbax and tensorstore
  raise ValueError and others quoting the OS error); else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
      return os.strerror(error.errno)
    text = str(error)
    for code in DISK_ERRNOS:
      if os.strerror(code) in text:
        return os.strerror(code)
    error = error.__cause__ or error.__context__
  return None


def size_text(num_bytes: int) -> str:
  """``num_bytes`` for people: '270 MB', '4.1 GB'."""
  if num_bytes >= 10**9:
    return f"{num_bytes / 10**9:.1f} GB"
  return f"{max(num_bytes / 10**6, 0.1):.3g} MB"


# What a run's writer that failed tells: its checkpoints stay valid.
RERUN = "free space or pass another --workdir; a rerun resumes from the last complete checkpoint"


@contextlib.contextmanager
def writing(path: str | os.PathLike, *, needed: int | None = None,
            fix: str = RERUN) -> Iterator[None]:
  """Turns a disk's error raised in the block (``disk_error``) into a WriteError naming
  ``path``, the cause and ``fix``, with the ``needed`` bytes when known; other errors pass
  unchanged."""
  try:
    yield
  except WriteError:
    raise
  except Exception as error:  # pylint: disable=broad-except  # orbax raises many kinds
    cause = disk_error(error)
    if cause is None:
      raise
    size = f"; it needs about {size_text(needed)}" if needed else ""
    raise WriteError(f"cannot write {path} ({cause}{size}); {fix}") from None


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_atomic(path: str | os.PathLike, write: Callable[[IO], None], *,
                 binary: bool = False, replace: bool = True) -> None:
  """Writes ``path`` through ``write(file)`` into a temporary file beside it, then renames it
  into place: readers see the old file or the new one, never a part. ``replace=False``:
  FileExistsError if ``path`` exists, even if it appeared while writing (never overwrites).

  The file gets the permissions an ordinary ``open`` would give (0666 minus the umask), not
  ``mkstemp``'s 0600.
  """
  path = Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8",
                   newline=None if binary else "") as f:
      write(f)
    if replace:
      os.replace(tmp, path)
    else:
      os.link(tmp, path)  # fails if path exists
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)


def write_json(path: str | os.PathLike, values: Any) -> None:
  """``values`` as indented JSON (keys sorted), written atomically."""
  def write(f):
    json.dump(values, f, indent=2, sort_keys=True)
    f.write("\n")
  write_atomic(path, write)


# What a reader of a damaged file of a run directory is told to do, unless the caller knows
# better (the report says how to rewrite a summary, for instance).
RESTORE = "restore it or remove its folder"
NUMBER = (int, float)
# What the study and the report read of every results.json: its keys and their types.
RESULTS_FIELDS = {"metric": str, "score": NUMBER, "majority_score": NUMBER, "failed": bool,
                  "skipped_steps": int}
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer",
               NUMBER: "a number", bool: "true or false", float: "a number",
               type(None): "null"}


def read_json(path: str | os.PathLike, fix: str = RESTORE) -> Any:
  """The JSON value in ``path``. ValueError naming the file and line, and ``fix``, if it is
  not UTF-8 JSON; OSError naming the file if it cannot be read (a folder, say)."""
  path = Path(path)
  try:
    data = path.read_bytes()
  except OSError as error:
    raise OSError(f"cannot read {path} ({error.strerror})") from None
  try:
    return json.loads(data.decode("utf-8"))
  except UnicodeDecodeError as error:
    line = data[:error.start].count(b"\n") + 1
    raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); {fix}"
                     ) from None
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg}); {fix}") from None


def check_value(value: Any, kind: Any, path: Path, where: str, fix: str = RESTORE) -> None:
  """Raises ValueError naming ``path`` and ``where`` in it (e.g. 'runs[2].score') unless
  ``value`` is of type ``kind`` (true and false are not numbers here)."""
  if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
    shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:57]}..."
    raise ValueError(f"{path}: {where} is {shown}, expected {_JSON_TYPES[kind]}; {fix}")


def check_fields(values: Any, fields: dict[str, Any], path: Path, where: str = "",
                 fix: str = RESTORE) -> None:
  """Raises ValueError naming ``path`` unless ``values`` is an object holding every key of
  ``fields`` with a value of its type (``where``: where in the file, e.g. 'runs[2]', or ''
  for the whole file)."""
  place = f"{path}: {where}" if where else str(path)
  if not isinstance(values, dict):
    raise ValueError(f"{place} is {_JSON_TYPES.get(type(values), 'a value')}, expected an "
                     f"object; {fix}")
  missing = [key for key in fields if key not in values]
  if missing:
    raise ValueError(f"{place} lacks {missing}; {fix}")
  for key, kind in fields.items():
    check_value(values[key], kind, path, f"{where}.{key}" if where else key, fix)


def read_results(path: str | os.PathLike, fix: str = RESTORE) -> dict[str, Any]:
  """A run's results.json, checked to hold ``RESULTS_FIELDS`` (errors as ``read_json``)."""
  results = read_json(path, fix)
  check_fields(results, RESULTS_FIELDS, Path(path), "", fix)
  return results


class LockedError(RuntimeError):
  """Another process holds a run directory's lock; the message names it."""


def _try_lock(fd: int) -> bool:
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError as e:
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise
    return False


# How long ``locked`` keeps trying: ``is_locked`` probes hold the lock for microseconds.
_PATIENCE_SECONDS = 2.0


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike) -> Iterator[None]:
  """Holds ``run_dir``'s lock while the block runs; LockedError if another process holds it.

  The lock is ``flock`` on ``run_dir/.lock``: the operating system drops it when its holder
  exits, however it exits (SIGKILL included), so a stale lock cannot outlive a crash. The
  file keeps the holder's pid for the message of the process that is refused.
  """
  path = Path(run_dir) / LOCK_FILE
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    deadline = time.monotonic() + _PATIENCE_SECONDS
    while not _try_lock(fd):
      if time.monotonic() > deadline:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise LockedError(f"run directory {run_dir} is in use by another process (pid "
                          f"{holder}); wait for it to finish, or pass another --workdir")
      time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def holds_files(run_dir: str | os.PathLike) -> bool:
  """Does ``run_dir`` hold anything but its lock and files being written (``write_atomic``'s
  temporaries)? A process that has just taken the lock has written nothing else yet."""
  return any(p.name != LOCK_FILE and not (p.name.startswith(".") and p.name.endswith(".tmp"))
             for p in Path(run_dir).iterdir())


def is_locked(run_dir: str | os.PathLike) -> bool:
  """Does another process hold ``run_dir``'s lock right now? (A probe: it takes the lock
  for an instant, which ``locked`` waits out, and writes nothing.)"""
  path = Path(run_dir) / LOCK_FILE
  if not path.is_file():
    return False
  fd = os.open(path, os.O_RDWR)
  try:
    return not _try_lock(fd)
  finally:
    os.close(fd)
