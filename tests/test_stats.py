"""The report's tests: Holm's correction against hand-computed values, and the comparisons."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cwgnc_jax import stats


def test_holm_against_hand_computed_values():
  # m = 4 (the NaN is no test). Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06,
  # 0.04 x 1 = 0.04, raised to the 0.06 before it (the adjusted values never decrease).
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005, np.nan]),
                             [0.03, 0.06, 0.06, 0.02, np.nan])
  # Capped at 1: 0.5 x 2 = 1.0, then 0.6 raised to 1.0.
  np.testing.assert_allclose(stats.holm([0.6, 0.5]), [1.0, 1.0])
  # Ties: 0.02 x 3 = 0.06 and 0.02 x 2 = 0.04, raised to 0.06; 0.5 x 1.
  np.testing.assert_allclose(stats.holm([0.02, 0.5, 0.02]), [0.06, 0.5, 0.06])
  # One test: unchanged. Bonferroni bounds Holm from above, the raw p from below.
  np.testing.assert_allclose(stats.holm([0.2]), [0.2])
  assert stats.holm([]).shape == (0,)
  p = np.random.default_rng(0).uniform(0, 0.2, 12)
  adjusted = stats.holm(p)
  assert np.all(adjusted >= p) and np.all(adjusted <= np.minimum(1, 12 * p))
  assert np.all(np.diff(adjusted[np.argsort(p)]) >= 0)


def test_compare_is_brown_forsythe_welch_and_fisher():
  a, b = [71.2, 70.4, 69.9, 72.0], [50.2, 66.1, 52.7, 47.3]
  c = stats.compare(a, b, 0, 3)
  assert c.n == (4, 4) and c.failed == (0, 3)
  assert c.std_ratio == pytest.approx(np.std(a) / np.std(b))
  assert c.mean_difference == pytest.approx(np.mean(a) - np.mean(b))
  assert c.p_spread == pytest.approx(scipy_stats.levene(a, b, center="median").pvalue)
  assert c.p_means == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
  assert c.p_failures == pytest.approx(8 / 56)  # hypergeometric: 2 x P(0 of 4 from 3 of 8)
  assert c.pvalues == (c.p_spread, c.p_means, c.p_failures)
  # Too few seeds for a spread test; a constant baseline has no std ratio.
  small = stats.compare([1.0, 2.0], [0.0, 0.0], 0, 2)
  assert np.isnan(small.p_spread) and np.isnan(small.std_ratio) and not np.isnan(small.p_means)
