"""CoLA, Table 1 row. Mosbach et al. (2020): AdamW with bias correction, 20 epochs. They kept
the best of ~3 dev evaluations per epoch; here the final model is the result unless
--config.keep_best=true --config.evals_per_epoch=3.
"""

from configs import base


def get_config():
  return base.table1("cola", "mosbach")
