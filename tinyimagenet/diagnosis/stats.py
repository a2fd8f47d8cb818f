"""Is an accuracy above chance? An exact one-sided binomial test, no SciPy needed.

With n evaluated images and C classes, a model that has learned nothing gets each one right with
probability 1/C, so the number correct is Binomial(n, 1/C). `above_chance(correct, n, C)` is the
probability of doing at least this well by guessing; below `ALPHA` we call the model learning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 1e-3  # strict: five epochs x several models are many looks at the data


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact, stable for n ~ 1e5)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@dataclass(frozen=True)
class ChanceTest:
    accuracy: float      # percent
    n: int               # images evaluated
    chance: float        # percent, 100 / num_classes
    p_value: float       # P(at least this many correct | guessing)
    significant: bool    # p_value < ALPHA

    def describe(self) -> str:
        verdict = "above chance" if self.significant else "not distinguishable from chance"
        return (f"{self.accuracy:.2f}% on {self.n} images vs chance {self.chance:.2f}%: "
                f"p = {self.p_value:.1e}, {verdict}")


def above_chance(accuracy_percent: float, n: int, num_classes: int, alpha: float = ALPHA) -> ChanceTest:
    correct = round(accuracy_percent / 100 * n)
    p = binomial_sf(correct, n, 1.0 / num_classes)
    return ChanceTest(accuracy_percent, n, 100.0 / num_classes, p, p < alpha)
