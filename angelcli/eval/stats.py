"""Statistics for accuracies on a finite question set: intervals, paired differences, McNemar's test.

All in the standard library (no scipy): the numbers are small and the formulas are short.

* wilson(k, n): 95% Wilson score interval of one accuracy (sensible at 0 % / 100 % and small n, unlike
  the normal approximation).
* paired_bootstrap(a, b, seed): the difference mean(b) - mean(a) of two models on the *same* items, with a
  percentile bootstrap 95% interval that resamples items (so the correlation between the models is kept).
* mcnemar(a, b): the test for paired binary outcomes. Only discordant items count: b01 = right in A only,
  b10 = right in B only. With fewer than 25 discordant items the exact two-sided binomial test (p = 0.5),
  else the chi-square statistic with continuity correction on 1 degree of freedom.
"""

from __future__ import annotations

import math
import random

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    lo, hi = max(0.0, c - h), min(1.0, c + h)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact ends, free of rounding


def paired_bootstrap(a: list[bool], b: list[bool], seed: int = 0, rounds: int = 2000) -> dict:
    """a, b: per-item correctness of model A and model B (same items, same order)."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    n = len(a)
    diff = [int(y) - int(x) for x, y in zip(a, b)]  # per item: -1, 0, +1
    mean = sum(diff) / n if n else 0.0
    if n == 0:
        return {"difference": 0.0, "ci95": [0.0, 0.0], "rounds": 0}
    rng = random.Random(seed)
    stats = sorted(sum(diff[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    lo, hi = stats[int(0.025 * (rounds - 1))], stats[int(math.ceil(0.975 * (rounds - 1)))]
    return {"difference": mean, "ci95": [lo, hi], "rounds": rounds}


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n trials at p = 0.5 (doubling the smaller tail)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mcnemar(a: list[bool], b: list[bool], exact_below: int = 25) -> dict:
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n < exact_below:
        return {"only_a_correct": only_a, "only_b_correct": only_b, "method": "exact binomial",
                "statistic": None, "p_value": _binom_two_sided(only_a, n)}
    chi2 = (abs(only_a - only_b) - 1) ** 2 / n
    return {"only_a_correct": only_a, "only_b_correct": only_b, "method": "chi-square (continuity corrected)",
            "statistic": chi2, "p_value": math.erfc(math.sqrt(chi2 / 2))}
