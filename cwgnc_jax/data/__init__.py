"""GLUE data: loaders (glue; the tasks: ``cwgnc_jax.tasks``), batches in the padded or
packed layout (batching)."""

from cwgnc_jax.data.batching import (eval_batches, make_batch, packed_row_counts,
                                     packing_efficiency, padded_over_packed, steps_per_epoch,
                                     train_batches)
from cwgnc_jax.data.glue import Example, TokenizedSplit, load_examples, load_tokenized, tokenize
