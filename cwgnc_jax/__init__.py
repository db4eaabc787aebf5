"""cwgnc_jax: stable fine-tuning of pretrained Transformers in JAX.

Component-wise gradient norm clipping (Yang and Ma), the Table 1 optimizer recipes,
gradual unfreezing and the many-seed stability protocol, on Flax NNX BERT.

``import cwgnc_jax`` loads jax, optax and numpy only (``pip install cwgnc_jax``): the
transform, the optimizers and the Table 1 records below. Optimizer configs
(``optimizer_config``, ``recipe``) are ``ml_collections`` ConfigDicts, and the model, data,
training loop, study and report need the rest of the ``train`` extra
(``pip install 'cwgnc_jax[train]'``); those modules import it themselves.
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
)
from cwgnc_jax.adam import scale_by_adam_no_bias_correction, scale_by_adam_transformers
from cwgnc_jax.methods import METHODS, recipe

# The public API, as README.md lists it ("CWGNC in your own Optax chain").
__all__ = [
    # The transform, its state and its component groupings.
    "clip_by_component_norm", "component_norm_stats", "ComponentClipState",
    "tensor_components", "layer_components", "qkv_components",
    # Parameter paths, for label functions of your own.
    "path_to_str", "tree_paths", "layer_of",
    # The optimizers.
    "cwgnc", "adamw", "bert_adam", "scale_by_adam_transformers",
    "scale_by_adam_no_bias_correction", "decay_mask", "linear_warmup_decay",
    # The Table 1 rows and the config-driven builder.
    "METHODS", "recipe", "optimizer_config", "build_optimizer",
]
