"""Statistics and verdicts (issue #17): the numbers against scipy, statsmodels and a bootstrap; the
seeds-and-images interval against a population of known variance; every verdict outcome on
constructed data; families (intersection-union, Holm within a claim); regime tiers; divergence."""

import math
import re

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from resattn.report.claims import Piece, combine, judge, outcome, words
from resattn.report.regime import regime
from resattn.report.stats import (
    Estimate,
    consistent_level,
    detectable,
    estimate,
    holm,
    ratio_level,
    seeds_needed,
    summarise,
    upper_sd,
)
from resattn.report.tables import markdown
from resattn.study.record import pack_bits
from resattn.study.spec import Claim, load_study
from tests.test_store import _result, _runs

DIFFS = np.array([0.8, 1.9, 1.1, 2.4, 1.3])
HOUR = [5.0, 6.0, 7.0, 5.5, 6.5]
PAPER_RUN = {  # what a run at the paper's protocol records
    "epochs": [{"epoch": 204, "step": 160_000, "val/err1": 5.0}],
    "data": {"train_images": 50_000, "val_images": 0, "test_images": 10_000, "content": "0123456789abcdef"},
}


def test_the_seed_only_interval_and_p_are_scipys():
    est = estimate(DIFFS)
    ci = stats.ttest_1samp(DIFFS, 0.0).confidence_interval(0.95)
    assert (est.n, est.delta, est.sd) == (5, pytest.approx(DIFFS.mean()), pytest.approx(DIFFS.std(ddof=1)))
    assert est.interval(images=False) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert est.p() == pytest.approx(stats.ttest_1samp(DIFFS, 0.0).pvalue)
    assert est.interval() == est.interval(images=False)  # no per-image record: seeds only


def test_holm_is_statsmodels_and_nan_is_no_test():
    p = [0.01, 0.04, math.nan, 0.03, 0.2]
    ok = [0.01, 0.04, 0.03, 0.2]
    expected = multipletests(ok, method="holm")[1]
    out = holm(p)
    assert math.isnan(out[2]) and [out[i] for i in (0, 1, 3, 4)] == pytest.approx(list(expected))
    assert out[0] == pytest.approx(0.04)  # 4 tests: the smallest p times 4


def test_an_interval_at_the_consistent_level_excludes_0_exactly_when_holm_rejects():
    rng = np.random.default_rng(1)
    for _ in range(20):
        ests = [estimate(rng.normal(rng.uniform(0, 2), 1.0, 5)) for _ in range(4)]
        p = [e.p() for e in ests]
        for e, raw, adj in zip(ests, p, holm(p)):
            low, high = e.interval(consistent_level(raw, adj))
            assert (low > 0 or high < 0) == (adj < 0.05)


def test_the_upper_sd_bound_is_the_chi_square_one_and_covers_80_percent():
    assert upper_sd(1.0, 3) == pytest.approx(math.sqrt(2 / stats.chi2.ppf(0.2, 2)))
    rng = np.random.default_rng(2)
    sds = rng.normal(0, 1.0, (4000, 3)).std(axis=1, ddof=1)
    covered = np.mean([upper_sd(s, 3) >= 1.0 for s in sds])
    assert 0.77 < covered < 0.83


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_planning_uses_statsmodels_power_and_the_upper_sd(n):
    est = Estimate(n, 1.0, 1.7)
    effect = TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8)
    assert detectable(est) == pytest.approx(effect * upper_sd(1.7, n), rel=1e-4)
    assert detectable(est, alpha=0.0125) > detectable(est)  # a stricter α detects only larger effects
    nobs = TTestPower().solve_power(effect_size=1.0 / upper_sd(1.7, n), nobs=None, alpha=0.05, power=0.8)
    assert seeds_needed(1.0, est) == max(2, math.ceil(nobs - 1e-9))


def test_test_images_bound_what_more_seeds_can_detect():
    """A fixed split's sampling noise stays whatever the seeds: an effect below it needs ∞ seeds."""
    est = Estimate(3, 1.0, 0.2, se_images=0.5, images=1000)
    assert seeds_needed(0.2, est) == math.inf and math.isfinite(seeds_needed(3.0, est))


def _wrong(rng, p, n):
    return rng.random(n) < p


def test_the_image_term_is_a_bootstrap_over_test_images():
    """Seeds that agree exactly (no seed spread): the interval is the test images' alone, and its
    standard error equals a paired bootstrap's over the images (2,000 resamples)."""
    rng = np.random.default_rng(3)
    n = 2000
    ref = _wrong(rng, 0.3, n)
    var = ref.copy()
    flip = rng.random(n) < 0.1
    var[flip] = ~var[flip]
    d = 100.0 * (var.astype(float) - ref)
    est = estimate(np.full(3, d.mean()), d)
    boot = np.array([d[rng.integers(0, n, n)].mean() for _ in range(2000)])
    assert est.se() == pytest.approx(boot.std(ddof=1), rel=0.08)
    assert est.se() == pytest.approx(100 * math.sqrt(np.mean(flip) / n), rel=0.05)  # ±1 on a tenth of the images
    assert est.df() == pytest.approx(n - 1)
    low, high = est.interval()
    assert high - low == pytest.approx(2 * stats.t.ppf(0.975, n - 1) * est.se())


def test_the_seeds_and_images_interval_covers_a_known_population_difference():
    """A population of 200,000 test images with a known mean difference; each simulated study draws
    1,000 of them and three seeds whose differences scatter (SD 0.3 pp) around the sample's. The
    seeds-and-images interval covers the population's difference about 95% of the time; the
    seed-only interval, blind to which images were drawn, far less often."""
    rng = np.random.default_rng(4)
    population = 100.0 * rng.choice([-1.0, 0.0, 1.0], size=200_000, p=[0.1, 0.78, 0.12])
    truth = population.mean()
    both = seeds_only = 0
    trials = 400
    for _ in range(trials):
        d = population[rng.integers(0, len(population), 1000)]
        per_seed = d.mean() + rng.normal(0, 0.3, 3)
        est = estimate(per_seed, d)
        low, high = est.interval()
        both += low <= truth <= high
        low, high = est.interval(images=False)
        seeds_only += low <= truth <= high
    assert 0.93 <= both / trials <= 0.99
    assert seeds_only / trials < 0.8


def test_adding_the_test_images_never_narrows_the_interval():
    """With 3 seeds the Satterthwaite df outgrow 2: the wider of the two intervals is kept."""
    est = Estimate(3, 2.0, 1.0, se_images=0.2, images=1000)
    seeds, both = est.interval(images=False), est.interval()
    assert both[0] <= seeds[0] and both[1] >= seeds[1] and est.p() >= est.p(images=False)


def _claim(**kw) -> Claim:
    return Claim("c", "each", ("x",), **kw)


def _piece(paper=0.96, side=1.0) -> Piece:
    return Piece("x − ref", Estimate(5, 1.0, 0.5), 0.0, side, paper)


@pytest.mark.parametrize(
    "low, high, claim, expected",
    [
        (0.5, 1.5, _claim(), "reproduced"),  # excludes 0 on the paper's side, holds its value
        (3.0, 7.0, _claim(), "direction only"),  # excludes the paper's value: five times the effect
        (1.1, 1.3, _claim(margin=0.5), "reproduced"),  # within the declared equivalence margin
        (1.1, 1.3, _claim(), "direction only"),  # the same without a margin
        (-2.0, -0.5, _claim(), "contradicted"),  # the other side
        (-0.2, 0.2, _claim(smallest_effect=0.5), "negligible"),  # equivalence: below the effect of interest
        (0.2, 0.4, _claim(smallest_effect=2.0), "negligible"),  # real, on the paper's side, but below interest
        (-0.2, 0.2, _claim(), "inconclusive"),
        (math.nan, math.nan, _claim(), "inconclusive"),
    ],
)
def test_each_outcome_of_an_interval(low, high, claim, expected):
    assert outcome(low, high, _piece(), claim) == expected


def test_a_claim_without_a_paper_value_is_judged_on_direction():
    assert outcome(0.5, 1.5, _piece(paper=math.nan), _claim()) == "supported"
    assert words("supported", "paper protocol") == "supported (direction; no paper value to weigh)"
    assert words("supported", "pilot", paper=False) == "pilot: consistent with the claimed direction"


def test_only_the_paper_protocol_reproduces_or_contradicts():
    for tier in ("pilot", "shortened"):
        said = [words(o, tier, 5.4) for o in ("reproduced", "direction only", "contradicted", "inconclusive")]
        assert not any("reproduced" in s or "contradicted" in s for s in said)
        assert said[0] == f"{tier}: consistent with the paper's direction, effect 5.4x the paper's"
        assert said[2] == f"{tier}: inconsistent with the paper's direction" and said[3] == f"{tier}: unclear"
    assert words("direction only", "paper protocol", 5.4) == "direction only, effect 5.4x the paper's"
    assert words("reproduced", "paper protocol") == "reproduced"


def test_a_claim_of_all_its_pieces_is_an_intersection_union_test():
    """Each piece at α on its own (no adjustment) for "all of these"; a contradiction needs Holm."""
    assert combine(["reproduced"] * 4, ["inconclusive"] * 4) == "reproduced"
    assert combine(["reproduced", "direction only"], ["inconclusive"] * 2) == "direction only"
    assert combine(["reproduced", "inconclusive"], ["reproduced", "inconclusive"]) == "inconclusive"
    assert combine(["reproduced", "contradicted"], ["reproduced", "inconclusive"]) == "inconclusive"
    assert combine(["reproduced", "contradicted"], ["reproduced", "contradicted"]) == "contradicted"
    assert combine(["needs ≥ 2 seeds", "not run"], ["needs ≥ 2 seeds", "not run"]) == "needs ≥ 2 seeds"
    assert combine(["not run"], ["not run"]) == combine([], []) == "not run"
    # four pieces at p = 0.04 each: every one holds alone (IUT), none survives Holm (4 x 0.04)
    assert holm([0.04] * 4) == pytest.approx([0.16] * 4)


def _mask_results(local, hour, profile="paper", images=None, diverged=(), extra=None):
    """mask_structure results (the paper: the FLOP-matched local_conv 0.96 pp worse than the hourglass)."""
    specs = {(r.variant, r.seed): r for r in _runs(profile=profile, seeds=len(hour))}
    run = PAPER_RUN if profile == "paper" else {}
    results = []
    for variant, errors in (("hourglass", hour), ("local_conv_matched", local), ("local_conv", extra)):
        for s, e in enumerate(errors or []):
            if variant == "local_conv_matched" and s in diverged:
                results.append(
                    _result(
                        specs[variant, s],
                        status="diverged",
                        test_error=None,
                        test={},
                        diverged={"step": 3, "epoch": 0, "loss": "nan"},
                        **run,
                    )
                )
                continue
            bits = {"test_wrong": pack_bits(images[variant, s])} if images else {}
            results.append(_result(specs[variant, s], test_error=e, **run, **bits))
    return results


def _row(results, study="mask_structure"):
    return judge(load_study(study), results).iloc[0]


@pytest.mark.parametrize(
    "diffs, expected",
    [
        ([0.9, 1.1, 0.8, 1.2, 0.95], "reproduced"),  # worse, as in the paper, by about its 0.96 pp
        ([4.9, 5.1, 4.8, 5.2, 4.95], "direction only"),  # five times the paper's
        ([-0.9, -1.1, -0.8, -1.2, -0.95], "contradicted"),  # better, every seed
        ([1.0, -1.2, 0.3, -0.4, 0.6], "inconclusive"),  # noise
    ],
)
def test_result_sets_give_each_verdict_at_the_paper_protocol(diffs, expected):
    row = _row(_mask_results([h + d for h, d in zip(HOUR, diffs)], HOUR))
    assert row["tier"] == "paper protocol" and row["reductions"] == "" and row["outcome"] == expected
    assert row["claim_outcome"] == expected and row["paper"] == pytest.approx(0.96) and row["seeds"] == 5
    assert row["value"] == pytest.approx(np.mean(diffs)) and row["interval_sources"] == "seeds only"
    if expected == "direction only":
        assert row["ratio"] == pytest.approx(np.mean(diffs) / 0.96)
    assert row["seeds_for_paper"] >= 2 or expected == "inconclusive"


def test_a_quick_configuration_is_a_pilot_and_plans_nothing_for_the_paper():
    local = [h + d for h, d in zip(HOUR, [4.9, 5.1, 4.8, 5.2, 4.95])]
    row = _row(_mask_results(local, HOUR, profile="quick"))
    assert row["tier"] == "pilot" and "width 0.25 (paper 1)" in row["reductions"]
    assert "data unrecorded" in row["reductions"] and math.isnan(row["seeds_for_paper"])
    assert row["detectable"] > 0  # the pilot's own estimate
    assert words(row["claim_outcome"], row["tier"], row["ratio"]).startswith("pilot: consistent")


def test_per_image_outcomes_widen_the_interval_by_the_test_sample():
    rng = np.random.default_rng(5)
    n = 1000
    images, hour, local = {}, [], []
    for s in range(5):
        ref = _wrong(rng, 0.3, n)
        var = ref.copy()
        flip = rng.random(n) < 0.12
        var[flip] = rng.random(flip.sum()) < 0.6  # more wrong than right among the changed ones
        images["hourglass", s], images["local_conv_matched", s] = ref, var
        hour.append(100 * ref.mean())
        local.append(100 * var.mean())
    row = _row(_mask_results(local, hour, images=images))
    assert row["interval_sources"] == "seeds and test images"
    seed_width = row["seed_ci95_high"] - row["seed_ci95_low"]
    assert row["ci95_high"] - row["ci95_low"] > seed_width


def test_a_variant_in_no_claim_changes_no_verdict():
    """local_conv is in no claim of mask_structure: its results (wildly different) change nothing."""
    local = [h + d for h, d in zip(HOUR, [0.9, 2.1, 0.3, 1.9, 0.95])]
    alone = judge(load_study("mask_structure"), _mask_results(local, HOUR))
    extra = judge(load_study("mask_structure"), _mask_results(local, HOUR, extra=[h + 30 for h in HOUR]))
    cols = ["outcome", "claim_outcome", "p", "p_holm", "ci_low", "ci_high", "ci95_low", "value"]
    assert alone[cols].equals(extra[cols])


def test_a_diverged_run_is_left_out_and_its_imputation_is_the_sensitivity():
    local = [h - d for h, d in zip(HOUR, DIFFS)]  # better than the hourglass in every seed
    row = _row(_mask_results(local, HOUR, diverged=(2,)))
    diffs = np.delete(np.subtract(local, HOUR), 2)
    assert row["seeds"] == 4 and row["diverged"] == 1 and row["value"] == pytest.approx(diffs.mean())
    assert row["outcome"] == "contradicted" and row["sensitivity"] == "inconclusive"  # at 90% error, seed 2 flips
    summary = summarise(load_study("mask_structure"), _mask_results(local, HOUR, diverged=(2,))).set_index("variant")
    assert summary.loc["local_conv_matched", "diverged"] == 1 and summary.loc["local_conv_matched", "seeds"] == 4
    assert summary.loc["local_conv_matched", "diverged_p"] == pytest.approx(1.0)  # 1 of 5 against 0 of 5


DEPTHS = (56, 92, 128, 164)


def _arl_vs_nal(gap, seeds: int = 3, probe=lambda variant, seed: {}, profile="paper"):
    """ARL_vs_NAL results: ARL at 5% + noise - 0.01 pp per layer; NAL at ARL + gap(depth, seed)."""
    rng = np.random.default_rng(0)
    specs = {(r.variant, r.seed): r for r in _runs(study="ARL_vs_NAL", seeds=seeds, profile=profile)}
    results = []
    for (variant, seed), spec in specs.items():
        learning, depth = variant.split("-")
        base = 6.0 - 0.01 * int(depth) + rng.normal(0, 0.05)
        error = base + (gap(int(depth), seed) if learning == "nal" else 0.0)
        results.append(_result(spec, test_error=error, probe=probe(variant, seed), **PAPER_RUN))
    return results


@pytest.mark.parametrize(
    "gap, expected",
    [
        (lambda d, s: 0.023 * (d - 56) + [0.1, -0.2, 0.15][s], "reproduced"),  # the paper's 2.3 pp / 100 layers
        (lambda d, s: 0.12 * d + [0.1, -0.2, 0.15][s], "direction only"),  # five times it
        (lambda d, s: -0.04 * d + [0.1, -0.2, 0.15][s], "contradicted"),  # shrinks
        (lambda d, s: [0.5, -0.5, 0.1][s] * (d - 110) / 54, "inconclusive"),  # a seed-dependent slope
    ],
)
def test_a_trend_is_judged_by_the_slope_of_the_per_seed_differences(gap, expected):
    study = load_study("ARL_vs_NAL")
    claim = next(c for c in study.claims if c.kind == "trend" and not c.absolute)
    results = _arl_vs_nal(gap)
    row = judge(study, results).set_index("claim").loc[claim.text]
    errors = {(r.variant, r.seed): r.test_error for r in results}
    slopes = [  # an independent computation: numpy's least squares per seed, scipy's t interval over seeds
        100 * np.polyfit(DEPTHS, [errors[f"nal-{d}", s] - errors[f"arl-{d}", s] for d in DEPTHS], 1)[0]
        for s in range(3)
    ]
    ci = stats.ttest_1samp(slopes, 0.0).confidence_interval(0.95)
    assert row["seeds"] == 3 and row["value"] == pytest.approx(np.mean(slopes))
    assert (row["ci95_low"], row["ci95_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    paper = [study.paper[("nal", str(d))] - study.paper[("arl", str(d))] for d in DEPTHS]
    assert row["paper"] == pytest.approx(100 * np.polyfit(DEPTHS, paper, 1)[0])
    assert row["outcome"] == expected == row["claim_outcome"]


def test_arl_falling_with_depth_is_a_claim_of_its_own():
    study = load_study("ARL_vs_NAL")
    claim = next(c for c in study.claims if c.kind == "trend" and c.absolute)
    row = judge(study, _arl_vs_nal(lambda d, s: 1.0)).set_index("claim").loc[claim.text]
    paper = [study.paper[("arl", str(d))] for d in DEPTHS]
    assert row["paper"] == pytest.approx(100 * np.polyfit(DEPTHS, paper, 1)[0]) and row["paper"] < 0
    assert row["value"] == pytest.approx(-1.0, abs=0.3) and row["outcome"] in ("reproduced", "direction only")


def test_the_fig4_claim_is_judged_on_the_log_scale_against_the_threshold():
    study = load_study("ARL_vs_NAL")
    claim = next(c for c in study.claims if c.kind == "response")  # noqa: F841 (used in query strings)
    values = {"nal-164": [0.02, 0.03, 0.01], "arl-164": [0.5, 0.55, 0.45], "none-164": [0.6, 0.5, 0.55]}

    def probe(variant, seed):
        v = values.get(variant, [0.5] * 3)[seed]
        return {"stage1_rel": 1.0, "stage2_rel": v, "stage3_rel": v / 2}

    rows = judge(study, _arl_vs_nal(lambda d, s: 1.0, probe=probe)).query("claim == @claim.text")
    assert len(rows) == 6 and set(rows["outcome"]) == {"supported"} and rows["claim_outcome"].iloc[0] == "supported"
    nal2 = rows[rows["evidence"].str.startswith("nal-164 stage-2")].iloc[0]
    assert nal2["value"] == pytest.approx(stats.gmean([0.02, 0.03, 0.01])) and nal2["paper"] == 0.02
    assert 0 < nal2["ci95_low"] < nal2["value"] < nal2["ci95_high"]  # log scale: never below 0
    assert "this project's threshold" in nal2["evidence"]
    values["nal-164"] = [0.4, 0.5, 0.45]  # NAL's response does not collapse: contradicted
    rows = judge(study, _arl_vs_nal(lambda d, s: 1.0, probe=probe)).query("claim == @claim.text")
    assert rows["claim_outcome"].iloc[0] == "contradicted"
    values["nal-164"] = [0.01, 0.5, 0.02]  # one seed collapses, one does not: the interval spans 0.1
    rows = judge(study, _arl_vs_nal(lambda d, s: 1.0, probe=probe)).query("claim == @claim.text")
    assert rows["claim_outcome"].iloc[0] == "inconclusive"


def test_ratio_intervals_are_on_the_log_scale():
    mean, low, high = ratio_level([0.001, 0.0005, 0.003])
    assert mean == pytest.approx(stats.gmean([0.001, 0.0005, 0.003])) and 0 < low < mean < high


def test_the_tier_comes_from_what_the_runs_ran_not_the_profile_name():
    specs = _runs("trainer.max_steps=2000", profile="paper", seeds=1)
    cut = regime([_result(s, **{**PAPER_RUN, "epochs": [{"epoch": 2, "step": 2000}]}) for s in specs])
    assert cut.tier == "pilot" and "2,000 of 160,000 steps" in cut.reductions
    gpu = regime(
        [_result(s, epochs=[{"epoch": 40, "step": 32_000}], data=PAPER_RUN["data"]) for s in _runs(profile="gpu")]
    )
    assert gpu.tier == "shortened" and "bf16-mixed (paper 32-true)" in gpu.reductions and cut.rank < gpu.rank
    paper = regime([_result(s, **PAPER_RUN) for s in _runs(profile="paper")])
    assert paper.tier == "paper protocol" and paper.reductions == () and paper.fraction == 1.0
    unrecorded = regime([_result(s, epochs=PAPER_RUN["epochs"]) for s in _runs(profile="paper")])
    assert unrecorded.tier == "shortened" and unrecorded.reductions == ("data unrecorded",)


def test_the_markdown_table_has_as_many_cells_in_every_row_as_in_its_header():
    specs = {(r.variant, r.seed): r for r in _runs(seeds=2)}
    results = [
        _result(specs[v, s], test_error=HOUR[s] + i) for i, v in enumerate(("hourglass", "local_conv")) for s in (0, 1)
    ]
    lines = markdown(summarise(load_study("mask_structure"), results)).splitlines()
    cells = [len(re.findall(r"(?<!\\)\|", line)) for line in lines]
    assert "seed-only 95% CI" in lines[0] and len(set(cells)) == 1, cells
