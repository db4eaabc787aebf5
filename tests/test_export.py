"""Export to the Hugging Face format: the round trip, the folder's contents, PyTorch's logits
(tools/make_export_fixture.py), and bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import command_line_error
from safetensors import safe_open

from cwgnc_jax import export, saved_run
from cwgnc_jax.data import batching, glue
from cwgnc_jax.models import bert, from_pretrained, load_tokenizer, loading
from cwgnc_jax.training import checkpoint

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "minilm_export.npz"
LABELS = ("entailment", "not_entailment")


def stored_tensors(folder: Path) -> dict[str, np.ndarray]:
  with safe_open(folder / "model.safetensors", framework="numpy") as stored:
    return {name: stored.get_tensor(name) for name in stored.keys()}


def rte_dev_inputs(run_dir: Path, tokenizer, count: int = 8) -> dict[str, np.ndarray]:
  """The first ``count`` pairs of the run's (real) RTE dev file, padded as a tokenizer pads
  them (and truncated to the 128 positions of the tiny model)."""
  examples = glue.load_examples("rte", "dev", json.loads(
      (run_dir / "config.json").read_text())["glue_dir"])[:count]
  encoding = tokenizer([e.text_a for e in examples], [e.text_b for e in examples],
                       padding=True, truncation=True, max_length=128, return_tensors="np")
  return batching.inputs_from_padded(encoding)


def tree_digest(folder: Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def exported(tiny_rte_run, tmp_path_factory) -> Path:
  return export.export_run(tiny_rte_run, tmp_path_factory.mktemp("export") / "tiny")


@pytest.mark.real
def test_round_trip_gives_identical_logits(tiny_rte_run, exported):
  run = saved_run.open_run(tiny_rte_run)
  trained = saved_run.load_model(run)
  loaded = from_pretrained(exported)  # no num_labels: the exported classifier is loaded
  assert loaded.classifier.kernel.shape == (32, 2)
  tokenizer = load_tokenizer(exported)
  assert (glue.tokenizer_fingerprint(tokenizer)
          == glue.tokenizer_fingerprint(load_tokenizer(run.model_name)))
  inputs = rte_dev_inputs(tiny_rte_run, tokenizer)
  logits = np.asarray(loaded(inputs))
  np.testing.assert_array_equal(logits, np.asarray(trained(inputs)))
  assert np.ptp(logits[:, 0] - logits[:, 1]) > 0  # the pairs are told apart at all


@pytest.mark.real
def test_folder_is_what_transformers_writes_for_the_task(tiny_rte_run, tiny_bert_dir, exported):
  config = json.loads((exported / "config.json").read_text())
  assert config["architectures"] == ["BertForSequenceClassification"]
  assert config["model_type"] == "bert" and config["hidden_size"] == 32
  assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
  assert config["label2id"] == {"entailment": 0, "not_entailment": 1}
  tensors = stored_tensors(exported)
  with safe_open(exported / "model.safetensors", framework="numpy") as stored:
    assert stored.metadata() == {"format": "pt"}
  names = {"bert." + name for name in loading.checkpoint_names(2).values()}
  assert set(tensors) == names | {"classifier.weight", "classifier.bias"}
  best = checkpoint.read_params(saved_run.open_run(tiny_rte_run).checkpoint_dir, "best")
  np.testing.assert_array_equal(tensors["classifier.weight"], best["classifier"]["kernel"].T)
  np.testing.assert_array_equal(tensors["bert.encoder.layer.1.intermediate.dense.weight"],
                                best["encoder"]["layers"]["1"]["intermediate"]["kernel"].T)
  assert tensors["bert.encoder.layer.1.intermediate.dense.weight"].shape == (64, 32)  # [out, in]
  for name in loading.TOKENIZER_FILES:  # copied unchanged
    assert (exported / name).read_bytes() == (tiny_bert_dir / name).read_bytes()


@pytest.mark.real
def test_pytorch_gives_the_logits_of_the_exported_minilm(minilm_dir, tmp_path):
  """The exported pretrained MiniLM-L6 with the fixture's classifier, loaded back: the names
  and shapes of PyTorch's ``BertForSequenceClassification`` state dict, the same tokens, and
  PyTorch's logits to 1e-4 (both made by tools/make_export_fixture.py)."""
  ref = np.load(FIXTURE)
  _, _, params = bert.split_params(from_pretrained(minilm_dir, len(LABELS)))
  params["classifier"] = {"kernel": ref["classifier_kernel"], "bias": ref["classifier_bias"]}
  folder = export.write_hf_folder(tmp_path / "minilm", params, base_model=str(minilm_dir),
                                  label_names=LABELS)
  tensors = stored_tensors(folder)
  assert ({name: list(value.shape) for name, value in tensors.items()}
          == json.loads(str(ref["state_dict_shapes"])))
  loaded = from_pretrained(folder)
  jax.tree.map(np.testing.assert_array_equal, bert.split_params(loaded)[2],
               jax.tree.map(np.asarray, params))
  encoding = load_tokenizer(folder)(list(ref["first"]), list(ref["second"]), padding=True,
                                    return_tensors="np")
  for key in ("input_ids", "token_type_ids", "attention_mask"):
    np.testing.assert_array_equal(encoding[key], ref[key], err_msg=key)
  logits = np.asarray(jax.jit(lambda inputs: loaded(inputs))(
      batching.inputs_from_padded(encoding)))
  assert np.abs(logits - ref["logits"]).max() <= 1e-4
  assert np.abs(ref["logits"]).max() > 0.3  # logits large enough for 1e-4 to mean something


@pytest.mark.real
def test_the_exported_tokenizer_truncates_as_the_base_models(minilm_dir, tmp_path):
  """The export keeps tokenizer_config.json: without it transformers' tokenizer of the folder
  forgets MiniLM's model_max_length (512 becomes 1e30) and truncation=True stops cutting."""
  import transformers  # pylint: disable=import-outside-toplevel
  _, _, params = bert.split_params(from_pretrained(minilm_dir, len(LABELS)))
  folder = export.write_hf_folder(tmp_path / "minilm", params, base_model=str(minilm_dir),
                                  label_names=LABELS)
  original = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
  exported = transformers.AutoTokenizer.from_pretrained(str(folder))
  assert exported.model_max_length == original.model_max_length == 512
  long_text = " ".join(["word"] * 1000)
  input_ids = exported(long_text, truncation=True)["input_ids"]
  assert len(input_ids) == 512
  assert input_ids == original(long_text, truncation=True)["input_ids"]


# -- Bad input: one line on stderr, exit status 2, nothing written. ------------------------

def run_main(argv: list[str], capsys) -> str:
  return command_line_error(export.main, argv, capsys, "cwgnc_jax.export")


@pytest.mark.real
def test_a_folder_that_is_not_a_finished_run_exits_2(tiny_rte_run, tmp_path, capsys):
  """(Every such case: tests/test_saved_run.py.)"""
  out = tmp_path / "out"
  assert (f"{tmp_path} is not a run directory: it has no config.json"
          in run_main([str(tmp_path), str(out)], capsys))
  run = tmp_path / "run"
  shutil.copytree(tiny_rte_run, run)
  steps = json.loads((run / "results.json").read_text())["steps"]
  shutil.rmtree(run / "checkpoints" / str(steps))
  assert (f"{run / 'checkpoints' / str(steps)} is missing"
          in run_main([str(run), str(out)], capsys))
  assert not out.exists()


@pytest.mark.real
def test_an_unusable_output_folder_exits_2_untouched(tiny_rte_run, tmp_path, capsys,
                                                     monkeypatch):
  full = tmp_path / "full"
  full.mkdir()
  (full / "keep.txt").write_text("mine")
  before = tree_digest(full)
  assert (f"output folder {full} already holds files"
          in run_main([str(tiny_rte_run), str(full)], capsys))
  assert tree_digest(full) == before
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  assert (f"output folder {blocker / 'model'} cannot be created: {blocker} is a file, not a "
          "folder" in run_main([str(tiny_rte_run), str(blocker / "model")], capsys))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "full"]  # no temp folder left
  # The access check passes, the making fails (as under /proc, or on a read-only mount).
  # This case reaches transformers, whose first config load in a process advises that
  # PyTorch is missing, as python -m cwgnc_jax.export does not let it.
  monkeypatch.setenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  monkeypatch.setattr(export.tempfile, "mkdtemp", lambda **_: (_ for _ in ()).throw(
      OSError(30, "Read-only file system")))
  assert (f"output folder {tmp_path / 'model'} cannot be created (Read-only file system): "
          "pass a folder you can write" in run_main([str(tiny_rte_run), str(tmp_path / "model")],
                                                   capsys))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "full"]


@pytest.mark.real
def test_command_line(tiny_rte_run, tmp_path, capsys):
  """``--help`` and a bad argument list as a process; an export into an existing empty
  folder."""
  command = [sys.executable, "-m", "cwgnc_jax.export"]
  kwargs = dict(cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  done = subprocess.run([*command, "--help"], **kwargs)
  assert done.returncode == 0 and "python -m cwgnc_jax.export RUN_DIR OUT_DIR" in done.stdout
  done = subprocess.run([*command, str(tiny_rte_run)], **kwargs)
  assert done.returncode == 2 and done.stderr.count("\n") == 1
  assert f"expected RUN_DIR OUT_DIR, got {tiny_rte_run}" in done.stderr
  (tmp_path / "empty").mkdir()
  export.main([str(tiny_rte_run), str(tmp_path / "empty")])
  assert f"exported {tiny_rte_run} to {tmp_path / 'empty'}" in capsys.readouterr().err
  assert {p.name for p in (tmp_path / "empty").iterdir()} == {
      "config.json", "model.safetensors", *loading.TOKENIZER_FILES}
