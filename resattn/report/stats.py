"""Statistics of a study: per-variant mean, std and 95% CI over seeds; for each variant against its
reference, the mean paired difference over matched seeds with its 95% t interval and Holm-adjusted
p-value, a verdict on the paper's claim, and what the study could detect; the slope of those
differences over a factor (trend claims) and per-seed quantities against a threshold (Fig. 4).

Verdicts are decided from intervals, never from a sign alone:

- ``reproduced``: the 95% interval of Δ excludes 0 on the paper's side and the Holm p < 0.05;
- ``contradicted``: it excludes 0 on the other side and the Holm p < 0.05;
- ``inconclusive``: anything else (the data cannot tell the directions apart);
- ``needs ≥ 2 seeds``: one matched seed gives no interval; ``no paper Δ``: nothing to judge against.

With zero variance of the paired differences (the same Δ in every seed) no t-test exists: no
interval, no p, ``inconclusive``, and no power figures (there is no SD to plan with).

Next to it: the smallest |Δ| the study could detect with 80% power (two-sided paired t-test at
α = 0.05, from the observed SD of the paired differences and the number of seeds) and the seeds
needed to detect the paper's Δ with that SD. A diverged run counts with the error of chance
(1 − 1/classes), so a variant that diverges never looks better for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from resattn.config import DEFAULT_DATASET, NUM_CLASSES
from resattn.study.spec import Study
from resattn.study.store import RunResult

ALPHA, POWER, LEVEL = 0.05, 0.8, 0.95
MAX_SEEDS = 10_000  # "seeds needed" beyond this reads as infinite


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size:
        order = ok[np.argsort(p[ok])]
        m = order.size
        adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def confidence_interval(values: np.ndarray, level: float = LEVEL, floor: float | None = None) -> tuple[float, float]:
    """Student-t interval of the mean, its low end at least ``floor`` (a quantity that cannot be
    below it, e.g. 0 for a response); NaN with fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    low = values.mean() - half
    return (low if floor is None else max(low, floor)), values.mean() + half


@dataclass(frozen=True)
class Paired:
    """Paired differences (variant − reference) over matched seeds: mean Δ, its t interval, the
    two-sided p-value and the SD of the differences. Fewer than two pairs, a NaN, or zero variance
    (the same Δ in every seed, e.g. errors quantised by a small test set): no t-test is possible,
    so no interval and no p (the verdict is then not ``reproduced``)."""

    n: int
    delta: float
    low: float
    high: float
    p: float
    sd: float


def paired(diffs: np.ndarray, level: float = LEVEL) -> Paired:
    diffs = np.asarray(diffs, dtype=float)
    n = len(diffs)
    delta = float(diffs.mean()) if n else math.nan
    if n < 2 or np.isnan(diffs).any():
        return Paired(n, delta, math.nan, math.nan, math.nan, math.nan)
    sd = float(diffs.std(ddof=1))
    if sd == 0:
        return Paired(n, delta, math.nan, math.nan, math.nan, 0.0)
    result = stats.ttest_1samp(diffs, 0.0)
    interval = result.confidence_interval(level)
    return Paired(n, delta, float(interval.low), float(interval.high), float(result.pvalue), sd)


def power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` to detect a true mean difference
    ``delta`` with ``n`` pairs whose differences have SD ``sd`` (non-central t)."""
    df, nc = n - 1, abs(delta) * math.sqrt(n) / sd
    crit = stats.t.ppf(1 - alpha / 2, df)
    wrong_side = stats.nct.cdf(-crit, df, nc)  # NaN where it underflows (far below 1e-15): it is 0 there
    return float(stats.nct.sf(crit, df, nc) + (0.0 if math.isnan(wrong_side) else wrong_side))


def detectable(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest |Δ| a paired t-test over ``n`` seeds detects with power ``target``."""
    if n < 2 or not sd > 0:  # no SD to plan with
        return math.nan
    return float(optimize.brentq(lambda d: power(d, sd, n, alpha) - target, 1e-12, 50 * sd))  # n=2: 10.6 sd


def seeds_needed(delta: float, sd: float, alpha: float = ALPHA, target: float = POWER) -> float:
    """The fewest seeds (>= 2) whose paired t-test detects ``delta`` with power ``target`` given the
    SD ``sd`` of the differences; inf if beyond ``MAX_SEEDS`` or ``delta`` is 0; NaN if unknown."""
    if math.isnan(delta) or not sd > 0:  # no SD to plan with
        return math.nan
    if delta == 0:
        return math.inf
    n = 2
    while power(delta, sd, n, alpha) < target:
        n = n * 2 if n < 64 else n + 64  # coarse search upwards, then exact below
        if n > MAX_SEEDS:
            return math.inf
    low = max(2, n // 2 if n <= 64 else n - 64)
    return float(next(k for k in range(low, n + 1) if power(delta, sd, k, alpha) >= target))


def verdict(comparison: Paired, paper_delta: float, p_holm: float) -> str:
    """``reproduced`` / ``contradicted`` / ``inconclusive`` (module docstring), or why there is none."""
    if comparison.n >= 2 and (math.isnan(paper_delta) or paper_delta == 0):
        return "no paper Δ"
    return decide(comparison.n, comparison.low, comparison.high, p_holm, paper_delta)


def decide(n: int, low: float, high: float, p_holm: float, side: float) -> str:
    """The verdict of an interval [low, high] over ``n`` seeds with Holm-adjusted p ``p_holm``, for a
    claim that the difference lies on the side of the sign of ``side``."""
    if n < 2:
        return "needs ≥ 2 seeds"
    if math.isnan(low) or math.isnan(p_holm) or p_holm >= ALPHA:
        return "inconclusive"
    side = math.copysign(1.0, side)
    if (low > 0 and side > 0) or (high < 0 and side < 0):
        return "reproduced"
    if (low > 0 and side < 0) or (high < 0 and side > 0):
        return "contradicted"
    return "inconclusive"


def chance_error(result: RunResult) -> float:
    """The test error (%) of guessing: what a diverged run counts as."""
    data = result.config["data"]
    dataset = data.get("dataset", DEFAULT_DATASET)  # absent from the resolved config: the default
    classes = NUM_CLASSES.get(dataset) or data.get("synthetic_classes", 10)
    return 100.0 * (1 - 1 / classes)


def error_of(result: RunResult) -> float:
    """A run's test error for the statistics: its own, or chance if it diverged."""
    return chance_error(result) if result.status == "diverged" else float(result.test_error)


def errors_by_variant(results: list[RunResult]) -> dict[str, dict[int, float]]:
    """Each variant's test error per seed, diverged runs at chance error."""
    out: dict[str, dict[int, float]] = {}
    for r in results:
        out.setdefault(r.variant, {})[r.seed] = error_of(r)
    return out


@dataclass(frozen=True)
class Trend:
    """The slope of the per-seed differences (variant − reference) over a numeric factor: ``slope``
    (a :class:`Paired` over the seeds' slopes, in pp per ``per`` units of the factor) and the
    paper's slope from its differences (NaN where the paper lacks one)."""

    slope: Paired
    paper: float
    levels: tuple[float, ...]


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of y over x."""
    x = np.asarray(x, dtype=float) - np.mean(x)
    return float((x * (np.asarray(y, dtype=float) - np.mean(y))).sum() / (x * x).sum())


def trend(study: Study, results: list[RunResult], variants: tuple[str, ...], factor: str, per: float = 1.0) -> Trend:
    """Judge a trend claim: for each seed with every listed variant and its reference, the slope of
    its differences over ``factor``; the slopes are then tested like paired differences (one per
    seed), so the pairing by seed is kept and each seed counts once."""
    by_name = {study.variant_name(v): v for v in study.variants()}
    index = [f.name for f in study.factors].index(factor)
    x = np.array([float(by_name[v][index]) for v in variants])
    refs = [study.variant_name(study.reference_of(by_name[v])) for v in variants]
    errors = errors_by_variant(results)
    common = set.intersection(*(set(errors.get(name, {})) for name in (*variants, *refs)))
    slopes = [per * slope(x, [errors[v][s] - errors[r][s] for v, r in zip(variants, refs)]) for s in sorted(common)]
    paper = [
        study.paper.get(by_name[v], math.nan) - study.paper.get(by_name[r], math.nan) for v, r in zip(variants, refs)
    ]
    paper_slope = per * slope(x, paper) if not np.isnan(paper).any() else math.nan
    return Trend(paired(np.array(slopes)), paper_slope, tuple(x.tolist()))


@dataclass(frozen=True)
class Level:
    """A per-seed quantity (e.g. a relative response) against a threshold: its mean and t interval
    over seeds, and whether it lies below or above the threshold with 95% confidence."""

    n: int
    mean: float
    low: float
    high: float


def level(values: list[float], floor: float | None = None) -> Level:
    """The mean of ``values`` with its t interval (its low end at least ``floor``)."""
    values = np.asarray(values, dtype=float)
    low, high = confidence_interval(values, floor=floor)
    return Level(len(values), float(values.mean()) if len(values) else math.nan, low, high)


def side_verdict(value: Level, threshold: float, expect_below: bool) -> str:
    """``reproduced`` when the 95% interval lies wholly on the expected side of ``threshold``,
    ``contradicted`` when it lies wholly on the other, ``inconclusive`` otherwise."""
    if value.n < 2:
        return "needs ≥ 2 seeds"
    if math.isnan(value.low):
        return "inconclusive"
    below, above = value.high < threshold, value.low > threshold
    if (below and expect_below) or (above and not expect_below):
        return "reproduced"
    if below or above:
        return "contradicted"
    return "inconclusive"


def summarise(study: Study, results: list[RunResult]) -> pd.DataFrame:
    """One row per variant (in the study's order): the statistics of its seeds (diverged ones at
    chance error), its comparison with its reference, the verdict and the power figures."""
    by_variant: dict[str, list[RunResult]] = {}
    for r in results:
        by_variant.setdefault(r.variant, []).append(r)
    all_errors = errors_by_variant(results)
    rows, comparisons = [], []
    for levels in study.variants():
        name = study.variant_name(levels)
        runs = by_variant.get(name, [])
        finished = [r for r in runs if r.status == "finished"]
        errors = all_errors.get(name, {})
        values = np.array([errors[s] for s in sorted(errors)])
        ref_levels = study.reference_of(levels)
        ref_name = study.variant_name(ref_levels)
        ref_errors = all_errors.get(ref_name, {})
        is_ref = ref_name == name
        seeds = sorted(set(errors) & set(ref_errors))
        comparison = None if is_ref else paired(np.array([errors[s] - ref_errors[s] for s in seeds]))
        comparisons.append(comparison)
        paper, paper_ref = study.paper.get(levels), study.paper.get(ref_levels)
        paper_diff = paper - paper_ref if paper is not None and paper_ref is not None and not is_ref else math.nan
        lo, hi = confidence_interval(values)
        first = finished[0] if finished else None
        nan = math.nan
        rows.append(
            {
                "variant": name,
                **dict(zip((f.name for f in study.factors), levels)),
                "seeds": len(values),
                "diverged": sum(r.status == "diverged" for r in runs),
                "ref_diverged": 0 if is_ref else sum(r.status == "diverged" for r in by_variant.get(ref_name, [])),
                "error_mean": values.mean() if len(values) else nan,
                "error_std": values.std(ddof=1) if len(values) > 1 else nan,
                "ci95_low": max(lo, 0.0) if not math.isnan(lo) else nan,  # an error lies in [0, 100]
                "ci95_high": min(hi, 100.0) if not math.isnan(hi) else nan,
                "paper_error": paper if paper is not None else nan,
                "reference": ref_name,
                "paired_seeds": comparison.n if comparison else 0,
                "diff_vs_ref": comparison.delta if comparison else nan,
                "diff_ci95_low": comparison.low if comparison else nan,
                "diff_ci95_high": comparison.high if comparison else nan,
                "diff_sd": comparison.sd if comparison else nan,
                "p_value": comparison.p if comparison else nan,
                "paper_diff": paper_diff,
                "detectable_diff": detectable(comparison.sd, comparison.n) if comparison else nan,
                "seeds_for_paper_diff": seeds_needed(paper_diff, comparison.sd) if comparison else nan,
                "params_m": first.params / 1e6 if first else nan,
                "gmacs": first.macs / 1e9 if first else nan,
                "wall_time_min": np.mean([r.wall_time_s for r in finished]) / 60 if finished else nan,
                "train_img_per_s": np.mean([r.train_images_per_s or nan for r in finished]) if finished else nan,
            }
        )
    df = pd.DataFrame(rows)
    df.insert(df.columns.get_loc("p_value") + 1, "p_holm", holm(df["p_value"].tolist()))
    df.insert(
        df.columns.get_loc("paper_diff") + 1,
        "verdict",
        [
            "reference" if c is None else verdict(c, pd_, ph)
            for c, pd_, ph in zip(comparisons, df["paper_diff"], df["p_holm"])
        ],
    )
    return df
