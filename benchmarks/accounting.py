"""The matmul FLOPs a BERT training step does usefully, and what XLA counts of a compiled
program: the figures ``bench_train.py``, ``bench_accelerator.py`` and
``estimate_paper_protocol.py`` report.

Useful FLOPs count only real (non-padding) tokens, for forward and backward::

  6 * P_mm * tokens                       P_mm = L (4 H^2 + 2 H I): the encoder's matmul weights
  + 12 * L * H * sum_i len_i^2            attention scores and weighted values, per example
  + 6 * (H^2 + H C) * examples            pooler and classifier on each [CLS]

and with ``cls_only_last_layer`` the last layer's as it computes them: keys and values of
every token, the rest at the [CLS] tokens alone::

  6 * (L - 1) * P_mm / L * tokens + 12 * (L - 1) * H * sum_i len_i^2
  + 6 * 2 H^2 * tokens + 6 * (2 H^2 + 2 H I) * examples + 12 * H * sum_i len_i
  + 6 * (H^2 + H C) * examples

(embedding lookups, LayerNorm, softmax, GELU and the optimizer update are not matmul FLOPs
and are not counted).
"""

from __future__ import annotations

import numpy as np

from cwgnc_jax.models import bert


def useful_flops(batch: dict[str, np.ndarray], model_config: bert.BertConfig,
                 num_labels: int) -> float:
  """Forward + backward matmul FLOPs of the real tokens of a batch (module docstring)."""
  h, layers = model_config.hidden_size, model_config.num_hidden_layers
  per_token = 4 * h * h + 2 * h * model_config.intermediate_size  # one layer's weights
  segments = batch["segment_ids"]
  tokens = int((segments != 0).sum())
  lengths = np.concatenate([np.bincount(row[row != 0])[1:] for row in segments])
  lengths = lengths.astype(np.float64)
  examples = float(batch["example_mask"].sum())
  full_layers = layers - 1 if model_config.cls_only_last_layer else layers
  flops = 6 * full_layers * per_token * tokens + 12 * full_layers * h * (lengths**2).sum()
  if model_config.cls_only_last_layer:  # every token's key and value; one query an example
    flops += 6 * 2 * h * h * tokens + 6 * (per_token - 2 * h * h) * examples
    flops += 12 * h * lengths.sum()
  return flops + 6 * (h * h + h * num_labels) * examples


def cost(compiled) -> dict[str, float]:
  """XLA's count of a compiled program's FLOPs and bytes accessed (per device)."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis  # older JAX: a list
  return {"flops": float(analysis["flops"]), "bytes": float(analysis["bytes accessed"])}


def memory(compiled) -> dict[str, float]:
  """XLA's buffer plan of a compiled program (per device), in bytes; ``peak`` is what it holds
  at once: arguments, outputs not aliased to (donated) arguments, and temporaries."""
  stats = compiled.memory_analysis()
  out = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
         "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes}
  out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return {k: float(v) for k, v in out.items()}
