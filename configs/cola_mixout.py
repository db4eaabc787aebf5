"""CoLA, Table 1 row. Lee et al. (2019), Mixout: the Mosbach et al. row (AdamW with bias
correction, 20 epochs, the best of 3 dev evaluations per epoch) with every dense layer mixed
toward its pretrained weight with p = 0.9 (--config.mixout.p=0.7 or 0.8 for the other values
Lee et al. report) and every dropout rate 0; the reference implementation's gradient
(--config.mixout.gradient=autodiff for the exact derivative). --config.keep_best=false
--config.evals_per_epoch=1 evaluates the final model instead (SPEC's default protocol).
"""

from configs import base


def get_config():
  return base.table1("cola", "mixout")
