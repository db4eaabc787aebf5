"""Flax NNX BERT for sequence classification (bert), its pretrained weights (loading) and
Mixout's dense layer (mixout)."""

from cwgnc_jax.models.bert import (BertConfig, BertForSequenceClassification, BertOutputs,
                                   Linear, apply_fn, attention_mask, split_params, tiny_config)
from cwgnc_jax.models.loading import (MINILM_NAME, MINILM_SHA256, from_pretrained, load_config,
                                      load_tokenizer, read_bert_weights, resolve_model_dir,
                                      verify_sha256)
from cwgnc_jax.models.mixout import MixoutLinear, MixoutTarget
