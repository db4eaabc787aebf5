"""Configs: the Table 1 files hold SPEC section 2's values; loading, overrides, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cwgnc_jax import config as config_lib
from cwgnc_jax import command_line, identity, methods, unfreezing
from cwgnc_jax.config import ConfigError

TASKS = ("rte", "mrpc", "cola")
# Each row as SPEC section 2 and issue 16 state it: (epochs, evaluations per epoch, best of
# them is the result, Mixout p). Mosbach et al. and Lee et al. keep the best of ~3 dev
# evaluations per epoch (Mosbach's early_stopping, eval_logging_steps).
ROWS = {"bertadam": (3, 1, False, 0.0), "adamw": (3, 1, False, 0.0),
        "mosbach": (20, 3, True, 0.0), "mixout": (20, 3, True, 0.9),
        "cwgnc": (5, 1, False, 0.0)}


# SPEC section 2's optimizer columns, written out here rather than read from methods.py (which
# builds the configs): (bias correction, lr, warmup fraction, weight decay, eps, global clip,
# component clip c). Every row: b1 0.9, b2 0.999, no decay on biases or LayerNorm.
OPTIMIZERS = {"bertadam": (False, 2e-5, 0.1, 0.01, 1e-6, 1.0, None),
              "adamw": (True, 2e-5, 0.1, 0.01, 1e-6, 1.0, None),
              "mosbach": (True, 2e-5, 0.1, 0.01, 1e-6, 1.0, None),
              "mixout": (True, 2e-5, 0.1, 0.01, 1e-6, 1.0, None),
              "cwgnc": (True, 2e-5, 0.1, 0.01, 1e-6, None, 0.05)}


def _cli(*args: str):
  return command_line.train_config(["--config", "demo", *args])


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", ROWS)
def test_table1_configs_hold_the_paper_settings(task, method):
  config = config_lib.load(f"{task}_{method}")
  assert config.task == task and config.method == method
  assert config.model == "google-bert/bert-large-uncased"
  assert (config.max_length, config.batch_size) == (128, 16)
  assert (config.num_epochs, config.evals_per_epoch, config.keep_best,
          config.mixout.p) == ROWS[method]
  opt = config.optimizer
  assert (opt.bias_correction, opt.learning_rate, opt.warmup_fraction, opt.weight_decay,
          opt.eps, opt.max_grad_norm, opt.clip_norm) == OPTIMIZERS[method]
  assert (opt.b1, opt.b2, opt.adam_form) == (0.9, 0.999, "transformers")
  assert opt.decay_exclude == ("(^|/)bias$", "(^|/)layer_norm/")
  assert config.failure_rule == "majority"


@pytest.mark.parametrize("method", ROWS)
def test_changing_the_method_brings_its_whole_row(method):
  """``--config.method`` replaces the optimizer, epochs, evaluation and Mixout p together,
  whatever row the config file started from; later overrides still apply on top."""
  for start in ("rte_adamw", "rte_mixout", "demo"):
    config = config_lib.apply_overrides(config_lib.load(start), [("method", method)])
    assert (config.num_epochs, config.evals_per_epoch, config.keep_best,
            config.mixout.p) == ROWS[method], start
    assert config.optimizer.to_dict() == methods.recipe(method).to_dict()
  config = config_lib.apply_overrides(config_lib.load("rte_adamw"),
                                      [("num_epochs", "2"), ("method", method)])
  assert config.num_epochs == 2  # the explicit override wins, in any order


def test_changing_the_method_under_gradual_unfreezing_keeps_its_epochs():
  config = config_lib.apply_overrides(config_lib.load("rte_gu"), [("method", "cwgnc")])
  assert config.num_epochs is None and config.unfreezing.mode == "gu"
  assert config.optimizer.clip_norm == 0.05


def test_every_config_file_is_listed_and_valid(monkeypatch):
  monkeypatch.delenv("GLUE_DIR", raising=False)  # the hub source needs no folder
  names = config_lib.available()
  assert {f"{t}_{m}" for t in TASKS for m in ROWS} | {"demo"} <= set(names)
  for name in names:
    config_lib.validate(config_lib.load(name))


def test_demo_is_minilm_cwgnc_on_rte_packed():
  config = config_lib.load("demo")
  assert (config.model, config.task, config.method, config.layout) == (
      "minilm-l6", "rte", "cwgnc", "packed")
  assert config.optimizer.clip_norm == 0.05 and config.optimizer.max_grad_norm is None


def test_load_by_path_and_name_agree():
  by_name = config_lib.load("rte_cwgnc")
  by_path = config_lib.load(str(config_lib.CONFIG_DIR / "rte_cwgnc.py"))
  assert by_name.to_dict() == by_path.to_dict()


def test_overrides_are_typed_and_nested(monkeypatch):
  monkeypatch.delenv("GLUE_DIR", raising=False)
  config, workdir = _cli("--config.optimizer.learning_rate=1e-5", "--config.seed", "3",
                         "--config.model=bert-large-uncased", "--config.keep_best=true",
                         "--config.optimizer.max_grad_norm=2", "--config.num_epochs=4")
  assert config.optimizer.learning_rate == 1e-5
  assert config.seed == 3 and isinstance(config.seed, int)
  assert config.model == "bert-large-uncased" and config.keep_best is True
  assert config.optimizer.max_grad_norm == 2.0 and config.num_epochs == 4
  assert workdir == str(Path.cwd() / "runs" / "demo_seed3")
  _, workdir = _cli("--workdir", "/tmp/x")
  assert workdir == "/tmp/x"


def test_method_override_replaces_the_optimizer_first():
  config = config_lib.apply_overrides(
      config_lib.load("rte_cwgnc"),
      [("optimizer.learning_rate", "3e-5"), ("method", "bertadam")])
  expected = methods.recipe("bertadam")
  expected.learning_rate = 3e-5
  assert config.method == "bertadam"
  assert config.optimizer.to_dict() == expected.to_dict()


@pytest.mark.parametrize("args, message", [
    (["--config", "nope"], "unknown config 'nope'; valid: cola_adamw"),
    (["--config", "demo", "--config.foo=1"], "unknown config key 'foo'; valid keys here: "),
    (["--config", "demo", "--config.optimizer.lr=1"], "valid keys here: adam_form, b1, b2"),
    (["--config", "demo", "--config.task=stsb"],
     "unknown task 'stsb'; valid: rte, mrpc, cola, sst2, qnli, qqp, mnli"),
    (["--config", "demo", "--config.method=sgd"], "unknown method 'sgd'; valid: bertadam"),
    (["--config", "demo", "--config.failure_rule=strict"],
     "unknown config.failure_rule 'strict'; valid: majority, released"),
    (["--config", "rte_mixout", "--config.mixout.p=0"],
     "config.mixout.p must be > 0 for method 'mixout'"),
    (["--config", "demo", "--config.model=nope"], "unknown model 'nope'; valid: minilm-l6"),
    (["--config", "demo", "--config.layout=ragged"], "unknown layout 'ragged'"),
    (["--config", "demo", "--config.row_length_step=-32"],
     "config.row_length_step must be an int >= 0, got -32"),
    (["--config", "demo", "--config.resume_step=0"],  # the loop saves after a step, never at 0
     "config.resume_step must be an int > 0, got 0"),
    (["--config", "demo", "--config.gelu=tanh"], "unknown config.gelu 'tanh'; valid: erf, erfc"),
    (["--config", "demo", "--config.dropout_bits=philox"],
     "unknown config.dropout_bits 'philox'; valid: hash, threefry"),
    (["--config", "demo", "--config.optimizer.clip_norm=0"], "clip_norm (the CWGNC threshold) "
     "must be > 0, got 0.0"),
    (["--config", "demo", "--config.optimizer.clip_norm=-1"], "must be > 0"),
    (["--config", "demo", "--config.glue_dir=/no/such/glue"],
     "cannot read /no/such/glue/RTE/train.tsv"),
    (["--config", "demo", "--config.seed=abc"], "--config.seed=abc: expected an int"),
    (["--config", "demo", f"--config.seed={2**64}"],
     f"config.seed must be an int in [0, 4294967295], got {2**64}: jax.random.key takes ints "
     "in [-2**63, 2**63 - 1]"),
    (["--config", "demo", f"--config.seed={2**32}"], "keeps their low 32 bits"),
    (["--config", "demo", "--config.seed=-1"], "must be an int in [0, 4294967295], got -1"),
    (["--config", "demo", "--config.seed=True"], "must be an int in [0, 4294967295], got True"),
    (["--config", "demo", "--config.max_length=3"], "config.max_length must be > 3 for RTE: "
     "its examples hold 3 special tokens ([CLS], [SEP]) besides their text; got 3"),
    (["--config", "cola_cwgnc", "--config.max_length=2"], "config.max_length must be > 2 for "
     "CoLA"),
    (["--config", "demo", "--config.num_epochs=2.5"], "expected an int, got a float"),
    (["--config", "demo", "--config.keep_best=maybe"], "expected true or false"),
    (["--config", "demo", "--config.batch_size=0"], "config.batch_size must be an int > 0"),
    (["--config", "demo", "--config.mesh=4"], "'mesh' is a group; set one of its keys"),
    (["--config", "demo", "--bogus=1"], "unknown flag --bogus"),
    (["--config.seed=1"], "--config is required"),
    (["--config"], "--config needs a value"),
])
def test_bad_command_lines_name_the_culprit(args, message):
  with pytest.raises(ConfigError) as error:
    command_line.train_config(args)
  assert message in str(error.value)
  assert "\n" not in str(error.value)


def test_a_string_field_takes_none_as_its_text(monkeypatch):
  """'none' is a value of ``unfreezing.mode``: rte_gu with it is a plain 3-epoch run. In a
  field that is not a string, 'none' still unsets it (no global clip)."""
  monkeypatch.delenv("GLUE_DIR", raising=False)
  config, _ = command_line.train_config(
      ["--config", "rte_gu", "--config.unfreezing.mode=none", "--config.num_epochs=3"])
  assert (config.unfreezing.mode, config.num_epochs) == ("none", 3)
  assert unfreezing.num_epochs(config, 24) == 3
  assert unfreezing.stages(config, 24, 10) == [unfreezing.Stage(0, 0, 30, None)]
  config, _ = command_line.train_config(
      ["--config", "rte_adamw", "--config.optimizer.max_grad_norm=none"])
  assert config.optimizer.max_grad_norm is None


@pytest.mark.parametrize("override, message", [
    ("optimizer.b1=none", "config.optimizer.b1 must be a finite number, got None"),
    ("optimizer.b2=none", "config.optimizer.b2 must be a finite number, got None"),
    ("optimizer.warmup_fraction=none",
     "config.optimizer.warmup_fraction must be a finite number, got None"),
    ("optimizer.weight_decay=none",
     "config.optimizer.weight_decay must be a finite number, got None"),
    ("optimizer.max_grad_norm=abc",
     "config.optimizer.max_grad_norm must be a finite number, got 'abc'"),
    ("optimizer.bias_correction=none",
     "config.optimizer.bias_correction must be True or False, got None"),
    ("keep_best=none", "config.keep_best must be True or False, got None"),
    ("progress=null", "config.progress must be True or False, got None"),
    ("optimizer.decay_exclude=none", "config.optimizer.decay_exclude must be a tuple of regular "
     "expressions (strings), got None"),
    ("optimizer.decay_exclude=[1]", "config.optimizer.decay_exclude must be a tuple of regular "
     "expressions (strings), got (1,)"),
    ("optimizer.decay_exclude=['bias', '(']", "config.optimizer.decay_exclude holds the invalid "
     "regular expression '(' ("),  # then re.error's words
    ("model=none", "unknown model 'none'; valid: minilm-l6"),
])
def test_values_of_the_wrong_type_are_named_in_one_line(override, message):
  """None or a wrong type is a ConfigError naming the key (train.py: exit 2, one line), not a
  TypeError later, nor a None switch acting as False (BertAdam instead of CWGNC)."""
  with pytest.raises(ConfigError) as error:
    _cli(f"--config.{override}")
  assert str(error.value).startswith(message)
  assert "\n" not in str(error.value)


def test_a_run_directory_from_before_a_removed_key_resumes(tmp_path):
  """A config.json holding ``optimizer.released_code`` (removed: nothing read it) resumes, with
  either value it was written with; any other difference is still refused."""
  from cwgnc_jax.training import rundir  # pylint: disable=import-outside-toplevel
  for method, released in (("cwgnc_released", True), ("cwgnc", False)):
    config = config_lib.apply_overrides(config_lib.load("rte_cwgnc"), [("method", method)])
    assert "released_code" not in config.optimizer
    older = identity.run_identity(config)
    older["optimizer"]["released_code"] = released
    (tmp_path / "config.json").write_text(json.dumps(older))
    rundir.check_run_dir(tmp_path, config)
    older["optimizer"]["eps"] = 1e-7
    (tmp_path / "config.json").write_text(json.dumps(older))
    with pytest.raises(ConfigError, match=r"differs in optimizer\.eps\)"):
      rundir.check_run_dir(tmp_path, config)


def test_the_seed_range_is_where_jax_keys_are_distinct():
  import jax  # pylint: disable=import-outside-toplevel
  config, _ = _cli(f"--config.seed={config_lib.MAX_SEED}")
  assert config.seed == 2**32 - 1
  key = lambda seed: jax.random.key_data(jax.random.key(seed)).tolist()
  assert key(config_lib.MAX_SEED) != key(0)
  if not jax.config.jax_enable_x64:  # the default: one seed past the range repeats seed 0
    assert key(config_lib.MAX_SEED + 1) == key(0)
  with pytest.raises(OverflowError):
    jax.random.key(2**63)


def test_glue_paths_of_the_wrong_kind_are_named(tmp_path):
  (tmp_path / "RTE" / "train.tsv").mkdir(parents=True)
  with pytest.raises(ConfigError) as error:
    command_line.train_config(["--config", "demo", f"--config.glue_dir={tmp_path}"])
  assert str(error.value).startswith(f"{tmp_path / 'RTE' / 'train.tsv'} is a directory, not a "
                                     "file: the GLUE folder")
  (tmp_path / "glue").write_text("")
  with pytest.raises(ConfigError, match=f"the GLUE folder {tmp_path / 'glue'} is a file, not"):
    command_line.train_config(["--config", "demo", f"--config.glue_dir={tmp_path / 'glue'}"])


def test_a_glue_folder_under_home_is_found(tmp_path, monkeypatch):
  for split in ("train", "dev"):
    (tmp_path / "glue" / "RTE").mkdir(parents=True, exist_ok=True)
    (tmp_path / "glue" / "RTE" / f"{split}.tsv").write_text("")
  monkeypatch.setenv("HOME", str(tmp_path))
  config, _ = _cli("--config.glue_dir=~/glue")
  assert config.glue_dir == str(tmp_path / "glue")  # what config.json records


def test_check_devices_and_mesh_shape():
  config = config_lib.load("demo")
  config_lib.check_devices(config, 8)
  assert config_lib.mesh_shape(config, 8) == (8, 1)
  config.mesh.fsdp = 2
  assert config_lib.mesh_shape(config, 8) == (4, 2)
  config.mesh.fsdp = 3
  with pytest.raises(ConfigError, match="does not fit the 8 devices"):
    config_lib.mesh_shape(config, 8)
  config.mesh.fsdp = 1
  config.batch_size = 12
  with pytest.raises(ConfigError, match=r"config.batch_size=12 is not divisible by the 8 devices"):
    config_lib.check_devices(config, 8)


def test_run_identity_leaves_out_operational_keys():
  config = config_lib.load("demo")
  other = config_lib.apply_overrides(config, [("resume_step", "3"), ("checkpoint_every", "7"),
                                              ("mesh.fsdp", "2"), ("progress", "false"),
                                              ("failure_rule", "released")])
  assert identity.run_identity(config) == identity.run_identity(other)
  seeded = config_lib.apply_overrides(config, [("seed", "2")])
  assert identity.run_identity(config) != identity.run_identity(seeded)
