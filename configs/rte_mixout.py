"""RTE, Table 1 row. Lee et al. (2019), Mixout: the Mosbach et al. row with every dense layer
mixed toward its pretrained weight, p = 0.9 (the row and its options: ``cwgnc_jax.methods``).
"""

from configs import base


def get_config():
  return base.table1("rte", "mixout")
