"""Run identity: what a run directory is judged by.

A run directory's ``config.json`` holds its config's ``run_identity``: the config without the
keys that change how a run is executed or saved, not what it computes (``OPERATIONAL_KEYS``).
A config may resume that directory when ``differences`` finds none.

Runs made before a key existed were trained with that key's earlier value, declared here:
a single key in ``LATER_KEYS``, a whole group in ``LATER_GROUPS``. A key removed since is in
``REMOVED_KEYS``. **A new field of the config that enters the identity declares its earlier
default here, in one line** (``tests/test_identity.py`` fails until it does): without it,
every existing run directory would be refused as another config's run.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable, Mapping

import ml_collections

# Fields that change how a run is executed or saved, not what it computes: a run directory
# may be resumed with other values of these.
OPERATIONAL_KEYS = ("resume_step", "checkpoint_every", "keep_checkpoints", "log_every",
                    "progress", "mesh", "distributed", "fsdp_min_size", "cache_dir",
                    "compilation_cache", "diagnostics_every", "failure_rule")

# Groups of keys added after runs were made, each with the key and value that turn it off: a
# config.json written without the group was trained with it off (the same computation), so a
# run directory of that age still resumes under a config that leaves it off.
LATER_GROUPS = {"unfreezing": ("mode", "none"), "mixout": ("p", 0.0)}

# Keys removed since runs were made: an older config.json or summary.json holds them, but
# nothing ever read them (``optimizer.released_code`` marked the 'cwgnc_released' recipe,
# whose other fields are what it computes). Readers of stored identities drop them
# (``without_removed_keys``), so such a run resumes and its group compares as it did.
REMOVED_KEYS = ("optimizer.released_code",)

# Keys added after runs were made, with the value a config.json without them was trained
# with: before ``optimizer.adam_form`` existed, bias-corrected Adam was optax's; before
# ``row_length_step``, packed rows were always max_length long; before ``dropout_bits``,
# dropout masks were jax.random.bernoulli's; before ``cls_only_last_layer``, the last layer
# computed every token (the same logits but for float rounding); before ``gelu``, the GELU was
# jax.nn.gelu's erfc form (the same function but for float rounding).
LATER_KEYS = {
    "optimizer.adam_form": "optax",
    "row_length_step": 0,
    "dropout_bits": "threefry",
    "cls_only_last_layer": False,
    "gelu": "erfc",
}
# Where a later key changes nothing, given a flat run identity ("group.key" -> value), a run
# directory resumes whatever the key's value: BertAdam (no bias correction) computes the same
# under either Adam form, padded rows are max_length long either way, and Mixout sets every
# dropout rate to 0. A key not listed (cls_only_last_layer, gelu: rounding differs in every
# config) always matters.
LATER_KEYS_MOOT: dict[str, Callable[[dict[str, Any]], bool]] = {
    "optimizer.adam_form": lambda flat: not flat.get("optimizer.bias_correction"),
    "row_length_step": lambda flat: flat.get("layout") == "padded",
    "dropout_bits": lambda flat: flat.get("mixout.p", 0.0) > 0,
}


def run_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as a dict without the operational keys: what a resumed run must match."""
  values = config.to_dict()
  for key in OPERATIONAL_KEYS:
    values.pop(key, None)
  return values


def later_key(config: ml_collections.ConfigDict | Mapping[str, Any], key: str) -> Any:
  """``config``'s value of a ``LATER_KEYS`` key (dotted), or, where the config predates the
  key, the value its runs were trained with."""
  *groups, name = key.split(".")
  for group in groups:
    config = config.get(group, {})
  return config.get(name, LATER_KEYS[key])


def without_removed_keys(identity: dict[str, Any]) -> dict[str, Any]:
  """A copy of a stored run identity (nested, as config.json holds it) without
  ``REMOVED_KEYS``."""
  identity = copy.deepcopy(identity)
  for key in REMOVED_KEYS:
    *groups, name = key.split(".")
    values = identity
    for group in groups:
      values = values.get(group) if isinstance(values, dict) else None
    if isinstance(values, dict):
      values.pop(name, None)
  return identity


def flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested identity as ``{"group.key": value}``."""
  leaves = {}
  for key, value in values.items():
    if isinstance(value, Mapping):
      leaves.update(flat(value, f"{prefix}{key}."))
    else:
      leaves[f"{prefix}{key}"] = value
  return leaves


def differences(stored: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """The dotted keys (sorted) in which a stored identity (a run directory's config.json)
  differs from ``config``'s, each stored key missing for its age read with its earlier value.
  Empty: ``config`` resumes that run."""
  stored = without_removed_keys(stored)
  current = json.loads(json.dumps(run_identity(config)))  # tuples as config.json has them
  for group, (key, off) in LATER_GROUPS.items():
    if group not in stored and current.get(group, {}).get(key) == off:
      del current[group]
  stored, current = flat(stored), flat(current)
  for key, value in LATER_KEYS.items():
    stored.setdefault(key, value)
    moot = LATER_KEYS_MOOT.get(key)
    if moot and moot(current):
      stored.pop(key)
      current.pop(key, None)
  return sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
