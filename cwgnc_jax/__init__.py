"""cwgnc_jax: stable fine-tuning of pretrained Transformers in JAX.

Component-wise gradient norm clipping (Yang and Ma), the Table 1 optimizer recipes,
gradual unfreezing and the many-seed stability protocol, on Flax NNX BERT.
"""

from cwgnc_jax.paths import layer_of, path_to_str, tree_paths
