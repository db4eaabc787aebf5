"""RTE, gradual unfreezing (the paper's section 2, Fig. 1): iteration k trains the head and
the top k + 1 encoder layers for 3 epochs, the embeddings last (L + 1 iterations: 25 for
BERT-large); parameters, and the Adam moments of tensors already training, carry over.
AdamW with bias correction, as the paper's full fine-tuning baseline.
"""

from configs import base


def get_config():
  return base.gradual_unfreezing("rte", "gu")
