"""The rows of the paper's Table 1: one record per method, read by everything that names one.

A method is more than its optimizer: Mosbach et al. train 20 epochs and keep the best of three
dev evaluations per epoch; Lee et al. add Mixout to that row; CWGNC is defined by its clip.
Each :class:`Method` holds the whole row (SPEC section 2), and every part of the project reads
it from here: the optimizer config (:func:`recipe`), the training config
(:func:`apply` sets the optimizer, epochs, evaluation and Mixout p together, so that
``--config.method=mosbach`` brings Mosbach's 20 epochs and best-of-evaluations, not only his
optimizer), validation, and the report's row names and order.

The optimizer fields of a row are those that differ from Devlin et al.'s BertAdam
(``optimizers.optimizer_config``): learning rate 2e-5, eps 1e-6, weight decay 0.01 off biases
and LayerNorm, warmup over 10% of the steps then linear decay.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from cwgnc_jax import optimizers

if TYPE_CHECKING:  # configs are the train extra's: optimizers.optimizer_config imports it
  import ml_collections


@dataclasses.dataclass(frozen=True)
class Method:
  """One Table 1 row.

  Attributes:
    name: the config value (``config.method``), e.g. 'mosbach'.
    display_name: the row name in reports.
    optimizer: optimizer fields that differ from Devlin et al.'s (``optimizer_config``).
    num_epochs: training epochs.
    evals_per_epoch: dev evaluations per epoch (the last at the epoch's end).
    keep_best: the result is the best dev evaluation (Mosbach et al.'s ``early_stopping``),
      not the final model's.
    mixout_p: Mixout probability (Lee et al.); 0 = plain dropout.
    clips_components: the method is CWGNC (component-wise clipping is what it is about).
  """
  name: str
  display_name: str
  optimizer: Mapping[str, Any]
  num_epochs: int
  evals_per_epoch: int = 1
  keep_best: bool = False
  mixout_p: float = 0.0
  clips_components: bool = False


_ADAMW = MappingProxyType({"bias_correction": True, "max_grad_norm": 1.0})
_CWGNC = MappingProxyType({"bias_correction": True, "clip_norm": 0.05})

# In the report's row order.
METHODS: Mapping[str, Method] = MappingProxyType({m.name: m for m in (
    Method("bertadam", "Devlin et al. (BertAdam)", {"max_grad_norm": 1.0}, num_epochs=3),
    Method("adamw", "+ bias correction (AdamW)", _ADAMW, num_epochs=3),
    # Mosbach et al.'s row (early_stopping, eval_logging_steps: ~3 evaluations per epoch)
    # with every dense layer mixed toward its pretrained weight and every dropout rate 0
    # (SPEC section 2: p 0.7, 0.8 or 0.9, unverified; --config.mixout.p sets the others), by
    # the reference implementation's gradient (--config.mixout.gradient=autodiff: the exact
    # derivative). --config.keep_best=false --config.evals_per_epoch=1 evaluates the final
    # model instead (SPEC's default protocol).
    Method("mixout", "Lee et al. (Mixout)", _ADAMW, num_epochs=20, evals_per_epoch=3,
           keep_best=True, mixout_p=0.9),
    Method("mosbach", "Mosbach et al.", _ADAMW, num_epochs=20, evals_per_epoch=3,
           keep_best=True),
    Method("cwgnc", "CWGNC", _CWGNC, num_epochs=5, clips_components=True),
    # The authors' released script: no warmup, no weight decay, eps 1e-8, 3 epochs.
    Method("cwgnc_released", "CWGNC (released code)",
           {**_CWGNC, "warmup_fraction": 0.0, "weight_decay": 0.0, "eps": 1e-8},
           num_epochs=3, clips_components=True),
)})
NAMES = tuple(METHODS)
# The paper's Table 1, in its row order (the released-code variant is not one of its rows).
TABLE1 = ("bertadam", "adamw", "mixout", "mosbach", "cwgnc")


def get(name: str) -> Method:
  """The method called ``name``; ValueError naming the valid ones otherwise."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; valid: {', '.join(NAMES)}")
  return METHODS[name]


def is_cwgnc(name: str) -> bool:
  """Is ``name`` a CWGNC method? (False for names this version does not know.)"""
  return name in METHODS and METHODS[name].clips_components


def recipe(name: str) -> ml_collections.ConfigDict:
  """The optimizer config of a Table 1 row, for ``optimizers.build_optimizer``."""
  return optimizers.optimizer_config(**get(name).optimizer)


def apply(config: ml_collections.ConfigDict, name: str) -> None:
  """Sets method ``name``'s whole row on a training config: ``method``, ``optimizer``,
  ``num_epochs`` (left None under gradual unfreezing, which counts epochs per iteration),
  ``evals_per_epoch``, ``keep_best`` and ``mixout.p``."""
  method = get(name)
  config.method = name
  config.optimizer = recipe(name)
  if config.unfreezing.mode == "none":
    config.num_epochs = method.num_epochs
  config.evals_per_epoch = method.evals_per_epoch
  config.keep_best = method.keep_best
  config.mixout.p = method.mixout_p
