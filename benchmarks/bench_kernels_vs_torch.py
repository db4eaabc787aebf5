"""The step's kernels in XLA:CPU (through JAX) against PyTorch's, on the same arrays, side by side.

``bench_vs_torch.py`` compares whole training steps. This compares the kernels a MiniLM-L6
step is made of, at the shapes of a packed RTE batch (``--rows`` rows of 128 tokens, hidden
384, feed-forward 1536, 12 heads of 32), so a host's ratio can be read off its parts:

  dense      the layers' matmuls, forward and both backward forms: ``x W`` (``tk,kn->tn``),
             the input gradient ``dy W^T`` (``tn,kn->tk``) and the weight gradient ``x^T dy``
             (``tk,tn->kn``), for the [384, 1536], [1536, 384] and [384, 384] kernels
  attention  the per-head batched matmuls of one layer, [rows, 12] batches: scores ``q k^T``,
             context ``p v``, and the backward pass's ``p^T do`` (dV) and ``ds k`` (dQ); both
             frameworks get the same [rows, heads, tokens, 32] arrays, contiguous
  pointwise  exact GELU on the [tokens, 1536] feed-forward activation, the model's
             (``bert.gelu``, PyTorch's erf form) and ``jax.nn.gelu``'s erfc form, and
             LayerNorm on [tokens, 384]
  bfloat16   a whole dense layer in bfloat16, ``y = x W + b`` and its three gradients, for the
             same three kernels: the model's (``bert.low_precision_dense``), ``nnx.Linear``'s
             (plain bfloat16 ops through autodiff, as before the model had its own), and
             PyTorch's (the same four ops on bfloat16 tensors, as its autograd runs them)

JAX runs each kernel as its own jitted function, PyTorch as the eager op under ``no_grad``
with ``torch.set_num_threads`` set to the cores JAX sees. The two alternate, ``--repeats``
calls at a time over ``--rounds`` rounds (the order swapped every round), and the median
call is reported, with the rate in GFLOP/s for the matmuls. float32 but for the bfloat16
group.

  PYTHONPATH=. /path/venv/bin/python benchmarks/bench_kernels_vs_torch.py     # the venv of
                                                    # benchmarks/requirements-bench.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from host import describe, usable_cores

from cwgnc_jax.models import bert

try:
  import torch  # pylint: disable=wrong-import-position
except ImportError as error:  # pragma: no cover - a benchmark-only dependency
  sys.exit(f"bench_kernels_vs_torch needs PyTorch ({error}): pip install -r "
           "benchmarks/requirements-bench.txt (see bench_vs_torch.py)")

HIDDEN, INNER, HEADS, LENGTH = 384, 1536, 12, 128

Kernel = tuple[str, float, Callable[[], None], Callable[[], None]]  # name, FLOPs, jax, torch


def _pair(shapes: list[tuple[int, ...]], seed: int,
          bfloat16: bool = False) -> tuple[list[jax.Array], list[torch.Tensor]]:
  """The same random float32 (or bfloat16) arrays for both frameworks."""
  rng = np.random.default_rng(seed)
  host = [rng.standard_normal(shape, np.float32) for shape in shapes]
  jax_dtype, torch_dtype = ((jnp.bfloat16, torch.bfloat16) if bfloat16
                            else (jnp.float32, torch.float32))
  return ([jnp.asarray(x, jax_dtype) for x in host],
          [torch.from_numpy(x.copy()).to(torch_dtype) for x in host])


def _kernel(name: str, flops: float, jax_fn: Callable, torch_fn: Callable,
            shapes: list[tuple[int, ...]], seed: int, bfloat16: bool = False) -> Kernel:
  """A kernel on ``shapes`` (random, the same for both), its jitted JAX function compiled."""
  jax_args, torch_args = _pair(shapes, seed, bfloat16)
  jitted = jax.jit(jax_fn)
  jax.block_until_ready(jitted(*jax_args))  # compile
  def run_jax():
    jax.block_until_ready(jitted(*jax_args))
  def run_torch():
    with torch.no_grad():
      torch_fn(*torch_args)
  return name, flops, run_jax, run_torch


def kernels(rows: int) -> list[Kernel]:
  """Every kernel of the module docstring, for ``rows`` packed rows of 128 tokens."""
  tokens, batches = rows * LENGTH, (rows, HEADS)
  out: list[Kernel] = []
  for k, n in ((HIDDEN, INNER), (INNER, HIDDEN), (HIDDEN, HIDDEN)):
    flops = 2.0 * tokens * k * n
    out += [
        _kernel(f"dense {k}x{n} x W", flops, jnp.matmul, torch.matmul,
                [(tokens, k), (k, n)], 0),
        _kernel(f"dense {k}x{n} dy W^T", flops, lambda dy, w: dy @ w.T,
                lambda dy, w: dy @ w.T, [(tokens, n), (k, n)], 1),
        _kernel(f"dense {k}x{n} x^T dy", flops, lambda x, dy: x.T @ dy,
                lambda x, dy: x.T @ dy, [(tokens, k), (tokens, n)], 2),
    ]
  head_dim = HIDDEN // HEADS
  flops = 2.0 * rows * HEADS * LENGTH * LENGTH * head_dim
  qkv, probs = (*batches, LENGTH, head_dim), (*batches, LENGTH, LENGTH)
  out += [
      _kernel("attention q k^T", flops, lambda q, k: q @ jnp.swapaxes(k, -1, -2),
              lambda q, k: q @ k.transpose(-1, -2), [qkv, qkv], 3),
      _kernel("attention p v", flops, jnp.matmul, torch.matmul,
              [probs, qkv], 4),
      _kernel("attention p^T do (dV)", flops, lambda p, do: jnp.swapaxes(p, -1, -2) @ do,
              lambda p, do: p.transpose(-1, -2) @ do,
              [probs, qkv], 5),
      _kernel("attention ds k (dQ)", flops, jnp.matmul, torch.matmul,
              [probs, qkv], 6),
      _kernel("gelu (erf) fwd", 0.0, bert.gelu, torch.nn.functional.gelu, [(tokens, INNER)], 7),
      _kernel("gelu (erfc: jax.nn.gelu) fwd", 0.0,
              lambda x: jax.nn.gelu(x, approximate=False), torch.nn.functional.gelu,
              [(tokens, INNER)], 7),
      _kernel("layernorm fwd", 0.0,
              lambda x: (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True)
                                                                       + 1e-12),
              lambda x: torch.nn.functional.layer_norm(x, (HIDDEN,), eps=1e-12),
              [(tokens, HIDDEN)], 8),
  ]
  for k, n in ((HIDDEN, INNER), (INNER, HIDDEN), (HIDDEN, HIDDEN)):
    shapes, flops = [(tokens, k), (k, n), (n,), (tokens, n)], 3 * 2.0 * tokens * k * n
    out += [
        _kernel(f"bfloat16 layer {k}x{n}: model", flops, _layer_and_gradients(
            bert.low_precision_dense), _torch_layer_and_gradients, shapes, 9, bfloat16=True),
        _kernel(f"bfloat16 layer {k}x{n}: nnx.Linear's", flops, _layer_and_gradients(
            lambda x, w, b: x @ w + b), _torch_layer_and_gradients, shapes, 9, bfloat16=True),
    ]
  return out


def _layer_and_gradients(layer: Callable) -> Callable:
  """``(x, w, b, dy) -> (y, dx, dw, db)`` of a dense layer, by autodiff."""
  def run(x, w, b, dy):
    y, vjp = jax.vjp(layer, x, w, b)
    return y, *vjp(dy)
  return run


def _torch_layer_and_gradients(x, w, b, dy):
  """What PyTorch's autograd computes for ``F.linear`` (its weight is [out, in]; the products
  are the same with ``w`` [in, out] read in place)."""
  return x @ w + b, dy @ w.T, x.T @ dy, dy.sum(0)


def measure(kernel: Kernel, rounds: int, repeats: int) -> dict[str, float]:
  """Median seconds per call of each framework's kernel, alternating ``repeats`` calls."""
  _, _, run_jax, run_torch = kernel
  run_torch()  # warm up
  times = {"jax": [], "torch": []}
  order = [("jax", run_jax), ("torch", run_torch)]
  for r in range(rounds):
    for name, run in order if r % 2 == 0 else order[::-1]:
      for _ in range(repeats):
        start = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--rows", type=int, default=10,
                      help="packed rows of 128 tokens (10: a typical RTE batch of 16)")
  parser.add_argument("--rounds", type=int, default=6, help="alternations of the frameworks")
  parser.add_argument("--repeats", type=int, default=10, help="calls per turn")
  args = parser.parse_args(argv)
  torch.set_num_threads(usable_cores())  # the cores XLA:CPU's pool uses
  print(f"{describe()}; jax {jax.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {args.rows} rows of "
        f"{LENGTH} tokens", flush=True)
  rows = []
  print("| kernel | jax ms | torch ms | jax / torch | jax GFLOP/s | torch GFLOP/s |")
  print("|---|---|---|---|---|---|")
  for kernel in kernels(args.rows):
    name, flops = kernel[:2]
    seconds = measure(kernel, args.rounds, args.repeats)
    rate = lambda s, f=flops: f"{f / s / 1e9:.0f}" if f else ""
    print(f"| {name} | {seconds['jax'] * 1e3:.3f} | {seconds['torch'] * 1e3:.3f} | "
          f"{seconds['jax'] / seconds['torch']:.2f}x | {rate(seconds['jax'])} | "
          f"{rate(seconds['torch'])} |", flush=True)
    rows.append({"kernel": name, "flops": flops, **seconds})
  groups = {"dense": lambda name: name.startswith("dense"),
            "attention": lambda name: name.startswith("attention"),
            "bfloat16 layers, model": lambda name: name.endswith(": model"),
            "bfloat16 layers, nnx.Linear's": lambda name: name.endswith("nnx.Linear's")}
  for group, member in groups.items():
    part = [r for r in rows if member(r["kernel"])]
    jax_s, torch_s = sum(r["jax"] for r in part), sum(r["torch"] for r in part)
    print(f"{group}: jax {jax_s * 1e3:.2f} ms, torch {torch_s * 1e3:.2f} ms per set of calls: "
          f"{jax_s / torch_s:.2f}x")
  print(json.dumps(rows))


if __name__ == "__main__":
  main(sys.argv[1:])
