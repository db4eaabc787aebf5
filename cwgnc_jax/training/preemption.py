"""Stopping on SIGTERM or SIGINT without losing the training done: at a step boundary.

Schedulers (Cloud TPU and GPU VMs, SLURM, Kubernetes) send SIGTERM some time before they
kill a process; Ctrl-C sends SIGINT. ``handled()`` (train.py and the study, around all they
do) turns both into :class:`Stopped`:

  * inside ``deferred()`` (the training loop: restoring, compiling, stepping, evaluating,
    saving) a signal is only noted; the loop asks :func:`should_stop` at every step boundary
    (after a step, its evaluation and its checkpoint), then saves every seed of its program
    at that step and raises :class:`Stopped`. A signal during compilation, a step or an
    evaluation thus stops after that step: at most the step under way is redone, none lost;
  * elsewhere (loading data and weights, between a study's programs) nothing is being
    trained, so :class:`Stopped` is raised at once.

A second signal changes nothing: the save under way completes. (SIGKILL stops at once; a
save it cuts short is never taken for a checkpoint: orbax renames one into place only when
complete.)

Several processes (``jax.distributed``): JAX's preemption service catches SIGTERM itself
(its handler replaces Python's) and has all processes agree on the step at which to stop, so
``should_stop`` asks it (``multihost_utils.reached_preemption_sync_point``) and every
process saves its shards at that one step. SIGINT is passed on to it as a SIGTERM.

The exit status of a stopped process is 128 + the signal's number (143 for SIGTERM, 130 for
SIGINT), what a shell reports for a process the signal killed: a scheduler sees a run that
did not finish.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
  """The process was asked to stop by ``signum``; the message says where its work is."""

  def __init__(self, signum: int, message: str):
    super().__init__(f"stopped by {signal.Signals(signum).name} {message}")
    self.signum = signum

  @property
  def exit_status(self) -> int:
    return 128 + self.signum


class _State:
  received: int | None = None  # the first signal's number
  deferring = 0  # depth of ``deferred`` blocks
  agreed = False  # several processes: JAX's preemption service decides the step


def _handler(signum: int, frame) -> None:
  del frame
  first = _State.received is None
  if first:
    _State.received = signum
  if _State.agreed and signum != signal.SIGTERM:
    signal.raise_signal(signal.SIGTERM)  # to JAX's handler, which tells the other processes
  if first and not _State.deferring:
    raise Stopped(signum, "with no step under way: nothing to save; rerun the same command "
                          "to resume")


@contextlib.contextmanager
def handled() -> Iterator[None]:
  """SIGTERM and SIGINT stop the process with :class:`Stopped` while the block runs (module
  docstring); the previous handlers are restored after it. Call it after
  ``jax.distributed.initialize``, whose handler it keeps. Only the main thread can take
  signals: elsewhere, and on several processes with ``jax_enable_preemption_service`` off,
  the block runs with the handlers as they are."""
  several = jax.process_count() > 1
  if (threading.current_thread() is not threading.main_thread()
      or (several and not jax.config.jax_enable_preemption_service)):
    # Without JAX's preemption service one process would stop alone, and the others wait
    # for it in the step's collectives: the signals keep their defaults.
    yield
    return
  _State.received, _State.agreed = None, several
  signals = [s for s in SIGNALS if not (_State.agreed and s == signal.SIGTERM)]
  previous = {s: signal.signal(s, _handler) for s in signals}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """Inside the block a signal is only noted, for :func:`should_stop` to answer."""
  _State.deferring += 1
  try:
    yield
  finally:
    _State.deferring -= 1


def should_stop(step: int) -> bool:
  """Whether to stop at the boundary after step ``step``: a signal came (with several
  processes: every process reaches the step JAX's preemption service agreed on). Every
  process must ask it at every step boundary."""
  if _State.agreed:
    return multihost_utils.reached_preemption_sync_point(step)
  return _State.received is not None


def received() -> int:
  """The signal that stopped the run: the one this process took, else SIGTERM (another
  process's, which JAX's preemption service passed on)."""
  return _State.received or signal.SIGTERM
