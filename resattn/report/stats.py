"""Statistics of a study's test errors: contrasts over seeds and test images, families, power.

Every piece of evidence is a *contrast*: a weighted sum of variants' test errors (pp), e.g.
``nal-56 − arl-56`` (weights +1, −1) or the slope of such differences over depth. For each seed
with every variant of the contrast it is one number; the seeds vary by training randomness, the
test images by which images happened to be in the test split (the same images for every seed).

- **Seed-only interval**: the Student t interval of the per-seed contrasts (scipy's ``t.interval``
  with k − 1 df), the variation from training alone, on this test split.
- **Seeds-and-images interval** (what verdicts use): the same mean with the standard error
  ``SE² = s²/k + v/N``, where ``s`` is the SD of the k per-seed contrasts and ``v`` the variance
  over the N test images of each image's contrast averaged over the seeds (``d_i = mean_s Σ_v w_v
  100·wrong_{v,s,i}``), and Welch–Satterthwaite degrees of freedom; never narrower than the
  seed-only interval (with 3 seeds the Satterthwaite df can exceed 2). ``v/N`` is the test-sample
  noise a fixed split adds (about 1.5 pp per error at 60% on 1,000 images); the seed term already
  holds the seed-by-image interaction, so the sum errs on the wide side. This is the analytic form
  of a paired two-way bootstrap over seeds and images; the tests check it against a bootstrap and
  its coverage against a population of known variance. Where a result has no per-image record (an
  earlier version, several devices) the seed-only interval is all there is, and is named so.

Families (:mod:`resattn.report.claims`): Holm's step-down adjustment within one claim's own
comparisons (statsmodels' ``multipletests``), and intervals at the level consistent with it
(:func:`consistent_level`). Power and seeds needed: the paired t test's power (statsmodels'
``TTestPower``) at the α the verdict uses, from an upper confidence bound of the seed
SD (:func:`upper_sd`). Divergence: Fisher's exact
test of a variant's diverged runs against its reference's (scipy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from resattn.config import DEFAULT_DATASET, NUM_CLASSES
from resattn.study.record import RunResult
from resattn.study.spec import Study

ALPHA, POWER, LEVEL = 0.05, 0.8, 0.95
SD_CONFIDENCE = 0.8  # planning uses the 80% upper confidence bound of the seed SD, not the SD seen
MAX_SEEDS = 10_000  # "seeds needed" beyond this reads as infinite
_TTEST = TTestPower()


@dataclass(frozen=True)
class Estimate:
    """A contrast of test errors (pp): its mean over ``n`` seeds, the SD ``sd`` of the per-seed
    values, and the test-sample standard error ``se_images`` over ``images`` test images (NaN and 0
    where the per-image outcomes are not recorded). ``diverged``: runs of the contrast's variants
    left out (main analysis) or counted at chance error (sensitivity)."""

    n: int
    delta: float
    sd: float
    se_images: float = math.nan
    images: int = 0
    diverged: int = 0

    @property
    def has_images(self) -> bool:
        return self.images > 0 and not math.isnan(self.se_images)

    def se(self, images: bool = True) -> float:
        """The standard error of the mean: seeds and test images, or seeds only."""
        seeds = self.sd / math.sqrt(self.n) if self.n >= 2 and not math.isnan(self.sd) else math.nan
        if images and self.has_images and not math.isnan(seeds):
            return math.hypot(seeds, self.se_images)
        return seeds

    def df(self, images: bool = True) -> float:
        """Welch–Satterthwaite degrees of freedom of :meth:`se` (k − 1 for seeds only)."""
        if not (images and self.has_images) or self.n < 2:
            return float(self.n - 1)
        a, b = (self.sd**2) / self.n, self.se_images**2
        if a + b == 0:
            return float(self.n - 1)
        return (a + b) ** 2 / (a**2 / (self.n - 1) + b**2 / (self.images - 1))

    def testable(self, images: bool = True) -> bool:
        """A t statistic exists: two seeds or more, and a spread to divide by."""
        se = self.se(images)
        return self.n >= 2 and not math.isnan(se) and se > 0

    def p(self, null: float = 0.0, images: bool = True) -> float:
        """Two-sided p of the t test of ``delta == null``; NaN where :meth:`testable` is false. With
        the test images: the larger of the seeds-and-images and the seed-only p (see :meth:`interval`)."""
        if not self.testable(images):
            return math.nan
        p = float(2 * stats.t.sf(abs(self.delta - null) / self.se(images), self.df(images)))
        return max(p, self.p(null, images=False)) if images and self.testable(False) else p

    def interval(self, level: float = LEVEL, images: bool = True) -> tuple[float, float]:
        """The t interval of the mean at ``level``; NaN where :meth:`testable` is false. With the test
        images: the wider of the seeds-and-images interval and the seed-only one, so that adding a
        source of noise never narrows it (the Satterthwaite df can outgrow the seeds' k − 1)."""
        if not self.testable(images):
            return math.nan, math.nan
        low, high = stats.t.interval(level, self.df(images), loc=self.delta, scale=self.se(images))
        if images and self.testable(False):
            seeds = self.interval(level, images=False)
            low, high = min(low, seeds[0]), max(high, seeds[1])
        return low, high


def estimate(per_seed: np.ndarray, per_image: np.ndarray | None = None, diverged: int = 0) -> Estimate:
    """The :class:`Estimate` of per-seed contrasts and, where recorded, the per-image contrasts
    averaged over the seeds (``d_i`` of the module docstring)."""
    values = np.asarray(per_seed, dtype=float)
    n = len(values)
    delta = float(values.mean()) if n else math.nan
    sd = float(values.std(ddof=1)) if n >= 2 else math.nan
    if n and np.isnan(values).any():
        return Estimate(n, delta, math.nan, diverged=diverged)
    if per_image is None or len(per_image) < 2:
        return Estimate(n, delta, sd, diverged=diverged)
    d = np.asarray(per_image, dtype=float)
    return Estimate(n, delta, sd, float(d.std(ddof=1) / math.sqrt(len(d))), len(d), diverged)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels ``multipletests``); NaN stays NaN and is no test."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return out.tolist()


def consistent_level(p: float, p_adjusted: float, alpha: float = ALPHA) -> float:
    """The confidence level of an interval that excludes the null exactly when the adjusted test
    rejects: ``1 − α·p/p_adjusted`` (its t interval excludes the null iff ``p < α·p/p_adj``, i.e.
    iff ``p_adj < α``). For the smallest of m p-values under Holm it is Bonferroni's 1 − α/m."""
    if math.isnan(p) or math.isnan(p_adjusted) or p_adjusted == 0:
        return 1 - alpha
    return 1 - alpha * p / p_adjusted


def upper_sd(sd: float, n: int, confidence: float = SD_CONFIDENCE) -> float:
    """The one-sided upper confidence bound of an SD from ``n`` values (chi-square, n − 1 df)."""
    if n < 2 or math.isnan(sd):
        return math.nan
    return sd * math.sqrt((n - 1) / stats.chi2.ppf(1 - confidence, n - 1))


def power(delta: float, se: float, n: int, alpha: float) -> float:
    """Power of the two-sided t test (n − 1 df) of a mean whose standard error is ``se``: statsmodels'
    ``TTestPower`` at the effect size ``|Δ| / (se·√n)`` (its non-centrality ``effect·√n`` is then
    ``|Δ| / se``, so ``se`` may hold the test-sample error too). Where its far tail underflows to
    NaN (large effects, few seeds) that tail is 0 and the one-sided power at α/2 is the whole."""
    if se == 0:
        return 1.0  # no noise at all: any effect is seen
    effect = abs(delta) / (se * math.sqrt(n))
    two_sided = _TTEST.power(effect, n, alpha, alternative="two-sided")
    if math.isnan(two_sided):
        return float(_TTEST.power(effect, n, alpha / 2, alternative="larger"))
    return float(two_sided)


def detectable(est: Estimate, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest |Δ| the t test over ``est.n`` seeds detects with power ``target`` at ``alpha``,
    from the upper bound of the seed SD and the test-sample error."""
    if est.n < 2 or not est.sd > 0 and not est.has_images:
        return math.nan
    se = _planning_se(est, est.n)
    # the bracket's top: 100 se (n=2, α=0.05 needs 10.6 se)
    return float(optimize.brentq(lambda d: power(d, se, est.n, alpha) - target, 1e-9 * se, 100 * se))


def _planning_se(est: Estimate, k: int) -> float:
    """The standard error with ``k`` seeds: the seed SD's upper bound over √k, and the measured
    test-sample error (which more seeds do not shrink: the split stays the same)."""
    sd = upper_sd(est.sd, est.n) if est.sd > 0 else 0.0
    return math.hypot(sd / math.sqrt(k), est.se_images if est.has_images else 0.0)


def seeds_needed(delta: float, est: Estimate, alpha: float = ALPHA, target: float = POWER) -> float:
    """The fewest seeds (>= 2) whose t test detects ``delta`` with power ``target`` at ``alpha``
    (:func:`_planning_se`); inf beyond ``MAX_SEEDS`` (or when the test images alone hide it)."""
    if math.isnan(delta) or est.n < 2 or not (est.sd > 0 or est.has_images):
        return math.nan
    if delta == 0:
        return math.inf
    n = 2
    while power(delta, _planning_se(est, n), n, alpha) < target:
        n = n * 2 if n < 64 else n + 64  # coarse search upwards, then exact below
        if n > MAX_SEEDS:
            return math.inf
    low = max(2, n // 2 if n <= 64 else n - 64)
    return float(next(k for k in range(low, n + 1) if power(delta, _planning_se(est, k), k, alpha) >= target))


def diverged_p(diverged: int, runs: int, ref_diverged: int, ref_runs: int) -> float:
    """Fisher's exact test (two-sided) of diverged runs, a variant's against its reference's."""
    if not runs or not ref_runs:
        return math.nan
    return float(stats.fisher_exact([[diverged, runs - diverged], [ref_diverged, ref_runs - ref_diverged]])[1])


def chance_error(result: RunResult) -> float:
    """The test error (%) of guessing: what a diverged run counts as in the sensitivity analysis."""
    data = result.config["data"]
    dataset = data.get("dataset", DEFAULT_DATASET)  # absent from the resolved config: the default
    classes = NUM_CLASSES.get(dataset) or data.get("synthetic_classes", 10)
    return 100.0 * (1 - 1 / classes)


def contrast(results: list[RunResult], weights: dict[str, float], impute: bool = False) -> Estimate:
    """The contrast ``Σ_v w_v error_v`` over the seeds that have a result of every variant in
    ``weights``. Main analysis: seeds where every run converged, with the test-sample error when
    every run recorded its per-image outcomes on the same split. ``impute``: the sensitivity
    analysis, diverged runs at chance error (seed-only: a diverged run has no per-image record)."""
    by = {(r.variant, r.seed): r for r in results if r.variant in weights}
    seeds = sorted({s for v, s in by if all((w, s) in by for w in weights)})
    diverged = sum(by[v, s].status == "diverged" for v, s in by if s in seeds)
    if not impute:
        seeds = [s for s in seeds if all(by[v, s].status == "finished" for v in weights)]
    values = [
        sum(
            w * (chance_error(by[v, s]) if by[v, s].status == "diverged" else by[v, s].test_error)
            for v, w in weights.items()
        )
        for s in seeds
    ]
    per_image = None
    if seeds and not impute:
        wrong = [[by[v, s].wrong_images() for s in seeds] for v in weights]
        if all(x is not None for row in wrong for x in row) and len({x.size for row in wrong for x in row}) == 1:
            per_image = sum(w * 100.0 * np.mean(row, axis=0) for w, row in zip(weights.values(), wrong))
    return estimate(np.array(values), per_image, diverged)


def slope_weights(x: list[float], per: float = 1.0) -> np.ndarray:
    """The weights that turn values at levels ``x`` into their least-squares slope (per ``per``): the
    slopes numpy's ``polyfit`` gives the unit vectors, so ``w · y`` is the slope of any ``y``."""
    return per * np.polyfit(np.asarray(x, dtype=float), np.eye(len(x)), 1)[0]


def log_ratios(values: list[float]) -> np.ndarray:
    """Positive ratios on the log scale (a ratio of 0 is taken as 1e-12: the log needs a floor)."""
    return np.log(np.maximum(np.asarray(values, dtype=float), 1e-12))


def ratio_level(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """The geometric mean of positive ratios with its t interval on the log scale (never below 0)."""
    est = estimate(log_ratios(values))
    low, high = est.interval(level)
    return float(np.exp(est.delta)), float(np.exp(low)), float(np.exp(high))


def summarise(study: Study, results: list[RunResult]) -> pd.DataFrame:
    """One row per variant (in the study's order): its converged seeds' errors (mean, std, 95% CI),
    its diverged runs with Fisher's p against its reference's, and its contrast with its reference
    (converged pairs): Δ with the seed-only and the seeds-and-images 95% intervals, and the
    unadjusted p. No verdict: verdicts belong to claims, each with its own family."""
    rows = []
    for levels in study.variants():
        name = study.variant_name(levels)
        runs = [r for r in results if r.variant == name]
        finished = [r for r in runs if r.status == "finished"]
        values = np.array([r.test_error for r in finished], dtype=float)
        ref_levels = study.reference_of(levels)
        ref_name = study.variant_name(ref_levels)
        ref_runs = [r for r in results if r.variant == ref_name]
        is_ref = ref_name == name
        c = None if is_ref else contrast(results, {name: 1.0, ref_name: -1.0})
        paper, paper_ref = study.paper.get(levels), study.paper.get(ref_levels)
        nan = math.nan
        low, high = estimate(values).interval() if len(values) >= 2 else (nan, nan)
        seed_low, seed_high = c.interval(images=False) if c else (nan, nan)
        diff_low, diff_high = c.interval() if c else (nan, nan)
        divergences = sum(r.status == "diverged" for r in runs)
        ref_divergences = sum(r.status == "diverged" for r in ref_runs)
        rows.append(
            {
                "variant": name,
                **dict(zip((f.name for f in study.factors), levels)),
                "seeds": len(values),
                "diverged": divergences,
                "ref_diverged": 0 if is_ref else ref_divergences,
                "diverged_p": nan if is_ref else diverged_p(divergences, len(runs), ref_divergences, len(ref_runs)),
                "error_mean": values.mean() if len(values) else nan,
                "error_std": values.std(ddof=1) if len(values) > 1 else nan,
                "ci95_low": max(low, 0.0) if not math.isnan(low) else nan,  # an error lies in [0, 100]
                "ci95_high": min(high, 100.0) if not math.isnan(high) else nan,
                "paper_error": paper if paper is not None else nan,
                "reference": ref_name,
                "paired_seeds": c.n if c else 0,
                "diff_vs_ref": c.delta if c else nan,
                "diff_seed_ci95_low": seed_low,
                "diff_seed_ci95_high": seed_high,
                "diff_ci95_low": diff_low,
                "diff_ci95_high": diff_high,
                "diff_sd": c.sd if c else nan,
                "diff_se_images": c.se_images if c else nan,
                "test_images": c.images if c else 0,
                "p_value": c.p() if c else nan,
                "paper_diff": paper - paper_ref if paper is not None and paper_ref is not None and not is_ref else nan,
                "params_m": finished[0].params / 1e6 if finished else nan,
                "gmacs": finished[0].macs / 1e9 if finished else nan,
                "wall_time_min": np.mean([r.wall_time_s for r in finished]) / 60 if finished else nan,
                "train_img_per_s": np.mean([r.train_images_per_s or nan for r in finished]) if finished else nan,
            }
        )
    return pd.DataFrame(rows)
