"""Made-up finished study groups, written as ``cwgnc_jax.study`` writes them, for the tests
of what reads them (the report, the results page)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cwgnc_jax import config as config_lib
from cwgnc_jax import diagnostics, files, study

LAYERS = ["embeddings", "encoder/layers/0", "encoder/layers/1", "encoder/layers/2", "head"]
TENSORS = ["embeddings/word/embedding"] + [
    f"encoder/layers/{i}/{name}" for i in range(3)
    for name in ("attention/query/kernel", "attention/key/kernel", "output/dense/kernel")
] + ["classifier/kernel"]


def _drift(scale: float) -> dict[str, dict[str, float]]:
  return {layer: {"max_rms": scale * (i + 1) * 1e-3, "min_cos": 1 - scale * (i + 1) * 1e-4}
          for i, layer in enumerate(LAYERS)}


def make_group(root: Path, config_name: str, overrides: dict[str, str], scores: list[float],
               majority: float, *, grad_norms: bool = False, gu_iterations: int = 0,
               last_scores: list[float] | None = None) -> Path:
  """A finished study group as ``cwgnc_jax.study`` writes it, with made-up scores: per seed a
  results.json (evaluations with drift, a last one scoring ``last_scores`` where given, as a
  best-of run ends; GU iterations), optionally grad_norms.npz."""
  pairs = list(overrides.items())
  config = config_lib.apply_overrides(config_lib.load(config_name), pairs)
  values = study.group_overrides(config, pairs)
  group = study.group_name(config_name, values)
  seeds = list(range(1, len(scores) + 1))
  results = {}
  metric = {"rte": "accuracy", "cola": "mcc", "mrpc": "f1"}[config.task]
  for seed, score in zip(seeds, scores):
    failed = score <= majority
    results[seed] = {
        "seed": seed, "score": score, "failed": failed, "majority_score": majority,
        "metric": metric, "skipped_steps": 0, "timings": {"train_seconds": 10.0,
                                                          "eval_seconds": 1.0},
        "evaluations": [{"step": 10, "score": score, "drift": _drift(seed)}],
    }
    if last_scores is not None:
      results[seed]["evaluations"].append(
          {"step": 20, "score": last_scores[seed - 1], "drift": _drift(seed)})
    if gu_iterations:
      results[seed]["unfreezing"] = {"mode": config.unfreezing.mode, "iterations": [
          {"iteration": k, "score": score - 5 + k + 0.1 * seed,
           "drift_from_pretrained": _drift(seed + k), "drift_from_previous": _drift(1 + k)}
          for k in range(gu_iterations)]}
    workdir = root / group / f"seed_{seed}"
    workdir.mkdir(parents=True)
    (workdir / "results.json").write_text(json.dumps(results[seed]))
    if grad_norms:  # CWGNC's also say which tensors it clipped, as the step logs them
      clip_norm = config.optimizer.get("clip_norm") if config.method == "cwgnc" else None
      names = {"tensor_norms": TENSORS}
      if clip_norm is not None:
        names["component_norms"] = TENSORS
      log = diagnostics.GradientNormLog(workdir, names, 10, 0, True)
      rng = np.random.default_rng(seed)
      for step in range(10, 210, 10):
        growth = 30.0 if failed and step > 100 else 1.0
        norms = growth * rng.uniform(0.01, 1.0, len(TENSORS))
        log.take(step, {"tensor_norms": norms} if clip_norm is None else
                 {"tensor_norms": norms, "component_norms": norms, "clipped": norms > clip_norm})
      log.save()
  summary = study.summarize(group, config_name, values, config, seeds, results)
  (root / group / files.SUMMARY_FILE).write_text(json.dumps(summary))
  return root / group
