"""Run identity (``identity.py``): every key a run directory is judged by existed when the
first runs were made or declares the value those runs had, and the run directories kept
under docs/results/runs are judged as they were."""

import json
import shutil
from pathlib import Path

import pytest

from cwgnc_jax import config as config_lib
from cwgnc_jax import identity
from cwgnc_jax.training import rundir

RUNS = Path(__file__).resolve().parent.parent / "docs" / "results" / "runs"
# The oldest run directory kept: its config.json predates every key of identity.LATER_KEYS
# and every group of identity.LATER_GROUPS.
OLDEST = "lr_sweep/rte_adamw_lr2e-5_seed1"
# A Table 1 seed: its config.json has every key of today's identity.
NEWEST = "table1/cola_cwgnc__model=minilm-l6__optimizer.learning_rate=0.0001/seed_3"

# The identity's keys at the first runs (OLDEST's config.json less identity.REMOVED_KEYS),
# and those of each group of identity.LATER_GROUPS as it was added. Recorded once: a key
# added since belongs in identity.LATER_KEYS, not here.
FIRST_KEYS = {
    "batch_size", "dtype", "eval_batch_size", "evals_per_epoch", "glue_dir", "keep_best",
    "layout", "max_length", "method", "model", "num_epochs", "optimizer.b1", "optimizer.b2",
    "optimizer.bias_correction", "optimizer.clip_norm", "optimizer.components",
    "optimizer.decay_exclude", "optimizer.eps", "optimizer.learning_rate",
    "optimizer.max_grad_norm", "optimizer.warmup_fraction", "optimizer.weight_decay", "seed",
    "task", "train_limit",
}
GROUP_KEYS = {
    "unfreezing": {"unfreezing.epochs_per_iteration", "unfreezing.iterations",
                   "unfreezing.mode"},
    "mixout": {"mixout.gradient", "mixout.p"},
}


def _undeclared(config) -> list[str]:
  """The keys of ``config``'s identity that neither existed at the first runs nor declare
  their earlier value."""
  known = FIRST_KEYS.union(identity.LATER_KEYS, *GROUP_KEYS.values())
  return sorted(set(identity.flat(identity.run_identity(config))) - known)


@pytest.mark.parametrize("name", config_lib.available())
def test_every_identity_key_existed_at_the_first_runs_or_declares_its_earlier_value(name):
  """A field added to a config without its line in ``identity.LATER_KEYS`` would make every
  existing run directory refuse to resume: this fails first, naming the field."""
  assert _undeclared(config_lib.load(name)) == []


def test_a_field_added_without_its_earlier_value_is_caught():
  config = config_lib.load("rte_cwgnc")
  config.optimizer.new_field = 1.0
  config.new_switch = True
  assert _undeclared(config) == ["new_switch", "optimizer.new_field"]


def test_the_recorded_first_keys_are_the_oldest_run_directorys():
  """``FIRST_KEYS`` is what the oldest kept config.json holds (less the removed keys), the
  groups are what they were, and no later key or group was there already."""
  oldest = identity.flat(json.loads((RUNS / OLDEST / "config.json").read_text()))
  assert set(oldest) == FIRST_KEYS | set(identity.REMOVED_KEYS)
  assert set(GROUP_KEYS) == set(identity.LATER_GROUPS)
  assert not FIRST_KEYS & set(identity.LATER_KEYS)
  assert all(key.startswith(f"{group}.") for group, keys in GROUP_KEYS.items()
             for key in keys)


# Today's command of each run (experiments/lr_sweep.sh; the study of docs/results.md's
# Table 1), and the earlier values of every later key, as those runs were trained.
COMMANDS = {
    OLDEST: ("rte_adamw", [("model", "minilm-l6"), ("optimizer.learning_rate", "2e-5"),
                           ("num_epochs", "3"), ("seed", "1"), ("eval_batch_size", "64")]),
    NEWEST: ("cola_cwgnc", [("model", "minilm-l6"), ("optimizer.learning_rate", "0.0001"),
                            ("seed", "3")]),
}
EARLIER = [(key, value if isinstance(value, str) else json.dumps(value))
           for key, value in identity.LATER_KEYS.items()]
LATER = "cls_only_last_layer, dropout_bits, gelu, optimizer.adam_form, row_length_step"


@pytest.mark.parametrize("run, today, earlier", [
    (OLDEST, LATER, None),  # trained before every later key: resumes with their old values
    (NEWEST, None, LATER),  # trained with today's defaults
])
def test_kept_run_directories_are_judged_as_before(tmp_path, run, today, earlier):
  """A copy of a kept run directory is accepted or refused, naming the same keys, as it was
  before run identity had a module of its own (the verdicts were recorded then)."""
  workdir = tmp_path / "run"
  shutil.copytree(RUNS / run, workdir)
  before = {path.name: path.read_bytes() for path in workdir.iterdir()}
  name, overrides = COMMANDS[run]
  for extra, differ in (([], today), (EARLIER, earlier)):
    config = config_lib.apply_overrides(config_lib.load(name), overrides + extra)
    stored = json.loads((workdir / "config.json").read_text())
    assert ", ".join(identity.differences(stored, config)) == (differ or "")
    if differ is None:
      rundir.check_run_dir(workdir, config)
    else:
      with pytest.raises(config_lib.ConfigError, match=rf"differs in {differ}\)"):
        rundir.check_run_dir(workdir, config)
  assert {path.name: path.read_bytes() for path in workdir.iterdir()} == before
