"""Statistics of a study: per-variant mean, std and 95% CI over seeds; paired tests against the
reference variant over matched seeds, Holm-corrected; whether the paper's direction is reproduced."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from resattn.study.spec import Study
from resattn.study.store import RunResult


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


def confidence_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; NaN with fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return values.mean() - half, values.mean() + half


def paired_test(errors: dict[int, float], reference: dict[int, float]) -> tuple[float, float, int]:
    """(mean difference, p-value of a paired t-test, pairs) over the seeds both have."""
    seeds = sorted(set(errors) & set(reference))
    if not seeds:
        return math.nan, math.nan, 0
    diff = np.array([errors[s] - reference[s] for s in seeds])
    if len(seeds) < 2 or np.allclose(diff, diff[0]):
        return float(diff.mean()), math.nan, len(seeds)
    return (
        float(diff.mean()),
        float(stats.ttest_rel([errors[s] for s in seeds], [reference[s] for s in seeds]).pvalue),
        len(seeds),
    )


def summarise(study: Study, results: list[RunResult]) -> pd.DataFrame:
    """One row per variant (in the study's order) with the statistics of its finished seeds."""
    by_variant: dict[str, list[RunResult]] = {}
    for r in results:
        by_variant.setdefault(r.variant, []).append(r)
    rows = []
    for levels in study.variants():
        name = study.variant_name(levels)
        runs = by_variant.get(name, [])
        finished = [r for r in runs if r.status == "finished"]
        errors = {r.seed: r.test_error for r in finished}
        values = np.array([errors[s] for s in sorted(errors)])
        ref_levels = study.reference_of(levels)
        ref_name = study.variant_name(ref_levels)
        ref_errors = {r.seed: r.test_error for r in by_variant.get(ref_name, []) if r.status == "finished"}
        is_ref = ref_name == name
        diff, p, pairs = (math.nan, math.nan, 0) if is_ref else paired_test(errors, ref_errors)
        paper, paper_ref = study.paper.get(levels), study.paper.get(ref_levels)
        paper_diff = paper - paper_ref if paper is not None and paper_ref is not None and not is_ref else math.nan
        if is_ref:
            reproduced = "reference"
        elif math.isnan(diff) or math.isnan(paper_diff):
            reproduced = "—"
        else:
            reproduced = "yes" if np.sign(diff) == np.sign(paper_diff) else "no"
        lo, hi = confidence_interval(values)
        first = finished[0] if finished else None
        rows.append(
            {
                "variant": name,
                **dict(zip((f.name for f in study.factors), levels)),
                "seeds": len(values),
                "diverged": sum(r.status == "diverged" for r in runs),
                "error_mean": values.mean() if len(values) else math.nan,
                "error_std": values.std(ddof=1) if len(values) > 1 else math.nan,
                "ci95_low": lo,
                "ci95_high": hi,
                "paper_error": paper if paper is not None else math.nan,
                "reference": ref_name,
                "diff_vs_ref": diff,
                "paired_seeds": pairs,
                "p_value": p,
                "paper_diff": paper_diff,
                "direction_reproduced": reproduced,
                "params_m": first.params / 1e6 if first else math.nan,
                "gflops": first.flops / 1e9 if first else math.nan,
                "wall_time_min": np.mean([r.wall_time_s for r in finished]) / 60 if finished else math.nan,
                "train_img_per_s": np.mean([r.train_images_per_s or math.nan for r in finished])
                if finished
                else math.nan,
            }
        )
    df = pd.DataFrame(rows)
    df.insert(df.columns.get_loc("p_value") + 1, "p_holm", holm(df["p_value"].tolist()))
    return df
