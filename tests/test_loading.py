"""Pretrained weights: name mapping, missing/wrong tensors, sha256, hub errors, classifier init."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from cwgnc_jax import paths
from cwgnc_jax.models import (MINILM_SHA256, BertConfig, BertForSequenceClassification,
                              from_pretrained, resolve_model_dir, split_params, tiny_config,
                              verify_sha256)
from cwgnc_jax.models.loading import checkpoint_names, hf_tensors, init_classifier, label_names


def encoder_params(model):
  flat = {paths.path_to_str(p): np.asarray(leaf)
          for p, leaf in jax.tree_util.tree_leaves_with_path(split_params(model)[2])}
  return {p: v for p, v in flat.items() if not p.startswith("classifier/")}


@pytest.fixture(scope="module")
def tiny_pretrained():
  """A random tiny BERT: its config and its encoder+pooler parameters by path."""
  config = tiny_config()
  return config, encoder_params(BertForSequenceClassification(config, 2, rngs=nnx.Rngs(42)))


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
  assert time.perf_counter() - start < 30


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
