"""The command line of every entry point, in one grammar, with one-line errors.

``train.py``, ``python -m cwgnc_jax.study`` (with its ``--table1`` and ``--workers`` plans),
``cwgnc_jax.predict`` and ``cwgnc_jax.export`` read their arguments with :func:`parse`::

  --flag=VALUE  or  --flag VALUE   a flag of the command (given twice: the last counts)
  --switch                         a flag without a value
  --config.KEY=VALUE               a config override, kept in order (train.py, study)
  WORD                             a positional argument (predict, export)
  -h, --help                       anywhere: the command's docstring (``asks_for_help``)

A value never starts with ``--``: ``--out --seeds 3`` is ``--out`` without a value. Every
mistake is a ``config.ConfigError`` of one line that names it; the entry point prints it with
:func:`fail` as ``<prog>: error: <line>`` and exits 2, as it does for all bad input.

Why not ``ml_collections.config_flags``: ``config.py``'s docstring.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

import ml_collections

from cwgnc_jax import config as config_lib

ConfigError = config_lib.ConfigError
USAGE_ERROR = 2  # the exit status of bad input, as argparse's
_OVERRIDE = "--config."
TRAIN_USAGE = "usage: train.py --config NAME_OR_PATH [--config.KEY=VALUE ...] [--workdir DIR]"


@dataclasses.dataclass(frozen=True)
class Args:
  """A parsed command line.

  Attributes:
    values: each flag given with a value (``'--seeds'``) -> its text, the last one given.
    switches: the switches given (``'--table1'``).
    overrides: ``(dotted key, value text)`` of each ``--config.KEY=VALUE``, in order, folders
      of ``glue_dir`` and ``model`` made absolute (:func:`absolute_folder`).
    positionals: the positional arguments, in order.
  """
  values: dict[str, str]
  switches: frozenset[str]
  overrides: tuple[tuple[str, str], ...]
  positionals: tuple[str, ...]


def parse(argv: Sequence[str], *, usage: str, flags: Sequence[str] = (),
          switches: Sequence[str] = (), overrides: bool = False,
          positionals: Sequence[str] = ()) -> Args:
  """``argv`` in the grammar of the module docstring, for a command with these ``flags``
  (each takes a value), ``switches``, ``--config.KEY=VALUE`` overrides if ``overrides``, and
  exactly the ``positionals`` named (e.g. ``('RUN_DIR', 'OUT_DIR')``). ``usage`` is the
  command's usage line, quoted by the errors that need it."""
  values, given, pairs, words = {}, set(), [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    flag, has_value, value = arg.partition("=")
    if not arg.startswith("--"):
      if len(words) == len(positionals):
        raise ConfigError(f"unexpected argument {arg!r}; {usage}")
      words.append(arg)
    elif flag in switches:
      if has_value:
        raise ConfigError(f"{flag} takes no value")
      given.add(flag)
    elif flag in flags or (overrides and flag.startswith(_OVERRIDE) and flag != _OVERRIDE):
      if not has_value:
        if i + 1 >= len(args) or args[i + 1].startswith("--"):
          raise ConfigError(f"{flag} needs a value")
        i += 1
        value = args[i]
      if flag in flags:
        values[flag] = value
      else:
        key = flag[len(_OVERRIDE):]
        pairs.append((key, absolute_folder(key, value)))
    else:
      raise ConfigError(f"unknown flag {flag}; {usage}")
    i += 1
  if len(words) != len(positionals):
    raise ConfigError(f"expected {' '.join(positionals)}, got {' '.join(argv) or 'nothing'}")
  return Args(values, frozenset(given), tuple(pairs), tuple(words))


def asks_for_help(argv: Sequence[str]) -> bool:
  """Is ``-h`` or ``--help`` among the arguments?"""
  return any(arg in ("-h", "--help") for arg in argv)


def fail(prog: str, message: str, *, at_once: bool = False) -> NoReturn:
  """Prints ``<prog>: error: <message>`` on one line of stderr and exits with status 2.

  ``at_once`` ends the process without its shutdown, for errors that leave orbax's work
  behind: after a write the disk refused, its other writer threads of that checkpoint are
  still running, and would fail with tracebacks when the interpreter shuts down under them;
  after a restore that failed on a corrupt array, the reads of the checkpoint's other arrays
  fail in coroutines nobody awaits, each printed with its whole TensorStore spec as it is
  finalized at shutdown (3,586 lines in CI for a tiny model). Neither path leaves anything
  of the run unwritten: a checkpoint is complete when ``save`` returns.
  """
  print(f"{prog}: error: {' '.join(message.splitlines())}", file=sys.stderr, flush=True)
  if at_once:
    sys.stdout.flush()
    os._exit(USAGE_ERROR)  # pylint: disable=protected-access
  sys.exit(USAGE_ERROR)


def fail_on(prog: str, error: Exception) -> NoReturn:
  """``fail`` with ``error``'s message, ``at_once`` where its class says it leaves orbax's
  work behind (``leaves_orbax_work``: ``files.WriteError``, ``checkpoint.CheckpointError``)."""
  fail(prog, str(error), at_once=getattr(error, "leaves_orbax_work", False))


# -- The config: --config NAME_OR_PATH and its overrides. -----------------------------------

# ``glue_dir`` and ``model`` name folders that the run records (config.json) and that later
# commands read back (resume, predict, export, a study's other seeds): such a folder is made
# absolute as the command line is parsed, ``~`` expanded as the loaders expand it, so it names
# the same folder from any working directory. A value naming no folder stays as given: 'hub',
# 'none', a short model name, a hub id. (``cache_dir`` is made absolute where it is read:
# ``glue.cache_folder``, which also reads ``$CWGNC_CACHE``.)

def absolute_folder(key: str, text: str) -> str:
  """The command-line value ``text`` of config key ``key``; a folder of ``glue_dir`` or
  ``model`` made absolute."""
  folder = Path(text).expanduser()
  if key == "glue_dir" and text not in ("", "hub") and text.lower() not in ("none", "null"):
    return str(folder.absolute())
  if key == "model" and text not in config_lib.MODELS and folder.is_dir():  # as resolve_model
    return str(folder.absolute())
  return text


def config_arg(args: Args) -> str:
  """The ``--config`` of a command line (the name or path of a config file)."""
  if "--config" not in args.values:
    raise ConfigError(f"--config is required; valid names: {', '.join(config_lib.available())}")
  return args.values["--config"]


def train_args(argv: Sequence[str]) -> tuple[str, list[tuple[str, str]], str | None]:
  """``(config name or path, [(dotted key, value text)], workdir or None)`` of a ``train.py``
  command line. The workdir comes back absolute, and so do the folders of ``glue_dir`` and
  ``model``."""
  args = parse(argv, usage=TRAIN_USAGE, flags=("--config", "--workdir"), overrides=True)
  workdir = args.values.get("--workdir")
  return (config_arg(args), list(args.overrides),
          None if workdir is None else str(Path(workdir).absolute()))


def train_config(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, str]:
  """The validated config and the run directory (absolute) that a ``train.py`` command line
  asks for (default ``runs/<config>_seed<seed>``)."""
  name, overrides, workdir = train_args(argv)
  config = config_lib.apply_overrides(config_lib.load(name), overrides)
  config_lib.validate(config)
  if workdir is None:
    workdir = str(Path("runs", f"{config_lib.config_name(name)}_seed{config.seed}").absolute())
  return config, workdir
