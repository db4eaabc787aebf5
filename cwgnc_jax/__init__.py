"""cwgnc_jax: stable fine-tuning of pretrained Transformers in JAX.

Component-wise gradient norm clipping (Yang and Ma), the Table 1 optimizer recipes,
gradual unfreezing and the many-seed stability protocol, on Flax NNX BERT.
"""

from cwgnc_jax.paths import layer_of, path_to_str, tree_paths
from cwgnc_jax.clipping import (
    ComponentClipState,
    clip_by_component_norm,
    component_norm_stats,
    layer_components,
    qkv_components,
    tensor_components,
)
from cwgnc_jax.optimizers import (
    bert_adam,
    build_optimizer,
    cwgnc,
    decay_mask,
    adamw,
    linear_warmup_decay,
    optimizer_config,
    scale_by_adam_no_bias_correction,
    scale_by_adam_transformers,
)
from cwgnc_jax.methods import METHODS, recipe
