"""tinyimagenet.diagnosis.stats against known values, hand-computed tables, textbook intervals and
small simulations; and the one property every sentence must have: its wording agrees with its p."""
from __future__ import annotations

import math
import time

import pytest
import torch

from tinyimagenet.diagnosis.stats import (ALPHA, P_FLOOR, ChanceTest, TwoSample, above_chance, binomial_sf,
                                          chance_test, chance_test_from_confusion, class_permutation_p,
                                          confusion_matrix, fisher_p, newcombe_interval, power, required_n,
                                          score, strength, two_proportion_test, wilson_interval)


# ---------------------------------------------------------------- binomial
def test_binomial_sf_exact_values():
    assert binomial_sf(3, 10, 0.5) == pytest.approx(0.9453125, rel=1e-12)        # 1 - 56/1024
    assert binomial_sf(10, 10, 0.5) == pytest.approx(2.0 ** -10, rel=1e-12)
    assert binomial_sf(100, 100, 0.5) == pytest.approx(2.0 ** -100, rel=1e-9)     # far tail, no underflow
    assert binomial_sf(0, 5, 0.3) == 1.0 and binomial_sf(6, 5, 0.3) == 0.0
    assert binomial_sf(1, 5, 0.0) == 0.0 and binomial_sf(5, 5, 1.0) == 1.0
    # n ~ 1e5: the sf at the mean of a symmetric binomial is 1/2 + pmf(mean)/2.
    n = 100_000
    pmf_mean = math.exp(math.lgamma(n + 1) - 2 * math.lgamma(n / 2 + 1) - n * math.log(2))
    assert binomial_sf(n // 2, n, 0.5) == pytest.approx(0.5 + pmf_mean / 2, rel=1e-9)    # lgamma: ~1e-10


def test_above_chance_keeps_its_behaviour():
    assert not above_chance(0.5, 10_000, 200).significant
    assert above_chance(2.05, 2_000, 200).significant
    t = above_chance(1.0, 2_000, 200)
    assert not t.significant and 1e-3 < t.p_value < 1e-2 and t.method == "binomial"
    assert t.alpha == ALPHA


# ---------------------------------------------------------------- Fisher, Wilson, Newcombe
def test_fisher_against_hand_computed_tables():
    # 1/5 vs 4/5: K2 ~ Hypergeom(N=10, K=5, n=5); P(K2 >= 4) = (C(5,4)C(5,1) + 1) / C(10,5) = 26/252.
    assert fisher_p(1, 5, 4, 5) == pytest.approx(26 / 252, rel=1e-12)
    assert fisher_p(1, 5, 4, 5, "two-sided") == pytest.approx(52 / 252, rel=1e-12)    # symmetric table
    # "less": P(K2 <= 4) = 1 - P(K2 = 5) = 251/252.
    assert fisher_p(1, 5, 4, 5, "less") == pytest.approx(251 / 252, rel=1e-12)
    # Fisher's tea-tasting: 3 of 4 cups right each way; one-sided p = 17/70.
    assert fisher_p(1, 4, 3, 4) == pytest.approx(17 / 70, rel=1e-12)
    assert fisher_p(3, 4, 1, 4) == pytest.approx(1.0 - 1 / 70, rel=1e-12)           # the other direction


def test_fisher_is_fast_at_1e5():
    start = time.perf_counter()
    for alt in ("greater", "less", "two-sided"):
        fisher_p(4_000, 100_000, 4_300, 100_000, alt)
    assert time.perf_counter() - start < 1.0
    # Large samples agree with the pooled z-test to within its error.
    z = 0.003 / math.sqrt(0.0415 * 0.9585 * 2 / 100_000)
    assert fisher_p(4_000, 100_000, 4_300, 100_000) == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=0.15)


def test_wilson_and_newcombe_textbook_values():
    # Newcombe (1998), single proportion: 81/263 -> 0.2553 to 0.3662; 0/10 -> 0 to 0.2775.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    # Newcombe (1998), difference of proportions, method 10, examples (a), (b), (d), (e), (f):
    # first proportion minus second there; here rate2 - rate1, so the first is passed as k2/n2.
    for (k2, n2, k1, n1), ci in [((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)),
                                 ((5, 56, 0, 29), (-0.0381, 0.1926)), ((0, 10, 0, 20), (-0.1611, 0.2775)),
                                 ((0, 10, 0, 10), (-0.2775, 0.2775))]:
        assert newcombe_interval(k1, n1, k2, n2) == pytest.approx(ci, abs=5e-5)


def test_two_proportion_test_fields_and_alternatives():
    t = two_proportion_test(48, 80, 56, 70)
    assert isinstance(t, TwoSample) and t.diff == pytest.approx(0.2) and (t.ci_low, t.ci_high) == \
        pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert t.p_value == pytest.approx(fisher_p(48, 80, 56, 70)) and t.significant == (t.p_value < ALPHA)
    two = two_proportion_test(48, 80, 56, 70, alternative="two-sided")
    assert t.p_value < two.p_value <= 2 * t.p_value + 1e-12
    assert two_proportion_test(56, 70, 48, 80, alternative="less").p_value == pytest.approx(t.p_value)
    assert two_proportion_test(8, 200, 440, 2_000).significant                     # probe 4% vs val 22%
    assert not two_proportion_test(10, 2_000, 20, 2_000).significant               # 0.5% vs 1.0%
    with pytest.raises(ValueError):
        two_proportion_test(3, 0, 1, 10)
    with pytest.raises(ValueError):
        fisher_p(1, 5, 4, 5, "bigger")


# ---------------------------------------------------------------- class permutation / chance_test
def _class_mapping(num_classes: int, per_class: int, mapping: list[int], noise: int = 0):
    """Every image of class c predicted as mapping[c], except `noise` per class spread cyclically."""
    targets = torch.arange(num_classes).repeat_interleave(per_class)
    preds = torch.tensor(mapping)[targets]
    i = torch.arange(per_class).repeat(num_classes)
    spread = i < noise
    preds[spread] = (targets[spread] + 1 + i[spread]) % num_classes
    return preds, targets


def test_class_mapping_model_is_not_above_chance():
    # The case measured in this repo: 10 classes, each true class mapped to one folder, 2 of 10 right.
    mapping = [0, 1, 3, 2, 5, 4, 7, 8, 9, 6]
    preds, targets = _class_mapping(10, 50, mapping, noise=4)
    t = chance_test(preds, targets, 10)
    assert t.accuracy > 18 and t.p_binomial < 1e-6                                  # binomial alone: "learning"
    assert not t.significant and t.method == "class permutation"
    # p ~ P(random permutation has >= 2 fixed points) = 1 - 2/e (the derangement limit).
    assert t.p_permutation == pytest.approx(1 - 2 / math.e, abs=0.03)
    assert t.p_value == max(t.p_binomial, t.p_permutation)


def test_genuinely_learning_model_is_above_chance():
    gen = torch.Generator().manual_seed(1)
    targets = torch.arange(200).repeat_interleave(50)
    right = torch.rand(10_000, generator=gen) < 0.02                                 # 2% vs chance 0.5%
    preds = torch.where(right, targets, torch.randint(0, 200, (10_000,), generator=gen))
    t = chance_test(preds, targets, 200)
    assert t.significant and t.p_value == max(t.p_binomial, t.p_permutation)
    assert t.p_permutation == pytest.approx(1 / 10_000)                              # every permutation beaten


def test_permutation_p_bounds_and_speed():
    conf = torch.eye(200, dtype=torch.int64) * 50
    start = time.perf_counter()
    p = class_permutation_p(conf, n_perm=9999)
    assert time.perf_counter() - start < 1.0
    assert p == pytest.approx(1 / 10_000)                                            # the floor 1/(n_perm+1)
    for n_perm in (9, 99, 999):
        assert class_permutation_p(torch.eye(10) * 5, n_perm=n_perm) == pytest.approx(1 / (n_perm + 1))
    collapsed = torch.zeros(10, 10)
    collapsed[:, 3] = 50                                                             # always class 3
    assert class_permutation_p(collapsed) == 1.0
    assert class_permutation_p(conf, seed=5) == class_permutation_p(conf, seed=5)    # deterministic


def test_few_classes_enumerate_every_permutation():
    perfect5, perfect7 = torch.arange(5).repeat(10), torch.arange(7).repeat(10)
    assert class_permutation_p(torch.eye(5) * 10) == pytest.approx(1 / 120)         # exact: 5! relabellings
    assert class_permutation_p(torch.eye(7) * 10) == pytest.approx(1 / 5040)
    t7 = chance_test(perfect7, perfect7, 7)
    assert t7.significant and t7.method == "class permutation" and t7.p_value == pytest.approx(1 / 5040)
    # 5! = 120 relabellings cannot reach 1e-3: the binomial test decides alone, and says so.
    t5 = chance_test(perfect5, perfect5, 5)
    assert t5.significant and t5.method.startswith("binomial only") and "too few" in t5.describe()


def test_chance_test_edge_cases():
    with pytest.raises(ValueError):
        chance_test([0, 1], [0, 1], 2, n_perm=99)                                   # cannot reach p < 1e-3
    with pytest.raises(ValueError):
        chance_test([0, 5], [0, 1], 2)
    empty = chance_test([], [], 10)
    assert empty.n == 0 and not empty.significant
    conf = confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], 3)
    assert conf.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    preds, targets = _class_mapping(10, 50, [0, 1, 3, 2, 5, 4, 7, 8, 9, 6], noise=4)
    assert chance_test_from_confusion(confusion_matrix(preds, targets, 10)) == chance_test(preds, targets, 10)


# ---------------------------------------------------------------- power and sample size
def test_required_n_is_the_first_n_with_enough_power():
    n = required_n(0.005, 0.01)
    assert power(n, 0.005, 0.01) >= 0.8 > power(n - 1, 0.005, 0.01)
    assert power(200, 0.005, 0.01) < 0.05                                           # 200 images cannot tell


def test_required_n_is_monotone():
    ns = [required_n(0.005, p1) for p1 in (0.0075, 0.01, 0.015, 0.02, 0.04)]
    assert ns == sorted(ns, reverse=True) and len(set(ns)) == len(ns)
    by_power = [required_n(0.1, 0.15, power=w) for w in (0.5, 0.8, 0.9, 0.99)]
    assert by_power == sorted(by_power)
    assert required_n(0.1, 0.15, alpha=0.05) < required_n(0.1, 0.15) < required_n(0.1, 0.15, alpha=1e-5)
    with pytest.raises(ValueError):
        required_n(0.5, 0.5)
    with pytest.raises(ValueError):
        required_n(0.5, 1.0)


def test_required_n_matches_simulation():
    p0, p1 = 0.1, 0.15
    n = required_n(p0, p1)
    torch.manual_seed(0)
    draws = torch.distributions.Binomial(n, torch.full((20_000,), p1)).sample().long()
    verdict = {int(x): above_chance(100 * int(x) / n, n, 10).significant for x in draws.unique()}
    rejected = sum(verdict[int(x)] for x in draws) / len(draws)
    assert rejected == pytest.approx(power(n, p0, p1), abs=0.015)                    # SE ~ 0.003
    assert rejected == pytest.approx(0.8, abs=0.02)


# ---------------------------------------------------------------- wording and scores
P_VALUES = [0.0, 1e-15, 1e-12, 1e-9, 1e-6, 9.99e-4, 1e-3, 1.0001e-3, 3.5e-3, 0.01, 0.049, 0.05, 0.26, 0.5, 1.0]


@pytest.mark.parametrize("p", P_VALUES)
def test_chance_test_wording_agrees_with_p(p):
    for alpha in (ALPHA, 0.05):
        t = ChanceTest(1.0, 200, 0.5, p, p < alpha, "binomial", alpha, p, p)
        text = t.describe()
        assert f"p = {p:.1e}" in text and f"alpha {alpha:.0e}" in text
        assert ("above chance" in text) == (p < alpha)
        assert ("not distinguishable" in text) == (p >= alpha)
        assert "signal" not in text


@pytest.mark.parametrize("p", P_VALUES)
def test_two_sample_wording_agrees_with_p(p):
    for alt, claim in (("greater", "higher than"), ("less", "lower than"), ("two-sided", "different from")):
        t = TwoSample(8, 200, 440, 2000, 0.04, 0.22, 0.18, 0.15, 0.2, p, p < ALPHA, alt)
        text = t.describe("probe", "val")
        assert f"p = {p:.1e}" in text
        assert (f"val {claim} probe" in text) == (p < ALPHA)
        assert ("not significant" in text) == (p >= ALPHA)


def test_real_describe_sentences():
    assert above_chance(1.0, 200, 200).describe() == \
        "1.00% on 200 images vs chance 0.50%: p = 2.6e-01, not distinguishable from chance at alpha 1e-03"
    preds, targets = _class_mapping(10, 50, [0, 1, 3, 2, 5, 4, 7, 8, 9, 6])
    text = chance_test(preds, targets, 10).describe()
    assert "class permutation; binomial alone" in text and "not distinguishable" in text


def test_strength_and_score():
    values = [strength(p) for p in sorted(P_VALUES)]
    assert values == sorted(values, reverse=True) and values[0] == 1.0 and values[-1] == 0.0
    assert strength(ALPHA) == pytest.approx(0.25) and strength(P_FLOOR) == 1.0 and strength(float("nan")) == 0.0
    inner = [strength(p) for p in (1e-11, 1e-8, 1e-4, 0.2)]
    assert len(set(inner)) == len(inner)                                             # no ties inside the range
    assert score(1e-6, 1.0) == pytest.approx(math.sqrt(0.5)) and score(1e-6, 0.0) == 0.0 and score(1.0, 1.0) == 0.0
    assert score(1e-6, 0.3) < score(1e-6, 0.6) and score(1e-3, 0.5) < score(1e-9, 0.5)
    assert score(1e-6, 2.0) == score(1e-6, 1.0)                                      # effect clipped to [0, 1]
