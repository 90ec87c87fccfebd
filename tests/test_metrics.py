# python -m pytest -q tests/test_metrics.py  — avg@k, unbiased pass@k, bootstrap best@k and CIs against hand-computed values.
import math

import numpy as np
import pytest

from dynamo.metrics import avg_at_k, best_at_k, bootstrap_ci, ks_up_to, pass_at_k, per_problem_scores, summarize


def test_ks_are_powers_of_two_then_k_itself():
    assert ks_up_to(32) == [1, 2, 4, 8, 16, 32]
    assert ks_up_to(6) == [1, 2, 4, 6]
    assert ks_up_to(2) == [1, 2] and ks_up_to(1) == [1]


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 0, 1, 0.0), (4, 0, 4, 0.0),            # c = 0: never solved, whatever k (also k = n)
    (4, 4, 1, 1.0), (4, 4, 4, 1.0),            # c = n: always solved
    (4, 1, 1, 0.25),                           # pass@1 = c / n
    (4, 1, 2, 0.5),                            # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 1, 4, 1.0),                            # k = n with one correct: every draw holds it
    (5, 2, 2, 0.7),                            # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 3, 0.9),                            # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (5, 2, 4, 1.0),                            # n - c = 3 < k: always solved
    (10, 3, 5, 11 / 12),                       # 1 - C(7,5)/C(10,5) = 1 - 21/252
    (32, 1, 32, 1.0), (32, 0, 32, 0.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_exact_binomials_where_they_are_huge():
    for n, c, k in [(200, 3, 100), (1000, 1, 1), (1000, 7, 500), (512, 100, 64)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # Python ints: exact before the division
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12, abs=1e-15)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_avg_at_k_is_the_mean_fraction_correct_and_equals_pass_at_1():
    verdicts = [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert avg_at_k(verdicts) == pytest.approx((0.25 + 1 + 0) / 3)
    scores = per_problem_scores(verdicts, resamples=10)
    assert np.allclose(scores["avg@4"], scores["pass@1"])
    assert list(scores) == ["avg@4", "pass@1", "pass@2", "pass@4", "best@1", "best@2", "best@4"]


def test_best_at_k_is_verls_bootstrap_and_understates_pass_at_k():
    v = [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    best = best_at_k(v, 4, resamples=20000, seed=0)
    assert best[1] == 0.0 and best[2] == 1.0  # c = 0 and c = n are exact, whatever the draws
    # With replacement its expectation is 1 - (1 - c/n)^k = 1 - (3/4)^4, below pass@4 = 1 (k = n).
    assert best[0] == pytest.approx(1 - 0.75 ** 4, abs=0.01) and best[0] < pass_at_k(4, 1, 4)
    assert np.array_equal(best, best_at_k(v, 4, resamples=20000, seed=0))  # seeded
    assert best_at_k(v, 1, resamples=20000, seed=1)[0] == pytest.approx(0.25, abs=0.01)


def test_bootstrap_ci_of_one_benchmark_and_of_the_average():
    assert bootstrap_ci([[0.3] * 10]) == pytest.approx((0.3, 0.3))
    lo, hi = bootstrap_ci([[0] * 50 + [1] * 50], resamples=4000, seed=0)
    assert lo == pytest.approx(0.5 - 1.96 * 0.05, abs=0.02) and hi == pytest.approx(0.5 + 1.96 * 0.05, abs=0.02)
    # Problems are resampled within each benchmark; benchmarks are fixed, so these two give no spread.
    assert bootstrap_ci([[0.0] * 5, [1.0] * 20]) == pytest.approx((0.5, 0.5))
    assert bootstrap_ci([[0, 1] * 20], seed=3) == bootstrap_ci([[0, 1] * 20], seed=3)


def test_summary_averages_benchmarks_unweighted():
    out = summarize({"a": [[1, 1]], "b": [[0, 0], [0, 0], [0, 1]]}, resamples=100)
    assert out["a"]["avg@2"] == 1.0 and out["b"]["avg@2"] == pytest.approx(1 / 6)
    assert out["Avg"]["avg@2"] == pytest.approx((1 + 1 / 6) / 2)  # not the pooled 3/8
    assert out["b"]["pass@2"] == pytest.approx(1 / 3) and out["a"]["pass@2_ci95"] == (1.0, 1.0)
    lo, hi = out["Avg"]["pass@2_ci95"]
    assert lo <= out["Avg"]["pass@2"] <= hi


def test_ragged_samples_are_rejected():
    with pytest.raises(ValueError, match="same number of samples"):
        per_problem_scores([[1, 0], [1]])
