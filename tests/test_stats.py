"""Verdicts from intervals and power (issue #11): the numbers against scipy and statsmodels on fixed
inputs, result sets that give each verdict, diverged runs counting at chance, trends judged by the
slope of the per-seed differences, and the Fig. 4 claim judged against its threshold."""

import math
import re

import numpy as np
import pytest
from scipy import stats

from resattn.report.claims import combine, judge
from resattn.report.stats import detectable, paired, seeds_needed, summarise, trend, verdict
from resattn.report.tables import markdown
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
    nobs = power.TTestPower().solve_power(
        effect_size=delta / sd, nobs=None, alpha=0.05, power=0.8, alternative="two-sided"
    )
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
            results.append(
                _result(
                    specs["local_conv_matched", s],
                    status="diverged",
                    test_error=None,
                    test={},
                    diverged={"step": 3, "epoch": 0, "loss": "nan"},
                )
            )
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


DEPTHS = (56, 92, 128, 164)


def _arl_vs_nal(gap, seeds: int = 3, probe=lambda variant, seed: {}):
    """ARL_vs_NAL results: ARL at 5% + noise; NAL at ARL + gap(depth, seed)."""
    rng = np.random.default_rng(0)
    specs = {(r.variant, r.seed): r for r in _runs(study="ARL_vs_NAL", seeds=seeds)}
    results = []
    for (variant, seed), spec in specs.items():
        learning, depth = variant.split("-")
        base = 5.0 + rng.normal(0, 0.3)
        error = base + (gap(int(depth), seed) if learning == "nal" else 0.0)
        results.append(_result(spec, test_error=error, probe=probe(variant, seed)))
    return results


@pytest.mark.parametrize(
    "gap, expected",
    [
        (lambda d, s: 0.04 * d + [0.1, -0.2, 0.15][s], "reproduced"),  # grows with depth, as in the paper
        (lambda d, s: -0.04 * d + [0.1, -0.2, 0.15][s], "contradicted"),  # shrinks
        (lambda d, s: [0.5, -0.5, 0.1][s] * (d - 110) / 54, "inconclusive"),  # a seed-dependent slope
    ],
)
def test_a_trend_is_judged_by_the_slope_of_the_per_seed_differences(gap, expected):
    study = load_study("ARL_vs_NAL")
    claim = next(c for c in study.claims if c.kind == "trend")
    results = _arl_vs_nal(gap)
    t = trend(study, results, claim.variants, claim.factor, claim.per)
    errors = {(r.variant, r.seed): r.test_error for r in results}
    slopes = [  # an independent computation: numpy's least squares per seed, scipy's t interval over seeds
        100 * np.polyfit(DEPTHS, [errors[f"nal-{d}", s] - errors[f"arl-{d}", s] for d in DEPTHS], 1)[0]
        for s in range(3)
    ]
    ci = stats.ttest_1samp(slopes, 0.0).confidence_interval(0.95)
    assert t.slope.n == 3 and t.slope.delta == pytest.approx(np.mean(slopes))
    assert (t.slope.low, t.slope.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    paper = [study.paper[("nal", str(d))] - study.paper[("arl", str(d))] for d in DEPTHS]
    assert t.paper == pytest.approx(100 * np.polyfit(DEPTHS, paper, 1)[0])
    summary = summarise(study, results)
    judged = judge(study, summary, results).set_index("claim")
    assert judged.loc[claim.text, "verdict"] == expected == judged.loc[claim.text, "claim_verdict"]


def test_the_fig4_claim_is_judged_by_intervals_against_the_threshold():
    study = load_study("ARL_vs_NAL")
    claim = next(c for c in study.claims if c.kind == "response")
    values = {"nal-164": [0.02, 0.03, 0.01], "arl-164": [0.5, 0.55, 0.45], "none-164": [0.6, 0.5, 0.55]}

    def probe(variant, seed):
        v = values.get(variant, [0.5] * 3)[seed]
        return {"stage1_rel": 1.0, "stage2_rel": v, "stage3_rel": v / 2}

    judged = judge(study, summarise(study, r := _arl_vs_nal(lambda d, s: 1.0, probe=probe)), r)
    rows = judged[judged["claim"] == claim.text]
    assert len(rows) == 6 and set(rows["verdict"]) == {"reproduced"} and rows["claim_verdict"].iloc[0] == "reproduced"
    nal2 = rows[rows["evidence"].str.startswith("nal-164 stage-2")].iloc[0]
    assert nal2["value"] == pytest.approx(0.02) and nal2["paper"] == 0.02
    values["nal-164"] = [0.4, 0.5, 0.45]  # NAL's response does not collapse: contradicted
    judged = judge(study, summarise(study, r := _arl_vs_nal(lambda d, s: 1.0, probe=probe)), r)
    assert judged[judged["claim"] == claim.text]["claim_verdict"].iloc[0] == "contradicted"
    values["nal-164"] = [0.01, 0.5, 0.02]  # one seed collapses, one does not: the interval spans 0.1
    judged = judge(study, summarise(study, r := _arl_vs_nal(lambda d, s: 1.0, probe=probe)), r)
    assert judged[judged["claim"] == claim.text]["claim_verdict"].iloc[0] == "inconclusive"


def test_claim_verdicts_combine_their_evidence():
    assert combine(["reproduced", "reproduced"]) == "reproduced"
    assert combine(["reproduced", "inconclusive"]) == "inconclusive"
    assert combine(["reproduced", "contradicted", "inconclusive"]) == "contradicted"
    assert combine(["needs ≥ 2 seeds", "not run"]) == "needs ≥ 2 seeds"
    assert combine(["not run", "not run"]) == combine([]) == "not run"
    assert combine(["reproduced", "not run"]) == "inconclusive"  # part of the claim was never measured


def test_a_diverged_run_enters_the_claim_and_is_named():
    study = load_study("mask_structure")
    local = [h + d for h, d in zip(HOUR, DIFFS)]
    specs = {(r.variant, r.seed): r for r in _runs(seeds=5)}
    results = [_result(specs["hourglass", s], test_error=e) for s, e in enumerate(HOUR)]
    results += [_result(specs["local_conv_matched", s], test_error=e) for s, e in enumerate(local)]
    results.append(
        _result(
            specs["hourglass", 5 - 1],
            test_error=None,
            test={},
            status="diverged",
            diverged={"step": 1, "epoch": 0, "loss": "nan"},
        )
    )  # replaces seed 4's result
    results = [r for i, r in enumerate(results) if not (r.variant == "hourglass" and r.seed == 4 and i < 5)]
    row = judge(study, summarise(study, results), results).iloc[0]
    assert row["diverged"] == 1 and row["seeds"] == 5
    diffs = np.subtract(local, HOUR)
    diffs[4] = local[4] - 90.0  # the diverged reference counts at chance error
    assert row["value"] == pytest.approx(diffs.mean())


def test_the_markdown_table_has_as_many_cells_in_every_row_as_in_its_header():
    specs = {(r.variant, r.seed): r for r in _runs(seeds=2)}
    results = [
        _result(specs[v, s], test_error=HOUR[s] + i) for i, v in enumerate(("hourglass", "local_conv")) for s in (0, 1)
    ]
    lines = markdown(summarise(load_study("mask_structure"), results)).splitlines()
    cells = [len(re.findall(r"(?<!\\)\|", line)) for line in lines]
    assert "detectable \\|Δ\\|" in lines[0] and len(set(cells)) == 1, cells


def test_intervals_of_non_negative_quantities_stay_non_negative():
    """Issue #20: a response's interval went below 0 in tables and response.png."""
    from resattn.report.stats import confidence_interval, level

    values = np.array([0.001, 0.0, 0.002])
    assert confidence_interval(values)[0] < 0 <= confidence_interval(values, floor=0.0)[0]
    assert level(list(values), floor=0.0).low == 0.0
