"""Bit statistics of dropout's keyed hash (``models.dropout_lib.hash_bits``), beyond the test suite.

For ``--keys`` keys (``fold_in(key(s), 7)``) and ``--n`` entries each: the balance of each of
the 32 output bits, and the correlation of every pair of bits (32 x 32) between entries
``lag`` apart, for lags 1, 2, 3, 4, 8, 32, 128, 1024 and 16384. Each statistic is printed as
|z| (standard errors from 0); for that many independent statistics the largest |z| of
truly random bits is about sqrt(2 ln N), 4.5 for the defaults.

  PYTHONPATH=. python tools/check_dropout_hash.py [--keys 4] [--n 4194304]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from cwgnc_jax.models import dropout as dropout_lib

LAGS = (1, 2, 3, 4, 8, 32, 128, 1024, 16384)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--keys", type=int, default=4)
  parser.add_argument("--n", type=int, default=1 << 22, help="entries per key")
  args = parser.parse_args()
  worst, count = 0.0, 0
  for s in range(args.keys):
    h = np.asarray(dropout_lib.hash_bits(jax.random.fold_in(jax.random.key(s), 7), (args.n,)))
    bits = ((h[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.float32) - 0.5
    balance = np.abs(bits.mean(0)) / (0.5 / np.sqrt(args.n))
    worst, count = max(worst, balance.max()), count + 32
    for lag in LAGS:
      a, b = bits[lag:], bits[:-lag]
      z = np.abs(a.T @ b) / len(a) / 0.25 * np.sqrt(len(a))  # correlations in standard errors
      worst, count = max(worst, z.max()), count + z.size
      print(f"key {s} lag {lag:5d}: max |z| {z.max():.2f}")
  print(f"largest |z| over {count} statistics: {worst:.2f} "
        f"(random bits: about {np.sqrt(2 * np.log(count)):.1f})")


if __name__ == "__main__":
  main()
