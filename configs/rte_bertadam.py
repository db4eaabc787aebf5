"""RTE, Table 1 row. Devlin et al. (2019): BertAdam (Adam without bias correction), lr 2e-5
with 10% warmup and linear decay, weight decay 0.01, global-norm clip 1.0, 3 epochs.
"""

from configs import base


def get_config():
  return base.table1("rte", "bertadam")
