"""Two forms of MiniLM's dense matmuls that did not pay, kept so the negative result reproduces.

  qkv:  the attention's query, key and value projections of [tokens, 384] as three
        [384, 384] matmuls (the model's form) or one [384, 1152] matmul of the concatenated
        kernels, forward and backward (input and kernel gradients) of a fixed linear loss.
  nt:   the feed-forward input's backward matmul, [tokens, 1536] x [384, 1536]^T, as XLA
        emits it (contracting both operands' last dimension) or after an explicit transpose
        kept by an optimization barrier (a copy, then an ordinary matmul).

Each pair is jitted, checked equal (or equal within float rounding), and timed interleaved.

  PYTHONPATH=. python benchmarks/bench_dense_forms.py [--tokens 1280] [--rounds 20] [--calls 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench_config_ab import interleaved  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position


def qkv_programs(tokens: int, hidden: int = 384) -> tuple[dict, tuple]:
  keys = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(keys[0], (tokens, hidden))
  kernels = [0.05 * jax.random.normal(k, (hidden, hidden)) for k in keys[1:4]]
  cotangent = jax.random.normal(keys[4], (tokens, 3 * hidden))
  forms = {"three": lambda x, ws: jnp.concatenate([x @ w for w in ws], -1),
           "fused": lambda x, ws: x @ jnp.concatenate(ws, 1)}
  programs = {name: jax.jit(jax.grad(lambda x, ws, f=f: jnp.sum(f(x, ws) * cotangent),
                                     argnums=(0, 1)))
              for name, f in forms.items()}
  return programs, (x, kernels)


def nt_programs(tokens: int, hidden: int = 384, inner: int = 1536) -> tuple[dict, tuple]:
  a = jax.random.normal(jax.random.key(0), (tokens, inner))
  kernel = jax.random.normal(jax.random.key(1), (hidden, inner))
  contract_last = (((1,), (1,)), ((), ()))
  programs = {"as emitted": jax.jit(lambda a, b: jax.lax.dot_general(a, b, contract_last)),
              "transposed": jax.jit(lambda a, b: a @ jax.lax.optimization_barrier(b.T))}
  return programs, (a, kernel)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("--tokens", type=int, default=1280, help="token slots (RTE: 10 x 128)")
  parser.add_argument("--rounds", type=int, default=20, help="timed rounds of each")
  parser.add_argument("--calls", type=int, default=5, help="calls per timed round")
  args = parser.parse_args(argv)
  for title, (programs, inputs) in (("qkv", qkv_programs(args.tokens)),
                                    ("nt", nt_programs(args.tokens))):
    first, second = (program(*inputs) for program in programs.values())  # compiles both
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-4),
                 first, second)
    times = interleaved({name: lambda p=program: jax.block_until_ready(
        [p(*inputs) for _ in range(args.calls)]) for name, program in programs.items()},
                        args.rounds)
    ms = {name: 1e3 * statistics.median(t) / args.calls for name, t in times.items()}
    names = list(ms)
    print(f"{title}: " + ", ".join(f"{n} {ms[n]:.2f} ms" for n in names)
          + f"; {names[1]} / {names[0]}: {ms[names[1]] / ms[names[0]]:.2f}x")


if __name__ == "__main__":
  main(sys.argv[1:])
