"""COLA, Table 1 row. Lee et al. (2019), Mixout: the Mosbach et al. row (AdamW with bias
correction, 20 epochs) with every dense layer mixed toward its pretrained weight with
p = 0.9 (--config.mixout.p=0.7 or 0.8 for the other values Lee et al. report) and every
dropout rate 0; the reference implementation's gradient (--config.mixout.gradient=autodiff
for the exact derivative).
"""

from configs import base


def get_config():
  return base.table1("cola", "mixout")
