"""The tests behind the report's comparisons, and Holm's correction over the page's family.

Each comparison of two groups' scores asks three questions, two-sided: equal spread
(Brown-Forsythe), equal means (Welch), equal failure rates (Fisher's exact test). A report
asks them of CWGNC against every baseline on every task, so some small p-values come by
chance: Holm's step-down correction (:func:`holm`) over every p-value on the page keeps the
chance of any false "different" at most alpha, where the uncorrected p-values keep it per test.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Scores ``a`` against scores ``b``.

  Attributes:
    n: the number of scores of each.
    std_ratio: ``std(a) / std(b)`` (population stds); NaN where ``b``'s is 0.
    p_spread: Brown-Forsythe's p (Levene's test on deviations from each group's median:
      robust to a failed run's outlying score); NaN below 3 scores a side, where it is
      degenerate, or where both are constant.
    mean_difference: ``mean(a) - mean(b)``.
    p_means: Welch's t-test's p; NaN below 2 scores a side or where both are constant.
    failed: the failed runs of each.
    p_failures: Fisher's exact test's p on the 2 x 2 table of failed and not.
  """
  n: tuple[int, int]
  std_ratio: float
  p_spread: float
  mean_difference: float
  p_means: float
  failed: tuple[int, int]
  p_failures: float

  @property
  def pvalues(self) -> tuple[float, float, float]:
    """Spread, means, failures."""
    return self.p_spread, self.p_means, self.p_failures


def compare(a: Sequence[float], b: Sequence[float], failed_a: int, failed_b: int) -> Comparison:
  """Scores ``a`` (``failed_a`` of them failed) against ``b``. With ten seeds a group's std
  is known only to about +-25%, so only large differences in spread reach a small p."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  with np.errstate(all="ignore"):  # constant scores (every seed failed): no test
    spread = (stats.levene(a, b, center="median").pvalue if min(len(a), len(b)) >= 3
              else np.nan)
    means = stats.ttest_ind(a, b, equal_var=False).pvalue if min(len(a), len(b)) >= 2 else np.nan
    ratio = np.std(a) / np.std(b) if np.std(b) else np.nan
  fisher = stats.fisher_exact([[failed_a, len(a) - failed_a],
                               [failed_b, len(b) - failed_b]]).pvalue
  return Comparison((len(a), len(b)), float(ratio), float(spread),
                    float(np.mean(a) - np.mean(b)), float(means), (failed_a, failed_b),
                    float(fisher))


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values, in the order given.

  With the m p-values that are numbers sorted ``p_(1) <= ... <= p_(m)``, the adjusted
  ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``: rejecting every hypothesis with
  ``p~ <= alpha`` rejects a true one with probability at most alpha, whatever their
  dependence. NaN (a test that could not be made) stays NaN and is not counted in m.
  """
  p = np.asarray(pvalues, np.float64)
  adjusted = np.full(p.shape, np.nan)
  finite = np.flatnonzero(~np.isnan(p))
  order = finite[np.argsort(p[finite], kind="stable")]
  m = len(order)
  scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
  adjusted[order] = np.maximum.accumulate(scaled)
  return adjusted
