"""train.py on bad files: one line on stderr naming the file, exit status 2, nothing changed.

Each case damages one input of a tiny run (the tiny model folder, the first RTE rows, the
tokenized-data cache) beside a run directory that an earlier session of the same command
left, and runs ``train.py``'s ``main`` in this process (so the case takes about a second):
the run directory, the model and the data must come out byte for byte as they went in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import jax
import pytest

from cwgnc_jax import config as config_lib
from cwgnc_jax import command_line, identity

REPO = Path(__file__).resolve().parent.parent
NUM_DEVICES = jax.device_count()
BATCH = 8 if 8 % NUM_DEVICES == 0 else 4 * NUM_DEVICES


def digests(folder: Path) -> dict[str, str]:
  """sha256 of every file below ``folder``, by path."""
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def train_main():
  """``main`` of train.py, loaded as a module."""
  spec = importlib.util.spec_from_file_location("train_py", REPO / "train.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


@pytest.fixture
def inputs(tmp_path, tiny_bert_dir, tiny_rte_dir) -> dict[str, Path]:
  """Copies of the tiny model folder and RTE rows to damage, a cache folder, and a run
  directory as an interrupted session of the same command leaves it."""
  folders = {"model": shutil.copytree(tiny_bert_dir, tmp_path / "model"),
             "glue": shutil.copytree(tiny_rte_dir, tmp_path / "glue"),
             "cache": tmp_path / "cache", "run": tmp_path / "run"}
  config, _ = command_line.train_config(args(folders))
  (folders["run"] / "checkpoints" / "2").mkdir(parents=True)
  (folders["run"] / "config.json").write_text(json.dumps(identity.run_identity(config)))
  (folders["run"] / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
  (folders["run"] / "checkpoints" / "2" / "state").write_text("an earlier checkpoint")
  return folders


def args(folders: dict[str, Path]) -> list[str]:
  return ["--config", "demo", f"--config.model={folders['model']}",
          f"--config.glue_dir={folders['glue']}", f"--config.cache_dir={folders['cache']}",
          f"--config.batch_size={BATCH}", f"--config.eval_batch_size={BATCH}",
          "--config.progress=false"]


def _cut_in_half(path: Path) -> None:
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _latin1_row(path: Path) -> None:
  with path.open("ab") as f:
    f.write("99\tna\u00efve\tb\tentailment\n".encode("latin-1"))


def _drop_config_key(path: Path) -> None:
  path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                              if k != "num_hidden_layers"}))


RESTORE = "restore the file from the model's source"
# (damaged file, damage, the message after "train.py: error: " with {file} for its path)
BAD_FILES = [
    pytest.param("model/model.safetensors", _cut_in_half,
                 "{file} is not a readable safetensors file (Error while deserializing header: "
                 "incomplete metadata, file not fully covered): it is truncated or corrupt; "
                 "download or copy it again", id="weights-cut-short"),
    pytest.param("model/model.safetensors", lambda p: p.write_bytes(b"garbage" * 9),
                 "{file} is not a readable safetensors file (Error while deserializing header: "
                 "header too large): it is truncated or corrupt; download or copy it again",
                 id="weights-garbage"),
    pytest.param("model/config.json", lambda p: p.write_text('{"model_type": "bert",'),
                 "{file}:1: not valid JSON (Expecting property name enclosed in double "
                 f"quotes): expected the model's HF config.json; {RESTORE}",
                 id="model-config-cut-short"),
    pytest.param("model/config.json", _drop_config_key,
                 "{file} lacks ['num_hidden_layers'], which every BERT config.json holds: it is "
                 "not a BERT config, or cut short; restore it from the model's source",
                 id="model-config-lacks-a-key"),
    pytest.param("model/tokenizer.json", lambda p: p.write_text('{"version": "1.0", "tr'),
                 "{file}:1: not valid JSON (Unterminated string starting at): expected the "
                 f"model's tokenizer.json; {RESTORE}", id="tokenizer-cut-short"),
    pytest.param("glue/RTE/train.tsv", _latin1_row,
                 "{file}:34: not UTF-8 (byte 0xef): GLUE files are UTF-8 text; convert the "
                 "file to UTF-8 (e.g. iconv -f latin1 -t utf-8)", id="tsv-not-utf8"),
    pytest.param("glue/RTE/dev.tsv", lambda p: p.write_text(p.read_text() + "99\ta\tb\n"),
                 "{file}:21: 3 columns, expected 4 for RTE", id="tsv-a-row-short"),
    pytest.param("glue/RTE/dev.tsv", lambda p: p.write_text(""),
                 "RTE dev split from {file} is empty: expected a header line, then one example "
                 "per line", id="tsv-empty"),
    pytest.param("cache", lambda p: p.write_text("not a folder"),
                 "the tokenized-data cache {file} is a file, not a folder: set config.cache_dir "
                 "(default $CWGNC_CACHE, else ~/.cache/cwgnc_jax) to a folder you can read and "
                 "write", id="cache-a-file"),
]


@pytest.mark.real
@pytest.mark.parametrize("name, damage, message", BAD_FILES)
def test_a_bad_file_exits_2_naming_it_and_changes_nothing(train_main, inputs, capsys, name,
                                                          damage, message):
  path = inputs["run"].parent / name
  damage(path)
  before = {name: digests(inputs[name]) for name in ("run", "model", "glue")}
  with pytest.raises(SystemExit) as done:
    train_main([*args(inputs), "--workdir", str(inputs["run"])])
  assert done.value.code == 2
  assert capsys.readouterr().err == f"train.py: error: {message.format(file=path)}\n"
  assert {name: digests(inputs[name]) for name in ("run", "model", "glue")} == before


@pytest.mark.real
@pytest.mark.parametrize("extra, message", [
    ([f"--config.seed={2**64}"], f"config.seed must be an int in [0, 4294967295], got {2**64}"),
    (["--config.seed=-3"], "config.seed must be an int in [0, 4294967295], got -3"),
])
def test_a_seed_jax_cannot_take_exits_2_before_anything_is_written(train_main, inputs, capsys,
                                                                   tmp_path, extra, message):
  with pytest.raises(SystemExit) as done:
    train_main([*args(inputs), *extra, "--workdir", str(tmp_path / "fresh")])
  assert done.value.code == 2
  stderr = capsys.readouterr().err
  assert stderr.startswith(f"train.py: error: {message}: ") and stderr.count("\n") == 1
  assert not (tmp_path / "fresh").exists() and not inputs["cache"].exists()


def test_a_run_directory_that_cannot_be_made_exits_2_naming_it(train_main, inputs, capsys,
                                                               monkeypatch):
  """The access check passes, the folder's making fails (as under /proc, or on a full disk):
  one line naming the folder and the system's reason, not a traceback."""
  workdir = inputs["run"].parent / "new_run"
  real_mkdir = Path.mkdir
  def mkdir(path, *a, **k):
    if path == workdir:
      raise OSError(28, "No space left on device", str(path))
    return real_mkdir(path, *a, **k)
  monkeypatch.setattr(Path, "mkdir", mkdir)
  with pytest.raises(SystemExit) as done:
    train_main([*args(inputs), "--workdir", str(workdir)])
  assert done.value.code == 2
  assert capsys.readouterr().err == (
      f"train.py: error: cannot make the run directory {workdir}: No space left on device\n")
  assert not workdir.exists()


@pytest.mark.real
@pytest.mark.parametrize("text, problem", [
    ('{"task": "rte",', ":1: not valid JSON (Expecting property name enclosed in double quotes)"
                        "; restore it or remove its folder"),
    ('[1, 2]', " is an array, expected an object; restore it or remove its folder")])
def test_a_corrupt_run_config_is_named_and_left_alone(train_main, inputs, capsys, text,
                                                      problem):
  (inputs["run"] / "config.json").write_text(text)
  before = digests(inputs["run"])
  with pytest.raises(SystemExit) as done:
    train_main([*args(inputs), "--workdir", str(inputs["run"])])
  assert done.value.code == 2
  assert capsys.readouterr().err == (
      f"train.py: error: {inputs['run'] / 'config.json'}{problem}\n")
  assert digests(inputs["run"]) == before


@pytest.mark.parametrize("text, message", [
    ("def get_config(:\n", "config file {file}:1: invalid syntax"),
    ("import no_such_module_here\n", "config file {file} failed to load (ModuleNotFoundError: "
     "No module named 'no_such_module_here')"),
    ("def get_config():\n  return 1 / 0\n", "get_config() of {file} failed "
     "(ZeroDivisionError: division by zero)"),
])
def test_a_config_file_that_fails_is_named(train_main, capsys, tmp_path, text, message):
  path = tmp_path / "mine.py"
  path.write_text(text)
  with pytest.raises(SystemExit) as done:
    train_main(["--config", str(path), "--workdir", str(tmp_path / "run")])
  assert done.value.code == 2
  assert capsys.readouterr().err == f"train.py: error: {message.format(file=path)}\n"
  assert not (tmp_path / "run").exists()


def test_a_metrics_log_keeps_only_well_formed_records_up_to_the_resumed_step(tmp_path):
  from cwgnc_jax.training import rundir  # pylint: disable=import-outside-toplevel
  lines = ['{"step": 1, "loss": 0.7}', "5", '{"loss": 0.6}', '{"step": "2"}',
           '{"step": 3, "loss": 0.5}', '{"step": 4, "loss": 0.4}', '{"step": 5, "lo']
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
  log = rundir.MetricsLog(tmp_path, 3, True)
  log.close()
  assert (tmp_path / "metrics.jsonl").read_text() == f"{lines[0]}\n{lines[4]}\n"


@pytest.mark.real
def test_a_study_with_a_seed_jax_cannot_take_or_an_out_that_is_a_file_exits_2(tmp_path,
                                                                              tiny_rte_dir):
  from cwgnc_jax import study  # pylint: disable=import-outside-toplevel
  with pytest.raises(config_lib.ConfigError, match=r"--seeds 1,4294967296: seeds must be <= "
                     r"4294967295 \(jax.random.key keeps 32 bits of a seed\)"):
    study.parse_seeds("1,4294967296")
  (tmp_path / "out").write_text("a file")
  with pytest.raises(config_lib.ConfigError, match=f"--out {tmp_path / 'out'}: cannot make "):
    study.run_study("demo", [("glue_dir", str(tiny_rte_dir))], [1], tmp_path / "out")
  assert (tmp_path / "out").read_text() == "a file"
