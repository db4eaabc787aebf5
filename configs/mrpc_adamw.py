"""MRPC, Table 1 row. Devlin et al. + bias correction: AdamW, otherwise as BertAdam (3 epochs).
"""

from configs import base


def get_config():
  return base.table1("mrpc", "adamw")
