"""The transform on its own: ``pip install cwgnc_jax`` needs jax, optax and numpy, and
``import cwgnc_jax`` with the README's Optax example loads no package of the ``train`` extra;
``cwgnc_jax.__all__`` is the list the README gives."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import cwgnc_jax

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# The train extra's distributions (pyproject.toml) and the top-level modules they install.
TRAIN_EXTRA = {"flax": "flax", "orbax-checkpoint": "orbax", "transformers": "transformers",
               "tokenizers": "tokenizers", "datasets": "datasets", "safetensors": "safetensors",
               "huggingface-hub": "huggingface_hub", "scikit-learn": "sklearn", "tqdm": "tqdm",
               "matplotlib": "matplotlib", "tensorboardX": "tensorboardX",
               "ml-collections": "ml_collections"}


def readme_section(title: str) -> str:
  """The text of README.md's ``## <title>`` section."""
  return README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def optax_example() -> str:
  (example, *_) = re.findall(r"```python\n(.*?)```",
                             readme_section("CWGNC in your own Optax chain"), re.S)
  return example


def distribution(requirement: str) -> str:
  return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]


def test_the_readme_example_runs_without_the_train_extra():
  """In a new process in which the train extra's modules cannot be imported (as after
  ``pip install cwgnc_jax``), ``import cwgnc_jax`` and the README's example run, print what
  the README says they print, and load none of them."""
  script = textwrap.dedent("""\
      import importlib.abc, json, sys
      BLOCKED = set(json.loads(sys.argv[1]))

      class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
          return None

      sys.meta_path.insert(0, Absent())
      import cwgnc_jax
      exec(sys.argv[2])
      print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)))
      """)
  done = subprocess.run(
      [sys.executable, "-c", script, json.dumps(sorted(TRAIN_EXTRA.values())), optax_example()],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  printed, loaded = done.stdout.splitlines()
  norm, clipped = printed.split()
  assert abs(float(norm) - 0.2828) < 1e-4 and clipped == "True"  # the example's comment
  assert json.loads(loaded) == []


def test_all_is_what_the_readme_lists():
  (paragraph,) = [p for p in readme_section("CWGNC in your own Optax chain").split("\n\n")
                  if "(`cwgnc_jax.__all__`)" in p]
  listed = re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", paragraph)
  assert len(set(listed)) == len(listed)
  assert sorted(listed) == sorted(cwgnc_jax.__all__)
  assert all(hasattr(cwgnc_jax, name) for name in cwgnc_jax.__all__)


def test_the_core_needs_jax_optax_numpy_and_the_lock_installs_the_train_extra():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  assert sorted(map(distribution, project["dependencies"])) == ["jax", "numpy", "optax"]
  extras = project["optional-dependencies"]
  assert sorted(map(distribution, extras["train"])) == sorted(TRAIN_EXTRA)
  assert "pytest" in map(distribution, extras["test"])
  lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
  assert "-e .[train]" in lines
  pinned = {distribution(line).lower().replace("_", "-") for line in lines if "==" in line}
  assert {name.lower() for name in TRAIN_EXTRA} | {"jax", "optax", "numpy"} <= pinned
