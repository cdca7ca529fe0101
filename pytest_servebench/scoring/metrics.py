"""Accuracy metrics over per-case results: pure functions of per-case arrays.

Every function takes one entry per *case* (dataset record), with that case's own samples, so
samples of different questions can never be grouped together (a known defect of AISBench 3.1,
whose pass@k / cons@k grouped consecutive predictions regardless of the question).

Notation: ``N`` cases; case ``i`` has ``n_i`` samples of which ``c_i`` are correct; ``k`` is the
number of samples requested per case (``n_i >= k``). Percent figures are in 0..100.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from statistics import NormalDist, stdev
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# numpy is imported by the bootstrap alone: the figures of every run are a few sums, and
# numpy's import costs pytest ~15 MB of RSS and ~75 ms of start-up.

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
SIGNIFICANCE_LEVEL = 0.05


def case_score(scores: Sequence[float]) -> float:
    """A case's score in 0..1: ``mean_j(score_j)`` over its samples, ``sum / n`` (0.0 with no
    sample, as an infer run's cases). Every per-case score shown or compared comes from here,
    so all of them agree to the last digit."""
    return sum(scores) / len(scores) if scores else 0.0


def headline_metric(samples: int) -> str:
    """The figure that stands for a task: ``accuracy`` with one sample per case, ``avg@k``
    (the mean of :func:`case_score`) with ``k`` samples."""
    return "accuracy" if samples == 1 else f"avg@{samples}"


def accuracy(scores: Sequence[float]) -> float:
    """Accuracy in percent: ``100 * mean_i(score_i)`` over the per-case scores (each in 0..1).

    ``nan`` when there are no cases."""
    if not len(scores):
        return math.nan
    return 100.0 * _mean(scores)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator of Chen et al. (2021), as a probability in 0..1.

    ``pass@k = 1 - C(n - c, k) / C(n, k)``: the chance that at least one of ``k`` samples drawn
    without replacement from the ``n`` generated ones is correct. Computed in the numerically
    stable product form ``1 - prod_{j = n-c+1..n} (1 - k / j)``; it is exactly 1 when
    ``n - c < k`` (every draw of ``k`` contains a correct sample).
    """
    try:
        n, c, k = operator.index(n), operator.index(c), operator.index(k)
    except TypeError:
        raise ValueError(f"n, c and k must be integers, got n={n!r}, c={c!r}, k={k!r}") from None
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    if c == 0:
        return 0.0
    return 1.0 - math.prod(1.0 - k / j for j in range(n - c + 1, n + 1))


def mean_pass_at_k(samples: Sequence[Sequence[bool]], k: int) -> float:
    """The mean over cases of pass_at_k(n_i, c_i, k), each case with its own n_i (>= k)."""
    values = [pass_at_k(len(case), sum(bool(x) for x in case), k) for case in samples]
    return _mean(values) if values else math.nan


def _majority(votes: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the plurality-voted answer is correct (None votes excluded). A tie between
    different answers has no winner and counts as wrong: sample order is arbitrary under
    concurrency, so breaking ties by position would make the figure depend on timing."""
    counts: dict[str, int] = {}
    right: dict[str, bool] = {}
    for vote, ok in zip(votes, correct, strict=True):
        if vote is None:
            continue
        counts[vote] = counts.get(vote, 0) + 1
        right[vote] = right.get(vote, False) or bool(ok)
    if not counts:
        return False
    best = max(counts.values())
    winners = [v for v, n in counts.items() if n == best]
    return len(winners) == 1 and right[winners[0]]


def case_metrics(
    samples: Sequence[Sequence[bool]],
    votes: Sequence[Sequence[str | None]] | None,
    k: int,
) -> dict[str, float]:
    """Repeated-sampling metrics, in percent, keyed with the actual ``k`` (``"avg@4"``...).

    ``samples[i]`` holds the correctness of the ``n_i >= k`` samples of case ``i`` (in sample
    order); ``votes[i]`` the extracted answer of each sample (``None``: nothing extracted).

    * ``accuracy (k runs average)`` = ``100 * mean_{j<k} mean_i samples[i][j]``: the accuracy of
      run ``j`` (the ``j``-th sample of every case), averaged over the ``k`` runs. Equals
      ``avg@k`` when every case has exactly ``k`` samples.
    * ``avg@k`` = ``100 * mean_i (c_i / n_i)`` (all samples of each case).
    * ``pass@k`` = ``100 * mean_i pass_at_k(n_i, c_i, k)``: the unbiased estimator above.
    * ``cons@k`` = ``100 * mean_i [c_i^k > k / 2]`` where ``c_i^k`` counts the correct ones among
      the first ``k`` samples: the share of cases that a strict majority of samples got right
      (AISBench's definition; a tie is not a majority).
    * ``maj@k`` (only when ``votes`` is given) = ``100 * mean_i [voted answer of case i is
      correct]``, voting among the first ``k`` samples: the most frequent extracted answer,
      ``None`` votes excluded; a tie between different answers has no winner (wrong), so the
      figure never depends on the arbitrary order in which samples finished; the voted answer
      counts as correct when any sample that gave it was judged correct. A case with no vote
      is wrong.

    With no cases every figure is ``nan``.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if votes is not None and len(votes) != len(samples):
        raise ValueError(f"votes has {len(votes)} cases but samples has {len(samples)}")
    for i, case in enumerate(samples):
        if len(case) < k:
            raise ValueError(f"case {i} has {len(case)} samples, fewer than k={k}")
        if votes is not None and len(votes[i]) != len(case):
            raise ValueError(f"case {i} has {len(case)} samples but {len(votes[i])} votes")
    names = [
        f"accuracy ({k} runs average)",
        f"avg@{k}",
        f"pass@{k}",
        f"cons@{k}",
        *([f"maj@{k}"] if votes is not None else []),
    ]
    if not samples:
        return dict.fromkeys(names, math.nan)
    right_in_first_k = [sum(bool(x) for x in case[:k]) for case in samples]
    right = [sum(bool(x) for x in case) for case in samples]
    result = {
        # mean over runs of each run's accuracy = all first-k flags over N * k
        names[0]: 100.0 * math.fsum(right_in_first_k) / (len(samples) * k),
        names[1]: 100.0 * _mean([c / len(case) for case, c in zip(samples, right, strict=True)]),
        names[2]: 100.0
        * _mean([pass_at_k(len(case), c, k) for case, c in zip(samples, right, strict=True)]),
        names[3]: 100.0 * _mean([c > k / 2 for c in right_in_first_k]),
    }
    if votes is not None:
        voted = [_majority(v[:k], s[:k]) for v, s in zip(votes, samples, strict=True)]
        result[names[4]] = 100.0 * _mean(voted)
    return result


def _is_binary(values: Sequence[float]) -> bool:
    return all(v == 0.0 or v == 1.0 for v in values)


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided confidence interval, in percent, for the mean of per-case values in 0..1.

    With ``z = Phi^-1(1 - (1 - level) / 2)`` (1.95996 for 95 %), ``n`` cases and mean ``p``:

    * all values 0/1 -> Wilson score interval:
      ``(p + z^2/(2n) -+ z * sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n)``;
    * otherwise -> normal approximation on the per-case values:
      ``p -+ z * s / sqrt(n)`` with ``s`` the sample standard deviation (``ddof=1``), clipped
      to 0..1.

    With no cases (or one non-binary case) nothing is known: ``(0.0, 100.0)``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    x = [float(v) for v in values]
    if not all(0.0 <= v <= 1.0 for v in x):  # also rejects nan
        raise ValueError("confidence_interval needs per-case values in [0, 1]")
    n = len(x)
    z = NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)
    if n == 0:
        return 0.0, 100.0
    p = _mean(x)
    if _is_binary(x):
        denom = 1.0 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
        # exact ends for 0/n and n/n (no rounding residue)
        low = 0.0 if p == 0.0 else center - half
        high = 1.0 if p == 1.0 else center + half
    else:
        if n < 2:
            return 0.0, 100.0
        half = z * stdev(x) / math.sqrt(n)
        low, high = p - half, p + half
    return 100.0 * max(0.0, low), 100.0 * min(1.0, high)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts.

    Under H0 each of the ``m = a_only + b_only`` discordant cases is equally likely to favour
    either model, so ``min(a_only, b_only) ~ Binomial(m, 1/2)`` and
    ``p = min(1, 2 * sum_{i=0..min} C(m, i) / 2^m)`` (``p = 1`` when ``m = 0``), computed
    exactly in integers with ``math.comb``.
    """
    m = a_only + b_only
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2**m)


def paired_bootstrap(
    diff: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> float:
    """Two-sided paired bootstrap p-value for ``mean(diff) != 0``.

    Resample the ``n`` per-case differences ``d_i = a_i - b_i`` with replacement ``B`` times
    (fixed seed) to get means ``d*_b``; shifting them by the observed mean ``d`` gives the null
    distribution, so ``p = (1 + #{b : |d*_b - d| >= |d|}) / (B + 1)``. ``p = 1`` when ``d = 0``.
    """
    import numpy as np

    n = diff.size
    observed = float(diff.mean())
    if observed == 0.0:
        return 1.0
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))
    extreme = 0
    done = 0
    tol = 1e-12 * max(1.0, abs(observed))
    while done < resamples:
        size = min(chunk, resamples - done)
        idx = rng.integers(0, n, size=(size, n))
        means = diff[idx].mean(axis=1)
        extreme += int(np.count_nonzero(np.abs(means - observed) >= abs(observed) - tol))
        done += size
    return (extreme + 1) / (resamples + 1)


def paired_significance(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Is model A's score different from model B's on the same cases?

    ``a[i]`` and ``b[i]`` are the two models' scores on case ``i`` (0..1).

    * All values 0/1 -> exact McNemar test (:func:`mcnemar_exact`) on the discordant pairs
      (cases only A got right vs cases only B got right).
    * Otherwise -> paired bootstrap (:func:`paired_bootstrap`, seed 0, 10,000 resamples).

    Returns ``{"test": "mcnemar" | "paired_bootstrap", "p_value", "diff", "n", "significant"}``
    where ``diff = 100 * (mean(a) - mean(b))`` in percentage points and ``significant`` is
    ``p_value < 0.05``.
    """
    x = [float(v) for v in a]
    y = [float(v) for v in b]
    if len(x) != len(y):
        raise ValueError(f"paired scores need the same cases: got {len(x)} and {len(y)}")
    n = len(x)
    if n == 0:
        return {"test": "mcnemar", "p_value": 1.0, "diff": 0.0, "n": 0, "significant": False}
    if _is_binary(x) and _is_binary(y):
        test = "mcnemar"
        a_only = sum(1 for i, j in zip(x, y) if i == 1.0 and j == 0.0)
        b_only = sum(1 for i, j in zip(x, y) if i == 0.0 and j == 1.0)
        p_value = mcnemar_exact(a_only, b_only)
    else:
        import numpy as np

        test = "paired_bootstrap"
        p_value = paired_bootstrap(np.asarray(x) - np.asarray(y))
    return {
        "test": test,
        "p_value": float(p_value),
        "diff": 100.0 * (_mean(x) - _mean(y)),
        "n": n,
        "significant": bool(p_value < SIGNIFICANCE_LEVEL),
    }
