"""Parameter path strings and the layer map that masks, labels and diagnostics share."""

import jax
import jax.numpy as jnp

from cwgnc_jax import paths


def _tree():
  leaf = jnp.zeros(1)
  return {
      "embeddings": {"word_embeddings": {"embedding": leaf}},
      "encoder": {"layers": {0: {"attention": {"query": {"kernel": leaf}}},
                             11: {"output": {"layer_norm": {"bias": leaf}}}}},
      "pooler": {"kernel": leaf},
      "classifier": {"bias": leaf},
  }


def test_tree_paths_are_slash_joined_keys():
  names = sorted(jax.tree_util.tree_leaves(paths.tree_paths(_tree())))
  assert names == [
      "classifier/bias",
      "embeddings/word_embeddings/embedding",
      "encoder/layers/0/attention/query/kernel",
      "encoder/layers/11/output/layer_norm/bias",
      "pooler/kernel",
  ]


def test_layer_of_maps_embeddings_layers_and_head():
  layers = jax.tree_util.tree_leaves(paths.map_paths(paths.layer_of, _tree()))
  assert sorted(layers) == ["embeddings", "encoder/layers/0", "encoder/layers/11", "head", "head"]
  assert paths.layer_index("encoder/layers/11/output/kernel") == 11
  assert paths.layer_index("embeddings/layer_norm/scale") is None

