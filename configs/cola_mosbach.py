"""CoLA, Table 1 row. Mosbach et al. (2020): AdamW with bias correction, 20 epochs, and
the result is the best of 3 dev evaluations per epoch (their code: about 3, with
early_stopping). --config.keep_best=false --config.evals_per_epoch=1 evaluates the final model
instead (SPEC's default protocol).
"""

from configs import base


def get_config():
  return base.table1("cola", "mosbach")
