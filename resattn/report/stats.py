"""Statistics of a study: per-variant mean, std and 95% CI over seeds; for each variant against its
reference, the mean paired difference over matched seeds with its 95% t interval and Holm-adjusted
p-value, a verdict on the paper's claim, and what the study could detect.

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


def confidence_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean; NaN with fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return values.mean() - half, values.mean() + half


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
    if comparison.n < 2:
        return "needs ≥ 2 seeds"
    if math.isnan(paper_delta) or paper_delta == 0:
        return "no paper Δ"
    if math.isnan(comparison.low) or math.isnan(p_holm) or p_holm >= ALPHA:
        return "inconclusive"
    side = math.copysign(1.0, paper_delta)
    if (comparison.low > 0 and side > 0) or (comparison.high < 0 and side < 0):
        return "reproduced"
    if (comparison.low > 0 and side < 0) or (comparison.high < 0 and side > 0):
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


def summarise(study: Study, results: list[RunResult]) -> pd.DataFrame:
    """One row per variant (in the study's order): the statistics of its seeds (diverged ones at
    chance error), its comparison with its reference, the verdict and the power figures."""
    by_variant: dict[str, list[RunResult]] = {}
    for r in results:
        by_variant.setdefault(r.variant, []).append(r)
    rows, comparisons = [], []
    for levels in study.variants():
        name = study.variant_name(levels)
        runs = by_variant.get(name, [])
        finished = [r for r in runs if r.status == "finished"]
        errors = {r.seed: error_of(r) for r in runs}
        values = np.array([errors[s] for s in sorted(errors)])
        ref_levels = study.reference_of(levels)
        ref_name = study.variant_name(ref_levels)
        ref_errors = {r.seed: error_of(r) for r in by_variant.get(ref_name, [])}
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
                "gflops": first.flops / 1e9 if first else nan,
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
