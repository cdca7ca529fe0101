"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_servebench.scoring.metrics import (
    accuracy,
    case_metrics,
    case_score,
    confidence_interval,
    headline_metric,
    mcnemar_exact,
    paired_significance,
    pass_at_k,
)

T, F = True, False

# --------------------------------------------------------------------------- accuracy


def test_accuracy():
    assert accuracy([1, 0, 0.5, 1]) == pytest.approx(62.5)
    assert accuracy([1.0]) == 100.0
    assert accuracy([0, 0]) == 0.0
    assert math.isnan(accuracy([]))


def test_case_score_is_the_mean_of_the_samples():
    assert case_score((1.0, 0.0, 0.5, 1.0)) == 0.625
    assert case_score([0.1, 0.2, 0.3]) == sum([0.1, 0.2, 0.3]) / 3  # sum / n, in that order
    assert case_score(()) == 0.0  # no judged sample (infer mode)


def test_headline_metric():
    assert headline_metric(1) == "accuracy"
    assert headline_metric(4) == "avg@4"


# --------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 0, 1, 0.0),  # c = 0: never
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),  # c = n: always
        (4, 1, 1, 0.25),  # pass@1 = c / n
        (4, 3, 1, 0.75),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 3, 2, 1.0),  # k > n - c: every pair holds a correct sample
        (4, 1, 4, 1.0),  # k = n with c > 0
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (200, 1, 100, 0.5),  # 1 - C(199,100)/C(200,100) = 1 - 100/200
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomial_definition():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows a float; the product form does not.
    value = pass_at_k(1000, 3, 500)
    assert value == pytest.approx(1 - (500 * 499 * 498) / (1000 * 999 * 998), rel=1e-12)
    assert 0.0 <= pass_at_k(10_000, 1, 1) <= 1.0
    assert pass_at_k(np.int64(4), np.int64(1), np.int64(2)) == pytest.approx(0.5)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 5), (4, 5, 1), (0, 0, 1), (4, -1, 1), (4, 1, 0)])
def test_pass_at_k_rejects_bad_input(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_non_integers():
    with pytest.raises(ValueError):
        pass_at_k(4.5, 1, 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- case metrics

# 3 cases x 4 samples whose samples disagree, c = 0, 1, 3:
#   case 0: F F F F   c=0   votes 12 15 -  12   (all wrong)
#   case 1: T F F F   c=1   votes 7  8  8  9    (7 is right)
#   case 2: T T F T   c=3   votes 5  5  4  5    (5 is right)
SAMPLES = [[F, F, F, F], [T, F, F, F], [T, T, F, T]]
VOTES = [["12", "15", None, "12"], ["7", "8", "8", "9"], ["5", "5", "4", "5"]]


def test_case_metrics_hand_computed():
    m = case_metrics(SAMPLES, VOTES, 4)
    # avg@4 = mean(0/4, 1/4, 3/4) = 1/3
    assert m["avg@4"] == pytest.approx(100 / 3)
    # runs: j=0 -> 2/3, j=1 -> 1/3, j=2 -> 0, j=3 -> 1/3; mean = 1/3 (== avg@4, n_i = k)
    assert m["accuracy (4 runs average)"] == pytest.approx(100 / 3)
    # pass@4: case 0 -> 0; cases 1 and 2 have n - c < 4 -> 1; mean = 2/3
    assert m["pass@4"] == pytest.approx(200 / 3)
    # cons@4: c > 4/2 only for case 2 -> 1/3
    assert m["cons@4"] == pytest.approx(100 / 3)
    # maj@4: case 0 votes "12" (wrong); case 1 votes "8" (2 of 4, wrong);
    # case 2 votes "5" (right) -> 1/3
    assert m["maj@4"] == pytest.approx(100 / 3)
    assert set(m) == {"accuracy (4 runs average)", "avg@4", "pass@4", "cons@4", "maj@4"}


def test_case_metrics_pass_at_smaller_k():
    # pass@1 = mean(c/n) = mean(0, 1/4, 3/4) = 1/3
    assert case_metrics(SAMPLES, None, 1)["pass@1"] == pytest.approx(100 / 3)
    # pass@2: case 0 -> 0; case 1 -> 1 - C(3,2)/C(4,2) = 1/2; case 2 -> n-c=1 < 2 -> 1
    # mean = (0 + 0.5 + 1) / 3 = 1/2
    m2 = case_metrics(SAMPLES, None, 2)
    assert m2["pass@2"] == pytest.approx(50.0)
    # with k=2 the runs / cons / maj figures look at the first 2 samples only:
    # runs j=0 -> 2/3, j=1 -> 1/3 -> 1/2; cons@2 needs c > 1 in the first two: case 2 only
    assert m2["accuracy (2 runs average)"] == pytest.approx(50.0)
    assert m2["cons@2"] == pytest.approx(100 / 3)
    # avg@k always uses every sample of a case
    assert m2["avg@2"] == pytest.approx(100 / 3)
    assert "maj@2" not in m2  # no votes, no majority vote


def test_maj_differs_from_cons():
    # plurality of 2 out of 4 is right: maj counts it, cons (strict majority) does not
    m = case_metrics([[T, T, F, F]], [["5", "5", "4", "3"]], 4)
    assert m["maj@4"] == 100.0
    assert m["cons@4"] == 0.0


def test_maj_tie_has_no_winner_whatever_the_order():
    m = case_metrics([[F, T, T, F], [T, F, F, T]], [["4", "5", "5", "4"], ["5", "4", "4", "5"]], 4)
    # both cases: "4" and "5" twice each -> no plurality -> wrong, in either order
    assert m["maj@4"] == 0.0
    m = case_metrics([[T, T, F, F]], [["5", "5", "4", "6"]], 4)
    assert m["maj@4"] == 100.0  # a plurality (2 of 4) without a tie wins


def test_maj_ignores_missing_votes():
    m = case_metrics([[F, F, F, T], [F, F]], [[None, None, None, "5"], [None, None]], 2)
    # first k=2 votes: case 0 has only None -> no vote -> wrong; case 1 idem
    assert m["maj@2"] == 0.0
    m = case_metrics([[F, F, F, T]], [[None, None, None, "5"]], 4)
    assert m["maj@4"] == 100.0  # the only vote is "5", which a correct sample gave


def test_maj_correctness_from_any_sample_with_the_vote():
    # same extracted answer judged right once and wrong once (e.g. formatting): counts as right
    m = case_metrics([[T, F, F]], [["18", "18", "20"]], 3)
    assert m["maj@3"] == 100.0


def test_cases_are_never_pooled():
    # A 2-sample run where case 0 is always right and case 1 always wrong. Pooling samples
    # across cases (AISBench 3.1's defect) would give pass@2 = cons@2 = 100 for the pair.
    m = case_metrics([[T, T], [F, F]], [["1", "1"], ["2", "2"]], 2)
    assert m["pass@2"] == 50.0
    assert m["cons@2"] == 50.0
    assert m["maj@2"] == 50.0


def test_more_samples_than_k_and_uneven_cases():
    # case 0 has 5 samples (c=2), case 1 has 3 (c=3); k = 3
    m = case_metrics([[F, T, F, T, F], [T, T, T]], None, 3)
    assert m["avg@3"] == pytest.approx(100 * (2 / 5 + 1) / 2)
    # runs over the first 3 samples: j0 -> 1/2, j1 -> 1, j2 -> 1/2
    assert m["accuracy (3 runs average)"] == pytest.approx(100 * (0.5 + 1 + 0.5) / 3)
    # pass@3: case 0 -> 1 - C(3,3)/C(5,3) = 1 - 1/10; case 1 -> 1
    assert m["pass@3"] == pytest.approx(100 * (0.9 + 1) / 2)
    # cons@3 on the first 3: case 0 has 1 (no), case 1 has 3 (yes)
    assert m["cons@3"] == 50.0


def test_case_metrics_edges():
    assert all(math.isnan(v) for v in case_metrics([], [], 4).values())
    all_right = case_metrics([[T] * 4] * 3, [["x"] * 4] * 3, 4)
    assert all(v == 100.0 for v in all_right.values())
    all_wrong = case_metrics([[F] * 4] * 3, [["x"] * 4] * 3, 4)
    assert all(v == 0.0 for v in all_wrong.values())
    # cons@k: exactly half is not a majority
    assert case_metrics([[T, T, F, F]], None, 4)["cons@4"] == 0.0
    assert case_metrics([[T, T, T, F]], None, 4)["cons@4"] == 100.0
    with pytest.raises(ValueError, match="fewer than k"):
        case_metrics([[T, F]], None, 3)
    with pytest.raises(ValueError):
        case_metrics([[T, F]], None, 0)
    with pytest.raises(ValueError, match="votes"):
        case_metrics([[T, F]], [["a"]], 2)
    with pytest.raises(ValueError, match="votes"):
        case_metrics([[T, F]], [], 2)


# --------------------------------------------------------------------------- intervals


def test_wilson_known_values():
    # Newcombe (1998), Stat. Med. 17:857, example 81/263: Wilson 95% CI 0.2553 to 0.3662
    low, high = confidence_interval([1] * 81 + [0] * 182)
    assert low == pytest.approx(25.53, abs=0.01)
    assert high == pytest.approx(36.62, abs=0.01)
    # 8/10: p=0.8, z=1.959964; centre (0.8 + z^2/20)/(1 + z^2/10) = 0.71672,
    # half-width z*sqrt(0.016 + z^2/400)/(1 + z^2/10) = 0.22656 -> (0.4902, 0.9433)
    low, high = confidence_interval([1] * 8 + [0] * 2)
    assert (low, high) == (pytest.approx(49.02, abs=0.01), pytest.approx(94.33, abs=0.01))
    # 10/10: upper bound 1, lower n / (n + z^2) = 10 / 13.8415
    low, high = confidence_interval([1] * 10)
    assert high == 100.0
    assert low == pytest.approx(100 * 10 / (10 + 1.959964**2), abs=1e-4)
    # 0/10 mirrors it
    low, high = confidence_interval([0] * 10)
    assert low == 0.0
    assert high == pytest.approx(100 * 1.959964**2 / (10 + 1.959964**2), abs=1e-4)


def test_wilson_level():
    narrow = confidence_interval([1] * 50 + [0] * 50, level=0.80)
    wide = confidence_interval([1] * 50 + [0] * 50, level=0.99)
    assert wide[0] < narrow[0] < 50 < narrow[1] < wide[1]


def test_normal_interval_for_fractional_scores():
    # mean 0.5, s = sqrt((0.09 + 0.01 + 0.01 + 0.09) / 3) = 0.258199, half = 1.959964 * s / 2
    low, high = confidence_interval([0.2, 0.4, 0.6, 0.8])
    half = 1.959964 * math.sqrt(0.2 / 3) / 2
    assert low == pytest.approx(100 * (0.5 - half), abs=1e-4)
    assert high == pytest.approx(100 * (0.5 + half), abs=1e-4)
    assert confidence_interval([0.5] * 4) == (50.0, 50.0)
    # clipped to [0, 100]
    low, high = confidence_interval([0.99, 1.0, 0.5, 1.0])
    assert high == 100.0
    assert low < 100.0


def test_interval_edges():
    assert confidence_interval([]) == (0.0, 100.0)
    assert confidence_interval([0.5]) == (0.0, 100.0)
    with pytest.raises(ValueError):
        confidence_interval([1.5])
    with pytest.raises(ValueError):
        confidence_interval([0.5], level=1.0)


# --------------------------------------------------------------------------- significance


def test_mcnemar_hand_computed():
    # 10 cases: A alone right on 5, B alone right on 1, both right on 1, both wrong on 3.
    a = [1, 1, 1, 1, 1, 1, 0, 0, 1, 0]
    b = [0, 0, 0, 0, 0, 1, 0, 1, 1, 0]
    # discordant m = 6, min = 1: p = 2 * (C(6,0) + C(6,1)) / 2^6 = 2 * 7 / 64 = 0.21875
    result = paired_significance(a, b)
    assert result == {
        "test": "mcnemar",
        "p_value": pytest.approx(0.21875),
        "diff": pytest.approx(40.0),  # 70% - 30%
        "n": 10,
        "significant": False,
    }


def test_mcnemar_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # capped at 1
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    # 2 * sum_{i<=2} C(12, i) / 2^12 = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096)
    # exact integer arithmetic stays accurate far beyond float factorials
    assert 0.0 < mcnemar_exact(600, 400) < 1e-9


def test_mcnemar_significant_and_symmetric():
    a = [1] * 20 + [0] * 10
    b = [0] * 20 + [0] * 10
    result = paired_significance(a, b)
    assert result["test"] == "mcnemar"
    assert result["p_value"] == pytest.approx(2 / 2**20)
    assert result["significant"] is True
    assert result["diff"] == pytest.approx(100 * 20 / 30)
    flipped = paired_significance(b, a)
    assert flipped["p_value"] == result["p_value"]
    assert flipped["diff"] == pytest.approx(-result["diff"])


def test_identical_models_are_not_different():
    scores = [1, 0, 1, 1, 0]
    assert paired_significance(scores, scores)["p_value"] == 1.0
    frac = [0.25, 0.5, 1.0]
    result = paired_significance(frac, frac)
    assert result["test"] == "paired_bootstrap"
    assert result["p_value"] == 1.0
    assert result["significant"] is False


def test_paired_bootstrap():
    rng = np.random.default_rng(123)
    base = rng.uniform(0, 1, 200)
    better = np.clip(base + 0.1, 0, 1)
    result = paired_significance(better.tolist(), base.tolist())
    assert result["test"] == "paired_bootstrap"
    assert result["significant"] is True
    assert result["p_value"] < 0.001
    assert result["diff"] > 5
    # noise around zero: not significant, and reproducible (fixed seed)
    noisy = np.clip(base + rng.normal(0, 0.05, 200), 0, 1)
    centered = noisy - (noisy.mean() - base.mean())
    first = paired_significance(centered.tolist(), base.tolist())
    again = paired_significance(centered.tolist(), base.tolist())
    assert first == again
    assert first["significant"] is False
    assert first["p_value"] > 0.5


def test_paired_bootstrap_agrees_with_a_paired_t_test():
    # For a mean difference that is ~2.2 standard errors from 0, p should be near 0.03.
    rng = np.random.default_rng(7)
    d = rng.normal(0, 1, 400)
    d = d - d.mean() + 2.2 * d.std(ddof=1) / math.sqrt(d.size)
    a = np.full(400, 0.5) + d / 10
    b = np.full(400, 0.5)
    p = paired_significance(a.tolist(), b.tolist())["p_value"]
    assert 0.015 < p < 0.05


def test_significance_input_checks():
    with pytest.raises(ValueError):
        paired_significance([1, 0], [1])
    empty = paired_significance([], [])
    assert empty["n"] == 0
    assert empty["significant"] is False
    # one model binary, the other not -> bootstrap
    assert paired_significance([1, 0, 1], [0.5, 0.5, 0.5])["test"] == "paired_bootstrap"
