"""Pretrained weights: name mapping, missing/wrong tensors, sha256, hub errors, classifier init."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
import time
import warnings

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from cwgnc_jax import paths
from cwgnc_jax.models import (MINILM_SHA256, BertConfig, BertForSequenceClassification,
                              from_pretrained, resolve_model_dir, split_params, tiny_config,
                              verify_sha256)
from cwgnc_jax.models.loading import (checkpoint_names, hf_tensors, init_classifier,
                                      label_names, load_config, load_tokenizer)


def encoder_params(model):
  flat = {paths.path_to_str(p): np.asarray(leaf)
          for p, leaf in jax.tree_util.tree_leaves_with_path(split_params(model)[2])}
  return {p: v for p, v in flat.items() if not p.startswith("classifier/")}


@pytest.fixture(scope="module")
def tiny_pretrained():
  """A tiny BERT's config and encoder+pooler parameters by path, every tensor random (a
  fresh model's biases are 0 and its LayerNorm scales 1: two tensors swapped by a loader
  would look the same)."""
  config = tiny_config()
  shapes = encoder_params(BertForSequenceClassification(config, 2, rngs=nnx.Rngs(42)))
  rng = np.random.default_rng(42)
  return config, {path: rng.standard_normal(value.shape).astype(np.float32)
                  for path, value in shapes.items()}


def test_the_names_of_tensors_that_share_a_shape_are_transformers():
  """Pinned by hand, not through the loader's table: the tensors a swap would not reshape."""
  names = checkpoint_names(1)
  layer = "encoder.layer.0."
  assert [names[f"encoder/layers/0/{path}"] for path in (
      "attention/layer_norm/scale", "output/layer_norm/scale", "attention/output/kernel",
      "attention/query/bias", "attention/key/bias", "attention/value/bias",
      "intermediate/kernel", "output/kernel")] == [
          f"{layer}attention.output.LayerNorm.weight", f"{layer}output.LayerNorm.weight",
          f"{layer}attention.output.dense.weight", f"{layer}attention.self.query.bias",
          f"{layer}attention.self.key.bias", f"{layer}attention.self.value.bias",
          f"{layer}intermediate.dense.weight", f"{layer}output.dense.weight"]
  assert (names["embeddings/layer_norm/scale"], names["pooler/kernel"]) == (
      "embeddings.LayerNorm.weight", "pooler.dense.weight")


def write_checkpoint(folder, config, params, *, prefix="", old_layer_norm=False, extra=None,
                     drop=(), replace=None):
  """``params`` saved as a PyTorch-named ``model.safetensors`` plus ``config.json``."""
  tensors = {}
  for path, name in checkpoint_names(config.num_hidden_layers).items():
    if old_layer_norm and ".LayerNorm." in name:
      name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
    value = params[path].T if path.endswith("/kernel") else params[path]
    tensors[prefix + name] = np.ascontiguousarray(value)
  tensors["embeddings.position_ids"] = np.arange(config.max_position_embeddings)[None]
  tensors.update(extra or {})
  tensors.update(replace or {})
  for name in drop:
    del tensors[name]
  folder.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(folder / "model.safetensors"))
  hf_config = {**dataclasses.asdict(config), "model_type": "bert", "hidden_act": "gelu"}
  (folder / "config.json").write_text(json.dumps(hf_config))
  return folder


@pytest.mark.parametrize("prefix,old_layer_norm", [("", False), ("bert.", True)])
def test_loads_every_encoder_tensor(tmp_path, tiny_pretrained, prefix, old_layer_norm):
  config, params = tiny_pretrained
  folder = write_checkpoint(tmp_path / "model", config, params, prefix=prefix,
                            old_layer_norm=old_layer_norm)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the position_ids buffer is ignored without a warning
    model = from_pretrained(folder, num_labels=3)
  loaded = encoder_params(model)
  assert loaded.keys() == params.keys()
  for path, value in params.items():
    np.testing.assert_array_equal(loaded[path], value, err_msg=path)
  assert model.classifier.kernel.shape == (32, 3)


def test_heads_the_classifier_does_not_use_are_listed_in_a_warning(tmp_path, tiny_pretrained):
  config, params = tiny_pretrained
  heads = {"cls.predictions.bias": np.zeros(100, np.float32),
           "cls.seq_relationship.weight": np.zeros((2, 32), np.float32)}
  folder = write_checkpoint(tmp_path / "model", config, params, prefix="bert.", extra=heads)
  with pytest.warns(UserWarning, match=r"cls\.predictions\.bias.*cls\.seq_relationship\.weight"):
    from_pretrained(folder, num_labels=2)


def test_a_missing_tensor_is_named(tmp_path, tiny_pretrained):
  config, params = tiny_pretrained
  folder = write_checkpoint(tmp_path / "model", config, params,
                            drop=["encoder.layer.1.attention.self.key.weight"])
  with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention\.self\.key\.weight"):
    from_pretrained(folder, num_labels=2)


def test_a_checkpoint_of_another_model_is_named_in_one_short_line(tmp_path, tiny_pretrained):
  """A RoBERTa checkpoint lacks every BERT name: the first five are listed, not all."""
  config, params = tiny_pretrained
  folder = write_checkpoint(tmp_path / "model", config, params, prefix="roberta.")
  message = one_line_error(ValueError, from_pretrained, folder, num_labels=2)
  names = list(checkpoint_names(config.num_hidden_layers).values())
  assert message == (f"{folder / 'model.safetensors'} lacks {len(names)} BERT tensor(s): "
                     f"{names[:5]} and {len(names) - 5} more; a BERT checkpoint names them so, "
                     "with or without 'bert.'")


def test_a_wrong_shape_is_named(tmp_path, tiny_pretrained):
  config, params = tiny_pretrained
  wrong = {"encoder.layer.0.intermediate.dense.weight": np.zeros((63, 32), np.float32)}
  folder = write_checkpoint(tmp_path / "model", config, params, replace=wrong)
  culprit = r"encoder\.layer\.0\.intermediate\.dense\.weight.*\(32, 63\)"
  with pytest.raises(ValueError, match=culprit):
    from_pretrained(folder, num_labels=2)


def test_classifier_init_is_berts_and_seeded():
  fresh = init_classifier(0, 1024, 2, 0.02)
  kernel = np.asarray(fresh["kernel"])
  assert abs(kernel.std() / 0.02 - 1) < 0.05 and abs(kernel.mean()) < 0.002
  np.testing.assert_array_equal(fresh["bias"], np.zeros(2))
  np.testing.assert_array_equal(init_classifier(0, 1024, 2, 0.02)["kernel"], kernel)
  assert not np.allclose(init_classifier(1, 1024, 2, 0.02)["kernel"], kernel)


def test_seed_changes_only_the_classifier(tmp_path, tiny_pretrained):
  config, params = tiny_pretrained
  folder = write_checkpoint(tmp_path / "model", config, params)
  first, second = (from_pretrained(folder, num_labels=2, seed=s) for s in (0, 1))
  assert not np.allclose(first.classifier.kernel[...], second.classifier.kernel[...])
  np.testing.assert_array_equal(first.pooler.kernel[...], params["pooler/kernel"])
  np.testing.assert_array_equal(second.pooler.kernel[...], params["pooler/kernel"])


def test_hf_tensors_are_the_inverse_of_loading_a_fine_tuned_folder(tmp_path):
  """A classifier's parameters written as ``hf_tensors`` (with ``id2label``) load back
  unchanged when no ``num_labels`` is given, the classifier included; with ``num_labels``
  the classifier is fresh, as fine-tuning needs, and the stored one is listed as ignored."""
  config = tiny_config()
  model = BertForSequenceClassification(config, 3, rngs=nnx.Rngs(7))
  _, _, params = split_params(model)
  tensors = hf_tensors(params)
  assert tensors["classifier.weight"].shape == (3, 32)  # PyTorch's [out, in]
  assert tensors["bert.encoder.layer.1.output.LayerNorm.weight"].shape == (32,)
  assert set(tensors) == ({"bert." + n for n in checkpoint_names(2).values()}
                          | {"classifier.weight", "classifier.bias"})
  folder = tmp_path / "fine_tuned"
  folder.mkdir()
  save_file(tensors, str(folder / "model.safetensors"))
  hf_config = {**dataclasses.asdict(config), "model_type": "bert", "hidden_act": "gelu",
               "id2label": {"0": "a", "1": "b", "2": "c"}}
  (folder / "config.json").write_text(json.dumps(hf_config))
  assert label_names(folder) == ("a", "b", "c")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # every stored tensor is used
    loaded = from_pretrained(folder)
  jax.tree.map(np.testing.assert_array_equal, split_params(loaded)[2], params)
  with pytest.warns(UserWarning, match=r"classifier\.bias.*classifier\.weight"):
    fresh = from_pretrained(folder, num_labels=2)
  assert fresh.classifier.kernel.shape == (32, 2)


def test_loading_a_classifier_needs_a_fine_tuned_folder(tmp_path, tiny_pretrained):
  config, params = tiny_pretrained
  folder = write_checkpoint(tmp_path / "model", config, params)
  assert label_names(folder) is None
  with pytest.raises(ValueError, match="has no id2label.*pass num_labels"):
    from_pretrained(folder)
  hf_config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**hf_config, "id2label": {"0": "x"}}))
  with pytest.raises(ValueError, match=r"lacks 2 BERT tensor\(s\): \['classifier\.weight'"):
    from_pretrained(folder)


def test_sha256_mismatch_raises(tmp_path):
  weights = tmp_path / "model.safetensors"
  weights.write_bytes(b"not the model")
  with pytest.raises(ValueError, match="sha256"):
    verify_sha256(weights, MINILM_SHA256)
  verify_sha256(weights, hashlib.sha256(b"not the model").hexdigest())


def test_a_hub_id_that_cannot_be_downloaded_fails_fast_and_clearly():
  # A repository that does not exist: fails here (no internet) and anywhere else alike.
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError, match=r"cwgnc-jax-tests/no-such-bert.*minilm-l6"):
    resolve_model_dir("cwgnc-jax-tests/no-such-bert")
  # Fast: no retry loop. The bound is for any host: where no DNS server answers, one failed
  # lookup takes glibc's timeout, 5 s x 2 attempts per server (resolv.conf's defaults), up to
  # 3 servers, so 30 s; 60 s allows that once, and fails a second round of lookups.
  assert time.perf_counter() - start < 60


def test_a_missing_local_folder_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no model folder"):
    resolve_model_dir(tmp_path / "absent")


def test_config_rejects_what_the_model_does_not_implement():
  hf = {"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16}
  assert BertConfig.from_dict({**hf, "layer_norm_eps": 1e-7}).layer_norm_eps == 1e-7
  with pytest.raises(ValueError, match="gelu_new"):
    BertConfig.from_dict({**hf, "hidden_act": "gelu_new"})
  with pytest.raises(ValueError, match="num_attention_heads"):
    BertConfig.from_dict({**hf, "num_attention_heads": 3})
  with pytest.raises(ValueError, match=r"gelu must be one of \('erf', 'erfc'\), got 'tanh'"):
    BertConfig(**hf, gelu="tanh")


def one_line_error(error_type, call, *args, **kwargs) -> str:
  """The message of the ``error_type`` that ``call`` raises, checked to be one line."""
  with pytest.raises(error_type) as error:
    call(*args, **kwargs)
  assert "\n" not in str(error.value)
  return str(error.value)


@pytest.mark.parametrize("damage, problem", [
    (lambda data: data[:len(data) // 2], "incomplete metadata, file not fully covered"),
    (lambda data: b"not a safetensors file at all" * 4, "header too large"),
    (lambda data: b"", "header too small"),
])
def test_a_truncated_or_garbage_weights_file_is_named(tmp_path, tiny_pretrained, damage,
                                                      problem):
  config, params = tiny_pretrained
  folder = write_checkpoint(tmp_path / "model", config, params)
  weights = folder / "model.safetensors"
  weights.write_bytes(damage(weights.read_bytes()))
  assert one_line_error(ValueError, from_pretrained, folder, num_labels=2) == (
      f"{weights} is not a readable safetensors file (Error while deserializing header: "
      f"{problem}): it is truncated or corrupt; download or copy it again")


def test_a_weights_path_that_is_a_directory_says_so(tmp_path, tiny_pretrained):
  config, params = tiny_pretrained
  folder = write_checkpoint(tmp_path / "model", config, params)
  (folder / "model.safetensors").unlink()
  (folder / "model.safetensors").mkdir()
  assert one_line_error(ValueError, from_pretrained, folder, num_labels=2).startswith(
      f"{folder / 'model.safetensors'} is a directory, not a file")


def test_a_dtype_numpy_cannot_read_is_named(tmp_path, tiny_pretrained):
  """float8 checkpoints: numpy has no such dtype, so safetensors' numpy reader fails (it
  reads bfloat16 through ml_dtypes, which JAX loads)."""
  config, params = tiny_pretrained
  folder = write_checkpoint(tmp_path / "model", config, params)
  with safe_open(folder / "model.safetensors", framework="numpy") as stored:
    tensors = {name: stored.get_tensor(name) for name in stored.keys()}
  name = "encoder.layer.0.output.dense.bias"
  del tensors[name]
  save_file(tensors, str(folder / "model.safetensors"))
  # Append one float8 tensor by rewriting the header (safetensors' numpy writer has none).
  data = (folder / "model.safetensors").read_bytes()
  size = struct.unpack("<Q", data[:8])[0]
  header, body = json.loads(data[8:8 + size]), data[8 + size:]
  header[name] = {"dtype": "F8_E4M3", "shape": [32], "data_offsets": [len(body), len(body) + 32]}
  header_bytes = json.dumps(header).encode()
  (folder / "model.safetensors").write_bytes(
      struct.pack("<Q", len(header_bytes)) + header_bytes + body + bytes(32))
  assert one_line_error(ValueError, from_pretrained, folder, num_labels=2) == (
      f"tensor {name!r} in {folder / 'model.safetensors'} has dtype F8_E4M3, which numpy "
      "cannot read: save the checkpoint in float32, float16 or bfloat16")


HF_CONFIG = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32,
             "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
RESTORE = "restore the file from the model's source"


@pytest.mark.parametrize("content, message", [
    (json.dumps(HF_CONFIG, indent=1)[:60],
     ":4: not valid JSON (Expecting value): expected the model's HF "
     f"config.json; {RESTORE}"),
    (b"model_type: bert\n", ":1: not valid JSON (Expecting value): expected the model's HF "
     f"config.json; {RESTORE}"),
    (b'{"model_type":\n "b\xe9rt"}', ":2: not UTF-8 text (byte 0xe9): expected the model's HF "
     f"config.json (JSON); {RESTORE}"),
    ("[1, 2]", " holds a JSON list, expected the model's HF config.json (a JSON object); "
     f"{RESTORE}"),
    ({k: v for k, v in HF_CONFIG.items() if k not in ("vocab_size", "hidden_size")},
     " lacks ['vocab_size', 'hidden_size'], which every BERT config.json holds: it is not a "
     "BERT config, or cut short; restore it from the model's source"),
    ({**HF_CONFIG, "hidden_size": "32"}, ": hidden_size must be an int > 0, got '32'"),
    ({**HF_CONFIG, "num_attention_heads": 0}, ": num_attention_heads must be an int > 0, got 0"),
    ({**HF_CONFIG, "layer_norm_eps": "small"}, ": layer_norm_eps must be a number, got 'small'"),
    ({**HF_CONFIG, "hidden_act": "relu"},
     ": hidden_act 'relu' is not supported: expected 'gelu' (erf)"),
])
def test_a_bad_model_config_names_the_file(tmp_path, content, message):
  path = tmp_path / "config.json"
  if isinstance(content, dict):
    content = json.dumps(content)
  if isinstance(content, str):
    content = content.encode()
  path.write_bytes(content)
  for load in (load_config, lambda folder: from_pretrained(folder, num_labels=2)):
    assert one_line_error(ValueError, load, tmp_path) == f"{path}{message}"


def test_a_model_config_that_is_missing_or_a_directory_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"no BERT config file at {tmp_path}/config.json"):
    load_config(tmp_path)
  (tmp_path / "config.json").mkdir()
  assert one_line_error(ValueError, load_config, tmp_path) == (
      f"{tmp_path / 'config.json'} is a directory, not a file: expected the model's HF "
      "config.json")


ID2LABEL_EXPECTED = ("expected a JSON object mapping the ids 0 ... n-1 to class names, such "
                     'as {"0": "entailment", "1": "not_entailment"}')


@pytest.mark.parametrize("content, message", [
    ({**HF_CONFIG, "id2label": ["a", "b"]}, f": id2label is ['a', 'b'], {ID2LABEL_EXPECTED}"),
    ({**HF_CONFIG, "id2label": {"0": "a", "2": "b"}},
     f": id2label is {{'0': 'a', '2': 'b'}}, {ID2LABEL_EXPECTED}"),
    ({**HF_CONFIG, "id2label": {"0": "a", "1": 7}},
     f": id2label is {{'0': 'a', '1': 7}}, {ID2LABEL_EXPECTED}"),
    ('{"id2label": {"0": "a",', ":1: not valid JSON (Expecting property name enclosed in "
     f"double quotes): expected the model's HF config.json; {RESTORE}"),
], ids=["list", "gap", "not-a-name", "corrupt-json"])
def test_a_bad_id2label_names_the_file(tmp_path, content, message):
  """A fine-tuned folder's class names: an id2label that does not map the ids 0 ... n-1 to
  names, or a corrupt config.json, is one line naming the file."""
  path = tmp_path / "config.json"
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  for load in (label_names, from_pretrained):
    assert one_line_error(ValueError, load, tmp_path) == f"{path}{message}"


@pytest.fixture
def tokenizer_dir(tmp_path, tiny_bert_dir):
  """A copy of the tiny model folder (config, weights, MiniLM's tokenizer files) to damage."""
  return shutil.copytree(tiny_bert_dir, tmp_path / "model")


@pytest.mark.real
@pytest.mark.parametrize("name, content, message", [
    ("tokenizer.json", b'{"version": "1.0", "truncat',
     ":1: not valid JSON (Unterminated string starting at): expected the model's "
     f"tokenizer.json; {RESTORE}"),
    ("tokenizer.json", b"", ":1: not valid JSON (Expecting value): expected the model's "
     f"tokenizer.json; {RESTORE}"),
    ("tokenizer.json", b"\xff\xfe{}", ":1: not UTF-8 text (byte 0xff): expected the model's "
     f"tokenizer.json (JSON); {RESTORE}"),
    ("tokenizer.json", b"[1, 2]", " holds a JSON list, expected the model's tokenizer.json "
     f"(a JSON object); {RESTORE}"),
    ("tokenizer_config.json", b'{"model_max_len', ":1: not valid JSON (Unterminated string "
     f"starting at): expected the model's tokenizer_config.json; {RESTORE}"),
])
def test_a_corrupt_tokenizer_file_is_named(tokenizer_dir, name, content, message):
  (tokenizer_dir / name).write_bytes(content)
  assert one_line_error(ValueError, load_tokenizer, tokenizer_dir) == (
      f"{tokenizer_dir / name}{message}")


@pytest.mark.real
def test_a_tokenizer_transformers_cannot_build_is_named(tokenizer_dir):
  (tokenizer_dir / "tokenizer.json").write_text("{}")
  assert one_line_error(ValueError, load_tokenizer, tokenizer_dir) == (
      f"cannot build the tokenizer of {tokenizer_dir} from its files (KeyError: "
      "'added_tokens'): restore its tokenizer files from the model's source")


@pytest.mark.real
def test_a_tokenizer_that_fails_when_used_is_named(tokenizer_dir):
  """From an empty vocab.txt transformers builds a tokenizer that raises on every call."""
  (tokenizer_dir / "tokenizer.json").unlink()
  (tokenizer_dir / "vocab.txt").write_text("")
  assert one_line_error(ValueError, load_tokenizer, tokenizer_dir) == (
      f"cannot build the tokenizer of {tokenizer_dir} from its files (Exception: WordPiece "
      "error: Missing [UNK] token from the vocabulary): restore its tokenizer files from the "
      "model's source")


@pytest.mark.real
def test_a_folder_without_tokenizer_files_is_refused(tokenizer_dir):
  """transformers would build a 5-token tokenizer of special tokens from such a folder,
  which maps every word to [UNK]."""
  (tokenizer_dir / "tokenizer.json").unlink()
  assert load_tokenizer(tokenizer_dir)("hello world")["input_ids"] == [101, 7592, 2088, 102]
  (tokenizer_dir / "vocab.txt").unlink()
  assert one_line_error(FileNotFoundError, load_tokenizer, tokenizer_dir) == (
      f"model folder {tokenizer_dir} holds no tokenizer: expected tokenizer.json or vocab.txt "
      "beside config.json; copy the model's tokenizer files there")
