"""Cost of the component-wise clip inside one jitted training step.

Times a full step (forward, backward, optimizer update) with the paper's CWGNC optimizer
(``recipe('cwgnc')``: per-tensor clip, then AdamW) and with the same optimizer without the
clip (``clip_norm=None``), alternating the two (order swapped every round) so that load
from other processes hits both alike. Reports wall and CPU-time medians and minima, the
overhead ratios (of medians, of minima, median of per-round pairs), and two cross-checks
that do not depend on the load of a shared machine: XLA's cost analysis of the two compiled
steps (flops, bytes accessed), and the time of the per-component norms alone (the only
extra pass: the rescale fuses into Adam's elementwise update) and of the whole clip alone
(which also writes a clipped copy of every gradient).

Run from the repository root (``pip install -e .`` or ``PYTHONPATH=.``).

  python benchmarks/bench_clipping.py                    # real MiniLM-L6 if cwgnc_jax.models exists
  python benchmarks/bench_clipping.py --model synthetic  # BERT-shaped tree (12 x 768 by default)
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cwgnc_jax import build_optimizer, clip_by_component_norm, recipe
from cwgnc_jax.models import bert


# -- A functional BERT on a parameter tree with the contract's paths (synthetic mode). ---


def synthetic_params(key, layers, hidden, vocab=30522, max_positions=512, num_labels=2):
  """A randomly initialised BERT-shaped parameter tree (contract paths, Flax [in, out])."""
  keys = iter(jax.random.split(key, 8 * layers + 8))
  normal = lambda *shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)
  dense = lambda n_in, n_out: {"kernel": normal(n_in, n_out), "bias": jnp.zeros(n_out)}
  layer_norm = lambda: {"scale": jnp.ones(hidden), "bias": jnp.zeros(hidden)}
  layer = lambda: {
      "attention": {"query": dense(hidden, hidden), "key": dense(hidden, hidden),
                    "value": dense(hidden, hidden), "output": dense(hidden, hidden),
                    "layer_norm": layer_norm()},
      "intermediate": dense(hidden, 4 * hidden),
      "output": {**dense(4 * hidden, hidden), "layer_norm": layer_norm()},
  }
  return {
      "embeddings": {"word_embeddings": {"embedding": normal(vocab, hidden)},
                     "position_embeddings": {"embedding": normal(max_positions, hidden)},
                     "token_type_embeddings": {"embedding": normal(2, hidden)},
                     "layer_norm": layer_norm()},
      "encoder": {"layers": {i: layer() for i in range(layers)}},
      "pooler": dense(hidden, hidden),
      "classifier": dense(hidden, num_labels),
  }


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + 1e-12) * p["scale"] + p["bias"]


def _dense(x, p):
  return x @ p["kernel"] + p["bias"]


def synthetic_logits(params, inputs, head_dim=64):
  """BERT encoder forward (no dropout): every parameter takes part."""
  emb = params["embeddings"]
  ids = inputs["input_ids"]
  x = (emb["word_embeddings"]["embedding"][ids]
       + emb["position_embeddings"]["embedding"][inputs["position_ids"]]
       + emb["token_type_embeddings"]["embedding"][inputs["token_type_ids"]])
  x = _layer_norm(x, emb["layer_norm"])
  batch, length, hidden = x.shape
  heads = hidden // head_dim
  split = lambda t: t.reshape(batch, length, heads, head_dim)
  for i in sorted(params["encoder"]["layers"]):
    layer = params["encoder"]["layers"][i]
    att = layer["attention"]
    q, k, v = (split(_dense(x, att[name])) for name in ("query", "key", "value"))
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim), axis=-1)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, hidden)
    x = _layer_norm(x + _dense(context, att["output"]), att["layer_norm"])
    h = bert.gelu(_dense(x, layer["intermediate"]))
    x = _layer_norm(x + _dense(h, layer["output"]), layer["output"]["layer_norm"])
  pooled = jnp.tanh(_dense(x[:, 0], params["pooler"]))
  return _dense(pooled, params["classifier"])


# -- The two setups. ---------------------------------------------------------------------


def padded_batch(rng, batch, length, vocab):
  """One padded batch in the contract's layout (one example per row, no padding)."""
  return {
      "input_ids": rng.integers(1000, vocab, (batch, length), dtype=np.int32),
      "token_type_ids": np.zeros((batch, length), np.int32),
      "position_ids": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
      "segment_ids": np.ones((batch, length), np.int32),
      "cls_index": np.arange(batch, dtype=np.int32) * length,
      "labels": rng.integers(0, 2, (batch,), dtype=np.int32),
      "example_mask": np.ones((batch,), np.float32),
  }


def minilm_setup():
  from cwgnc_jax import models  # pylint: disable=import-outside-toplevel

  model = models.from_pretrained("minilm-l6", 2)
  graphdef, constants, params = models.split_params(model)
  apply = models.apply_fn(graphdef)
  vocab = params["embeddings"]["word_embeddings"]["embedding"].shape[0]
  return (params, (lambda p, inputs, key: apply(p, constants, inputs, dropout_rng=key)), vocab,
          "MiniLM-L6")


def synthetic_setup(layers, hidden):
  params = synthetic_params(jax.random.key(0), layers, hidden)
  vocab = params["embeddings"]["word_embeddings"]["embedding"].shape[0]
  return params, (lambda p, inputs, key: synthetic_logits(p, inputs)), vocab, (
      f"synthetic BERT {layers} x {hidden}")


def make_step(logits_fn, optimizer):
  def loss_fn(params, batch, key):
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "example_mask")}
    logits = logits_fn(params, inputs, key)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    return jnp.sum(losses * batch["example_mask"]) / jnp.sum(batch["example_mask"])

  @jax.jit
  def step(params, opt_state, batch, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step, jax.jit(jax.grad(loss_fn))


def xla_cost(jitted, *args):
  """XLA's static cost estimate (flops, bytes accessed) of a jitted function's program."""
  cost = jitted.lower(*args).compile().cost_analysis()
  return cost[0] if isinstance(cost, list) else cost


def time_call(fn, *args):
  """(wall seconds, CPU seconds of this process over all its threads) of one call.

  On a shared machine other processes stretch the wall time of whichever call they hit;
  the CPU time counts only the work this process does, so it is the steadier of the two.
  """
  wall, cpu = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - wall, time.process_time() - cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=("auto", "minilm", "synthetic"), default="auto")
  parser.add_argument("--layers", type=int, default=12, help="synthetic model layers")
  parser.add_argument("--hidden", type=int, default=768, help="synthetic model width")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=3)
  args = parser.parse_args()

  use_minilm = args.model == "minilm"
  if args.model == "auto":
    try:
      # pylint: disable-next=import-outside-toplevel,unused-import
      from cwgnc_jax.models import from_pretrained  # noqa: F401
      use_minilm = True
    except ImportError:
      use_minilm = False
  params, logits_fn, vocab, name = (
      minilm_setup() if use_minilm else synthetic_setup(args.layers, args.hidden))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_tensors = len(jax.tree.leaves(params))
  batch = padded_batch(np.random.default_rng(0), args.batch, args.length, vocab)
  key = jax.random.key(1)

  with_clip_config = recipe("cwgnc")
  without_clip_config = recipe("cwgnc")
  without_clip_config.clip_norm = None
  total_steps = 1000
  setups = {}
  for label, config in (("with clip", with_clip_config), ("without clip", without_clip_config)):
    optimizer = build_optimizer(config, total_steps)
    step, grad_fn = make_step(logits_fn, optimizer)
    setups[label] = (step, optimizer.init(params))
  grads = grad_fn(params, batch, key)
  clip = clip_by_component_norm(0.05)
  clip_update = jax.jit(clip.update)
  clip_state = clip.init(params)
  norms_only = jax.jit(lambda g: clip_update(g, clip_state)[1].norms)
  costs = {
      label: xla_cost(step, params, opt_state, batch, key)
      for label, (step, opt_state) in setups.items()
  }

  for _ in range(args.warmup):
    for step, opt_state in setups.values():
      time_call(step, params, opt_state, batch, key)
    time_call(clip_update, grads, clip_state)
    time_call(norms_only, grads)

  times = {label: [] for label in setups}
  clip_times, norm_times = [], []
  for round_index in range(args.rounds):
    order = list(setups) if round_index % 2 == 0 else list(reversed(setups))
    for label in order:
      step, opt_state = setups[label]
      # The step is timed from the same params every round; its outputs are discarded.
      times[label].append(time_call(step, params, opt_state, batch, key))
    clip_times.append(time_call(clip_update, grads, clip_state))
    norm_times.append(time_call(norms_only, grads))

  print(f"model: {name}, {n_params / 1e6:.1f}M parameters in {n_tensors} tensors; "
        f"batch {args.batch} x {args.length} tokens; {args.rounds} interleaved rounds "
        f"after {args.warmup} warmup; backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s)")
  with_clip, without_clip = times["with clip"], times["without clip"]
  for clock, index in (("wall", 0), ("CPU", 1)):
    a = [t[index] for t in with_clip]
    b = [t[index] for t in without_clip]
    paired = statistics.median(x / y for x, y in zip(a, b))
    print(f"  {clock:4s} time: with clip median {statistics.median(a) * 1e3:8.1f} ms "
          f"(min {min(a) * 1e3:8.1f}), without {statistics.median(b) * 1e3:8.1f} ms "
          f"(min {min(b) * 1e3:8.1f}); overhead: medians "
          f"{100 * (statistics.median(a) / statistics.median(b) - 1):+.2f} %, minima "
          f"{100 * (min(a) / min(b) - 1):+.2f} %, paired {100 * (paired - 1):+.2f} %")
  for quantity in ("flops", "bytes accessed"):
    ratio = costs["with clip"][quantity] / costs["without clip"][quantity]
    print(f"  XLA {quantity:14s}: with clip {costs['with clip'][quantity]:.4g}, without "
          f"{costs['without clip'][quantity]:.4g}; overhead {100 * (ratio - 1):+.2f} %")
  base = statistics.median(t[0] for t in without_clip)
  for label, values in (("component norms alone", norm_times), ("whole clip alone", clip_times)):
    value = statistics.median(t[0] for t in values)
    print(f"  {label:21s} (jitted): median wall {value * 1e3:7.2f} ms = "
          f"{100 * value / base:.2f} % of the step")


if __name__ == "__main__":
  main()
