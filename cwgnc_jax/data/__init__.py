"""GLUE data: tasks and loaders (glue), batches in the padded or packed layout (batching)."""

from cwgnc_jax.data.glue import (TASKS, Example, Task, TokenizedSplit, get_task, load_examples,
                                 load_tokenized, tokenize)
