"""CoLA, Table 1 row. CWGNC (the paper): AdamW with bias correction on gradients clipped per
tensor to L2 norm 0.05, no global clip, 5 epochs.
"""

from configs import base


def get_config():
  return base.table1("cola", "cwgnc")
