"""The diagnosis's statistics: is an accuracy above chance, do two accuracies differ, how many images
would tell, and how strong is a piece of evidence. Exact tests in log space; no SciPy needed.

* `chance_test(preds, targets, C)`: accuracy vs chance 1/C. Two tests, both must reject:
  - the exact binomial test: with n images and a model that learned nothing, each image is right
    with probability 1/C, so the number correct is Binomial(n, 1/C) -- *if images are independent*;
  - a class-permutation test, robust to predictions that cluster by class. A model that maps every
    true class to one arbitrary predicted class gets whole classes right by luck: on 10 classes,
    2 of 10 lucky mappings give 20%+ val (binomial p ~ 1e-9 at n = 500) although nothing transfers.
    Permuting class identities asks "would an arbitrary relabelling of the classes do as well?";
    for that model p ~ P(a random permutation has >= 2 fixed points) ~ 0.26.
  `above_chance(accuracy_percent, n, C)` is the binomial test alone, for callers that have no
  per-image predictions.
* `two_proportion_test(k1, n1, k2, n2)`: Fisher's exact test and Newcombe's interval for the difference.
* `required_n(p0, p1)` / `power(n, p0, p1)`: the exact binomial test's sample size and power;
  `images_to_decide(n, p0, p1)` the size to name when n falls short (always > n).
* `strength(p)` / `score(p, effect)`: evidence on a [0, 1] scale, for ranking causes.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

from .thresholds import ALPHA, P_FLOOR  # why these values: thresholds.py

_NORMAL = NormalDist()


def _fmt_alpha(alpha: float) -> str:
    return f"{alpha:.0e}"


# ---------------------------------------------------------------- binomial
def _log_binom_pmf(i: torch.Tensor, n: int, p: float) -> torch.Tensor:
    """log P(X = i), X ~ Binomial(n, p), for a float64 tensor of i; needs 0 < p < 1."""
    return (math.lgamma(n + 1) - torch.lgamma(i + 1) - torch.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the tail's log-pmf in float64, then log-sum-exp. No term
    underflows however far in the tail; the relative error is that of log C(n, i) from lgamma, which
    cancels terms of size ~n log n: ~1e-10 at n = 1e5, far below anything a p-value is used for."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    i = torch.arange(k, n + 1, dtype=torch.float64)
    return min(1.0, math.exp(torch.logsumexp(_log_binom_pmf(i, n, p), 0).item()))


def _log_sf_all(n: int, p: float) -> torch.Tensor:
    """log P(X >= k) for k = 0..n+1 (the last is -inf), all at once by a reversed log-cumsum-exp."""
    logpmf = _log_binom_pmf(torch.arange(n + 1, dtype=torch.float64), n, p)
    tail = torch.logcumsumexp(logpmf.flip(0), 0).flip(0).clamp(max=0.0)
    return torch.cat([tail, tail.new_full((1,), -math.inf)])


def _critical(n: int, p0: float, alpha: float) -> tuple[int, torch.Tensor]:
    """The smallest k with P(X >= k | p0) < alpha (the test rejects at k or more correct), and the
    log-sf vector under p0. Strict '<' to agree with `significant = p < alpha` everywhere here."""
    log_sf0 = _log_sf_all(n, p0)
    return int((log_sf0 >= math.log(alpha)).sum().item()), log_sf0


def power(n: int, p0: float, p1: float, alpha: float = ALPHA) -> float:
    """Probability that the exact one-sided binomial test at level alpha, against chance p0, rejects
    with n images when the true accuracy is p1 (all fractions, not percent)."""
    _check_rates(p0, p1)
    k, _ = _critical(n, p0, alpha)
    return binomial_sf(k, n, p1)


def _randomized_power(n: int, p0: float, p1: float, alpha: float) -> float:
    """Power of the randomized test of exact size alpha (reject k or more, and k-1 with probability
    gamma). It bounds the exact test's power from above and, unlike it, never falls as n grows (with
    n+1 images one may ignore one) -- so it can be binary-searched; the exact power is a sawtooth."""
    k, log_sf0 = _critical(n, p0, alpha)
    sf0_k = math.exp(log_sf0[k].item())
    pmf0 = math.exp(log_sf0[k - 1].item()) - sf0_k             # P0(X = k-1) > 0: sf0(k-1) >= alpha
    gamma = min(1.0, max(0.0, (alpha - sf0_k) / pmf0)) if pmf0 > 0 else 0.0
    pmf1 = math.exp(_log_binom_pmf(torch.tensor([k - 1.0], dtype=torch.float64), n, p1).item())
    return binomial_sf(k, n, p1) + gamma * pmf1


def required_n(p0: float, p1: float, alpha: float = ALPHA, power: float = 0.8,
               max_n: int = 10_000_000) -> int:
    """The smallest n at which the exact one-sided binomial test at level alpha against chance p0
    rejects with probability >= `power` when the true accuracy is p1 (fractions, p0 < p1).

    The exact power is a sawtooth in n (the critical count moves in steps), so a few n just above
    the answer may have slightly less power; this is the first n that reaches it. Search: the
    normal approximation brackets, a binary search finds the first n whose randomized-test power
    (monotone, an upper bound) reaches the target -- no smaller n can -- then the first n from
    there where the exact test does, tooth by tooth (usually the same or the next tooth).
    """
    _check_rates(p0, p1)
    target = power
    if not alpha < target < 1.0:
        raise ValueError(f"power must be in (alpha, 1), got {target}")
    z = _NORMAL.inv_cdf(1 - alpha) * math.sqrt(p0 * (1 - p0)) + _NORMAL.inv_cdf(target) * math.sqrt(p1 * (1 - p1))
    hi = max(1, math.ceil((z / (p1 - p0)) ** 2))
    while _randomized_power(hi, p0, p1, alpha) < target:
        if hi > max_n:
            raise ValueError(f"more than {max_n} images needed to detect {p1} vs chance {p0}")
        hi *= 2
    lo = 0                                   # randomized power at n = 0 is alpha < target
    while hi - lo > 1:                       # invariant: rand(lo) < target <= rand(hi)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _randomized_power(mid, p0, p1, alpha) >= target else (mid, hi)
    n = hi
    while True:
        # Within one tooth the critical count k is fixed and P(X >= k | p1) grows with n, so the
        # first n reaching the target inside a tooth is found by bisection; k(n) never decreases.
        k = _critical(n, p0, alpha)[0]
        end, step = n, 1                     # the tooth's last n: exponential, then binary search
        while _critical(end + step, p0, alpha)[0] == k:
            end, step = end + step, 2 * step
        last_out = end + step                # k(last_out) > k
        while last_out - end > 1:
            mid = (end + last_out) // 2
            end, last_out = (mid, last_out) if _critical(mid, p0, alpha)[0] == k else (end, mid)
        if binomial_sf(k, end, p1) >= target:
            lo, hi = n - 1, end              # invariant: sf(k, lo) < target <= sf(k, hi) (lo < n: below)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if binomial_sf(k, mid, p1) >= target else (mid, hi)
            return hi
        n = end + 1


def images_to_decide(n_at_hand: int, p0: float, p1: float, alpha: float = ALPHA, target: float = 0.8) -> int:
    """How many images would reach power `target`, for a report on `n_at_hand` images that do not: never a
    number at or below n_at_hand. required_n is the first n that reaches the power, but the exact
    power is a sawtooth, so n_at_hand can lie above it on a falling tooth ("400 images cannot ...;
    about 396 would"); then the answer is the first larger n that reaches it again."""
    n = required_n(p0, p1, alpha, target)
    if n > n_at_hand:
        return n
    n = n_at_hand + 1
    while power(n, p0, p1, alpha) < target:  # a tooth is a few images wide
        n += 1
    return n


def _check_rates(p0: float, p1: float) -> None:
    if not 0.0 < p0 < p1 < 1.0:
        raise ValueError(f"need 0 < p0 < p1 < 1 (fractions, not percent), got p0={p0}, p1={p1}")


# ---------------------------------------------------------------- accuracy vs chance
@dataclass(frozen=True)
class ChanceTest:
    accuracy: float                   # percent
    n: int                            # images evaluated
    chance: float                     # percent, 100 / num_classes
    p_value: float                    # the binding p: max of the tests made (each must reject)
    significant: bool                 # p_value < alpha
    method: str = "binomial"          # the binding test: "binomial", "class permutation", "binomial only: ..."
    alpha: float = ALPHA
    p_binomial: float | None = None
    p_permutation: float | None = None

    def describe(self) -> str:
        """One sentence whose verdict is read off `significant`, never from a separate threshold."""
        other = ""
        if self.method.startswith("binomial only"):
            other = f" ({self.method})"
        elif self.p_permutation is not None and self.p_binomial is not None:
            other = (f" (class permutation; binomial alone {self.p_binomial:.1e})" if self.method == "class permutation"
                     else f" (binomial; class permutation {self.p_permutation:.1e})")
        verdict = "above chance" if self.significant else "not distinguishable from chance"
        return (f"{self.accuracy:.2f}% on {self.n} images vs chance {self.chance:.2f}%: "
                f"p = {self.p_value:.1e}{other}, {verdict} at alpha {_fmt_alpha(self.alpha)}")


def above_chance(accuracy_percent: float, n: int, num_classes: int, alpha: float = ALPHA) -> ChanceTest:
    """The binomial test alone, from an accuracy: images are assumed independent (see `chance_test`)."""
    correct = round(accuracy_percent / 100 * n)
    p = binomial_sf(correct, n, 1.0 / num_classes)
    return ChanceTest(accuracy_percent, n, 100.0 / num_classes, p, p < alpha, "binomial", alpha, p_binomial=p)


def confusion_matrix(preds, targets, num_classes: int) -> torch.Tensor:
    """int64 [C, C]; entry [c, k] counts images of true class c predicted as k."""
    preds = torch.as_tensor(preds).detach().cpu().reshape(-1).long()
    targets = torch.as_tensor(targets).detach().cpu().reshape(-1).long()
    if preds.shape != targets.shape:
        raise ValueError(f"{preds.numel()} predictions for {targets.numel()} targets")
    for name, t in (("predictions", preds), ("targets", targets)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{t.min()}, {t.max()}]")
    return torch.bincount(targets * num_classes + preds, minlength=num_classes ** 2).view(num_classes, num_classes)


def class_permutation_p(confusion, n_perm: int = 9999, seed: int = 0) -> float:
    """Monte Carlo p that accuracy is above chance, robust to predictions clustered by class.

    Null: class identities are exchangeable -- the model's predictions would fit any relabelling of
    the true classes as well as the real one. Statistic for a random permutation pi of the classes:
    sum_c confusion[c, pi(c)] (images right if true class c were called pi(c)), vs the observed trace.
    p = (1 + #{perm stat >= trace}) / (1 + n_perm), never below 1 / (1 + n_perm); the identity is
    counted as one of the permutations, which keeps the test valid (P(p <= u) <= u) at any n_perm.
    When C! <= n_perm + 1 (C <= 7 by default) all C! permutations are enumerated instead: p is then
    exact, #{perm stat >= trace} / C!, and never below 1 / C! (1/120 for 5 classes).
    """
    conf = torch.as_tensor(confusion).detach().cpu().to(torch.float64)
    if conf.dim() != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion must be square [C, C], got {tuple(conf.shape)}")
    c = conf.shape[0]
    observed = conf.trace().item()
    tol = 1e-9 * max(1.0, abs(observed))                       # counts are integers; weights may not be
    if c <= 20 and math.factorial(c) <= n_perm + 1:          # (20! > 1e18: never enumerated)
        perms = torch.tensor(list(itertools.permutations(range(c))), dtype=torch.long).reshape(-1, c)
        stats = conf[torch.arange(c), perms].sum(dim=1)
        return int((stats >= observed - tol).sum().item()) / len(perms)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(c)
    chunk = max(1, (1 << 21) // max(1, c))                      # ~16 MiB of indices per chunk
    hits, done = 0, 0
    while done < n_perm:
        m = min(chunk, n_perm - done)
        perms = torch.rand(m, c, generator=gen, dtype=torch.float32).argsort(dim=1)  # uniform permutations
        stats = conf[rows, perms].sum(dim=1)                   # [m]: conf[c, pi(c)] summed over c
        hits += int((stats >= observed - tol).sum().item())
        done += m
    return (1 + hits) / (1 + n_perm)


def chance_test(preds, targets, num_classes: int, alpha: float = ALPHA, n_perm: int = 9999,
                seed: int = 0) -> ChanceTest:
    """Accuracy of per-image predictions vs chance: the binomial test and the class-permutation test
    must both reject; p_value is the larger p and `method` names the test that gave it.

    The permutation p cannot go below 1 / (1 + n_perm) (1e-4 by default), so neither can p_value.
    With so few classes that even all C! relabellings cannot reach alpha (C <= 6 at 1e-3) the
    permutation test can never reject, however good the model: then the binomial test alone
    decides, and `method` says so -- such a verdict is not protected against class clustering.
    """
    return chance_test_from_confusion(confusion_matrix(preds, targets, num_classes), alpha, n_perm, seed)


def chance_test_from_confusion(confusion, alpha: float = ALPHA, n_perm: int = 9999, seed: int = 0) -> ChanceTest:
    """`chance_test` from a confusion matrix of counts ([c, k]: true class c predicted as k), for
    callers that accumulate one during evaluation instead of keeping every prediction."""
    if 1.0 / (1 + n_perm) >= alpha:
        raise ValueError(f"n_perm={n_perm} cannot give p < alpha={alpha}; use n_perm >= {math.ceil(1 / alpha)}")
    conf = torch.as_tensor(confusion).detach().cpu().long()
    num_classes = conf.shape[0]
    n = int(conf.sum().item())
    chance = 100.0 / num_classes
    if n == 0:
        return ChanceTest(0.0, 0, chance, 1.0, False, "binomial", alpha, 1.0, 1.0)
    correct = int(conf.trace().item())
    p_bin = binomial_sf(correct, n, 1.0 / num_classes)
    p_perm = class_permutation_p(conf, n_perm, seed)
    if num_classes <= 20 and math.factorial(num_classes) * alpha <= 1:   # 1/C! >= alpha: can never reject
        method, p = f"binomial only: {num_classes} classes are too few to permute", p_bin
    else:
        method, p = ("class permutation", p_perm) if p_perm > p_bin else ("binomial", p_bin)
    return ChanceTest(100.0 * correct / n, n, chance, p, p < alpha, method, alpha, p_bin, p_perm)


# ---------------------------------------------------------------- two proportions
def _log_choose(n, k: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(torch.as_tensor(n, dtype=torch.float64) + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def fisher_p(k1: int, n1: int, k2: int, n2: int, alternative: str = "greater") -> float:
    """Fisher's exact test of rate k2/n2 vs k1/n1, conditioning on the k1 + k2 successes in total.

    Under equal rates, k2 is hypergeometric; the whole support (<= min(n2, k1 + k2) + 1 terms) is
    evaluated at once in float64 log space, about a millisecond for n ~ 1e5, so no approximation is
    needed. "greater": P(K2 >= k2); "less": P(K2 <= k2); "two-sided": the sum over tables no more
    probable than the observed one (R's fisher.test convention, with its 1e-7 relative tolerance).
    """
    total, ks = n1 + n2, k1 + k2
    lo, hi = max(0, n2 - (total - ks)), min(ks, n2)
    x = torch.arange(lo, hi + 1, dtype=torch.float64)
    n2_ = torch.tensor(float(n2), dtype=torch.float64)
    logpmf = _log_choose(ks, x) + _log_choose(total - ks, n2 - x) - _log_choose(total, n2_)
    obs = k2 - lo
    if alternative == "greater":
        tail = logpmf[obs:]
    elif alternative == "less":
        tail = logpmf[:obs + 1]
    elif alternative == "two-sided":
        tail = logpmf[logpmf <= logpmf[obs] + math.log1p(1e-7)]
    else:
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    return min(1.0, math.exp(torch.logsumexp(tail, 0).item()))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (no continuity correction)."""
    if n <= 0:
        return 0.0, 1.0
    z = _NORMAL.inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 or k = n the limit is exactly 0 or 1; the formula gives it only up to rounding.
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) for k2/n2 - k1/n1: each rate's Wilson
    limits combined in quadrature. Unlike the Wald interval it stays inside [-1, 1] and keeps
    near-nominal coverage at small counts and rates near 0 -- our regime (1% accuracies)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    d = p2 - p1
    return d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


@dataclass(frozen=True)
class TwoSample:
    k1: int
    n1: int
    k2: int
    n2: int
    rate1: float          # k1 / n1, a fraction (not percent)
    rate2: float          # k2 / n2
    diff: float           # rate2 - rate1
    ci_low: float         # Newcombe interval for diff, at `confidence`
    ci_high: float
    p_value: float        # Fisher's exact test, `alternative` about rate2 vs rate1
    significant: bool     # p_value < alpha
    alternative: str = "greater"
    alpha: float = ALPHA
    confidence: float = 0.95

    def describe(self, label1: str = "sample 1", label2: str = "sample 2") -> str:
        """One sentence; its verdict is read off `significant`."""
        sided = "two-sided" if self.alternative == "two-sided" else "one-sided"
        claim = {"greater": "higher than", "less": "lower than", "two-sided": "different from"}[self.alternative]
        verdict = (f"{label2} {claim} {label1} at alpha {_fmt_alpha(self.alpha)}" if self.significant
                   else f"not significant at alpha {_fmt_alpha(self.alpha)}")
        return (f"{label2} {100 * self.rate2:.2f}% ({self.k2}/{self.n2}) vs {label1} {100 * self.rate1:.2f}% "
                f"({self.k1}/{self.n1}): difference {100 * self.diff:+.2f} points "
                f"({self.confidence:.0%} CI {100 * self.ci_low:+.2f} to {100 * self.ci_high:+.2f}), "
                f"{sided} Fisher p = {self.p_value:.1e}, {verdict}")


def two_proportion_test(k1: int, n1: int, k2: int, n2: int, alpha: float = ALPHA,
                        alternative: str = "greater", confidence: float = 0.95) -> TwoSample:
    """Is rate 2 (k2 of n2) greater than rate 1 (k1 of n1)? `alternative="two-sided"` asks whether
    they differ (e.g. probe vs val accuracy), "less" whether rate 2 is lower."""
    if n1 <= 0 or n2 <= 0 or not (0 <= k1 <= n1 and 0 <= k2 <= n2):
        raise ValueError(f"need 0 <= k <= n and n > 0, got {k1}/{n1} and {k2}/{n2}")
    p = fisher_p(k1, n1, k2, n2, alternative)
    lo, hi = newcombe_interval(k1, n1, k2, n2, confidence)
    return TwoSample(k1, n1, k2, n2, k1 / n1, k2 / n2, k2 / n2 - k1 / n1, lo, hi, p, p < alpha,
                     alternative, alpha, confidence)


# ---------------------------------------------------------------- evidence scores
def strength(p_value: float) -> float:
    """Evidence of a p-value on [0, 1]: -log10(p) / 12, clipped -- linear in orders of magnitude.

    p = 1 -> 0, p = ALPHA (1e-3) -> 0.25, p = 1e-6 -> 0.5, p <= P_FLOOR (1e-12) -> 1. Strictly
    decreasing in between, so two different p never tie. NaN (no test) counts as no evidence.
    """
    if p_value != p_value:
        return 0.0
    p = min(1.0, max(float(p_value), P_FLOOR))
    return -math.log10(p) / -math.log10(P_FLOOR)


def score(p_value: float, effect: float) -> float:
    """Rank score on [0, 1]: geometric mean of `strength(p_value)` and an effect size in [0, 1].

    Geometric, not arithmetic: a huge effect with no evidence (a fluke on 8 images) or overwhelming
    evidence of a negligible effect (n = 1e6) both score near 0, while strong on both scores near 1.
    """
    e = 0.0 if effect != effect else min(1.0, max(0.0, float(effect)))
    return math.sqrt(strength(p_value) * e)
