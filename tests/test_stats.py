"""Verdicts from intervals and power (issue #11 items 1-2): the numbers against scipy and statsmodels
on fixed inputs, result sets that give each verdict, and diverged runs counting at chance."""

import math

import numpy as np
import pytest
from scipy import stats

from resattn.report.stats import detectable, paired, seeds_needed, summarise, verdict
from resattn.study.spec import load_study
from tests.test_store import _result, _runs

DIFFS = np.array([0.8, 1.9, 1.1, 2.4, 1.3])


def test_the_paired_interval_and_p_are_scipys():
    c = paired(DIFFS)
    half = stats.t.ppf(0.975, 4) * DIFFS.std(ddof=1) / math.sqrt(5)
    assert (c.n, c.delta, c.sd) == (5, pytest.approx(DIFFS.mean()), pytest.approx(DIFFS.std(ddof=1)))
    assert (c.low, c.high) == (pytest.approx(DIFFS.mean() - half), pytest.approx(DIFFS.mean() + half))
    assert c.p == pytest.approx(stats.ttest_rel(DIFFS + 5.0, np.full(5, 5.0)).pvalue)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_the_detectable_difference_is_statsmodels(n):
    power = pytest.importorskip("statsmodels.stats.power")
    effect = power.TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8, alternative="two-sided")
    assert detectable(1.7, n) == pytest.approx(effect * 1.7, rel=1e-4)


@pytest.mark.parametrize("delta, sd", [(1.0, 1.0), (0.5, 1.0), (2.0, 0.7), (0.1, 1.3)])
def test_the_seeds_needed_are_statsmodels(delta, sd):
    power = pytest.importorskip("statsmodels.stats.power")
    nobs = power.TTestPower().solve_power(effect_size=delta / sd, nobs=None, alpha=0.05, power=0.8,
                                          alternative="two-sided")
    assert seeds_needed(delta, sd) == max(2, math.ceil(nobs - 1e-9))


def test_degenerate_cases_are_defined():
    one = paired(np.array([1.5]))
    assert one.n == 1 and math.isnan(one.low) and verdict(one, 0.96, math.nan) == "needs ≥ 2 seeds"
    flat = paired(np.array([0.5, 0.5, 0.5]))  # zero variance: no t-test, no claim
    assert math.isnan(flat.p) and math.isnan(flat.low) and flat.sd == 0
    assert verdict(flat, 0.96, math.nan) == "inconclusive" and math.isnan(detectable(flat.sd, 3))
    zero = paired(np.array([-1.0, 1.0, 0.0]))
    assert zero.delta == 0 and zero.p == pytest.approx(1.0) and verdict(zero, 0.96, 1.0) == "inconclusive"
    assert seeds_needed(0.0, 1.0) == math.inf
    nan = paired(np.array([1.0, math.nan, 2.0]))
    assert math.isnan(nan.low) and verdict(nan, 0.96, math.nan) == "inconclusive"
    assert verdict(paired(DIFFS), math.nan, 0.001) == "no paper Δ"


def _summary(local: list[float], hour: list[float], diverged: tuple = ()):
    """mask_structure results: the paper has the FLOP-matched local_conv 0.96 pp worse than the hourglass reference."""
    specs = {(r.variant, r.seed): r for r in _runs(seeds=len(hour))}
    results = [_result(specs["hourglass", s], test_error=e) for s, e in enumerate(hour)]
    for s, e in enumerate(local):
        if s in diverged:
            results.append(_result(specs["local_conv_matched", s], status="diverged", test_error=None, test={},
                                   diverged={"step": 3, "epoch": 0, "loss": "nan"}))
        else:
            results.append(_result(specs["local_conv_matched", s], test_error=e))
    return summarise(load_study("mask_structure"), results).set_index("variant").loc["local_conv_matched"]


HOUR = [5.0, 6.0, 7.0, 5.5, 6.5]


@pytest.mark.parametrize(
    "local, expected",
    [
        ([h + d for h, d in zip(HOUR, DIFFS)], "reproduced"),  # worse, as in the paper, every seed
        ([h - d for h, d in zip(HOUR, DIFFS)], "contradicted"),  # better, every seed
        ([h + d for h, d in zip(HOUR, [1.0, -1.2, 0.3, -0.4, 0.6])], "inconclusive"),  # noise
    ],
)
def test_result_sets_give_each_verdict(local, expected):
    row = _summary(local, HOUR)
    assert row["verdict"] == expected
    assert row["paper_diff"] == pytest.approx(0.96) and row["paired_seeds"] == 5
    assert row["diff_vs_ref"] == pytest.approx(np.mean(np.subtract(local, HOUR)))
    assert row["detectable_diff"] == pytest.approx(detectable(np.subtract(local, HOUR).std(ddof=1), 5))


def test_one_seed_gives_no_verdict():
    row = _summary([7.0], [6.0])
    assert row["verdict"] == "needs ≥ 2 seeds" and math.isnan(row["diff_ci95_low"])


def test_a_diverged_run_counts_at_chance_error():
    local = [h - d for h, d in zip(HOUR, DIFFS)]  # better than the hourglass in every seed ...
    assert _summary(local, HOUR)["verdict"] == "contradicted"
    row = _summary(local, HOUR, diverged=(2,))  # ... unless one seed diverged: it counts as 90% error
    diffs = np.subtract(local, HOUR)
    diffs[2] = 90.0 - HOUR[2]
    assert row["diff_vs_ref"] == pytest.approx(diffs.mean()) and row["diverged"] == 1 and row["seeds"] == 5
    assert row["error_mean"] == pytest.approx(np.mean([*local[:2], 90.0, *local[3:]]))
    assert row["verdict"] == "inconclusive"


def test_error_intervals_stay_within_0_and_100():
    row = _summary([99.0, 60.0], [5.0, 6.0])
    assert row["ci95_low"] >= 0 and row["ci95_high"] <= 100
