"""The paper's claims judged on one configuration's results (``claims.csv`` of a report).

Each study YAML lists the claims it tests (:class:`resattn.study.spec.Claim`). A claim's evidence
is one or more *pieces*, each a contrast of test errors (:func:`resattn.report.stats.contrast`) or
a Fig. 4 response ratio against a threshold:

- ``each``: variant − reference (or ``against``) per listed variant;
- ``trend``: the least-squares slope over a numeric factor of the differences from the reference,
  or of the variants' own errors (``absolute: true``);
- ``response``: the geometric mean of a stage's response relative to stage 1, on the log scale.

**Families.** A claim is its own family; a variant in no claim changes no verdict.

- The claim as a whole ("all of these") is an intersection–union test: it holds when every piece's
  95% interval holds on its own, with no adjustment (Berger 1982).
- Each piece's own statement is Holm-adjusted within its claim; its interval is shown at the level
  consistent with that test (:func:`resattn.report.stats.consistent_level`). The claim is
  contradicted when any piece is, at that adjusted level.

**Outcomes** of an interval against 0 on the claimed side and the paper's value:

- ``reproduced``: it excludes 0 on the paper's side and holds the paper's value, or lies within
  the claim's ``margin`` of it;
- ``direction only``: it excludes 0 on the paper's side and excludes the paper's value (the ratio
  of the effect to the paper's is given);
- ``supported``: it excludes 0 on the claimed side and there is no paper value to weigh (claims
  beyond the paper; Fig. 4's readings, judged against this project's threshold);
- ``contradicted``: it excludes 0 on the other side; ``negligible``: it lies within ±the claim's
  ``smallest_effect`` (an equivalence test);
- ``inconclusive``: anything else.

Verdicts use the seeds-and-images interval where every run recorded its per-image outcomes, else
the seed-only one. Diverged runs are left out (converged pairs); their chance-error imputation is
the sensitivity column. The words a ledger prints depend on the configuration's regime
(:mod:`resattn.report.regime`, :func:`words`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from resattn.report.regime import Regime, regime
from resattn.report.stats import (
    ALPHA,
    Estimate,
    consistent_level,
    contrast,
    detectable,
    estimate,
    holm,
    log_ratios,
    seeds_needed,
    slope_weights,
)
from resattn.study.record import RunResult, is_identity
from resattn.study.spec import Claim, Study
from resattn.study.store import atomic_path

CLAIMS_CSV = "claims.csv"
NOT_RUN, FEW_SEEDS = "not run", "needs ≥ 2 seeds"
HOLDS = ("reproduced", "direction only", "supported")  # the interval excludes 0 on the claimed side
AGAINST = ("contradicted", "negligible")
BEYOND = "beyond the paper"  # a study's paper_table when the paper has no numbers for it
COLUMNS = [
    "claim",
    "study",
    "paper_table",
    "section",
    "kind",
    "evidence",
    "value",
    "ci_low",
    "ci_high",
    "ci_level",
    "ci95_low",
    "ci95_high",
    "seed_ci95_low",
    "seed_ci95_high",
    "interval_sources",
    "paper",
    "ratio",
    "seeds",
    "test_images",
    "diverged",
    "p",
    "p_holm",
    "outcome",
    "sensitivity",
    "detectable",
    "seeds_for_paper",
    "claim_outcome",
    "tier",
    "reductions",
    "train_images",
    "steps",
    "share",
    "reference",
    "reference_error",
    "reference_paper",
    "profile",
    "configuration",
    "precision",
    "synthetic",
    "device",
    "runs",
    "of_runs",
    "cuts",
    "note",
]


@dataclass(frozen=True)
class Piece:
    """One piece of a claim's evidence: its estimate (main analysis), the null it is tested
    against, the claimed side (+1: above the null), the paper's value on the same scale (NaN: none
    to weigh) and the estimate with diverged runs at chance error (None: nothing diverged)."""

    label: str
    est: Estimate
    null: float
    side: float
    paper: float
    sensitivity: Estimate | None = None
    shown_paper: float = math.nan  # the paper's value as printed (Fig. 4: a reading, "≈")
    log: bool = False  # the estimate is of log ratios (printed as ratios)


def outcome(low: float, high: float, piece: Piece, claim: Claim) -> str:
    """The outcome of the interval [low, high] for ``piece`` (module docstring)."""
    if math.isnan(low):
        return "inconclusive"
    small = claim.smallest_effect
    if small and piece.null - small < low and high < piece.null + small:
        return "negligible"  # an equivalence test: whatever its sign, the effect is below interest
    above, below = low > piece.null, high < piece.null
    if (above and piece.side > 0) or (below and piece.side < 0):
        if math.isnan(piece.paper):
            return "supported"
        margin = claim.margin or 0.0
        if low <= piece.paper <= high or (margin and piece.paper - margin <= low and high <= piece.paper + margin):
            return "reproduced"
        return "direction only"
    if above or below:
        return "contradicted"
    return "inconclusive"


def combine(iut: list[str], adjusted: list[str]) -> str:
    """A claim's outcome from its pieces' outcomes at 95% each (``iut``, the intersection–union
    test of "all of these") and at their Holm-consistent levels (``adjusted``). Pieces with no runs
    in the configuration are left out: the claim is judged on the pieces run, and the ledger says
    how many those are."""
    if not iut or all(o == NOT_RUN for o in iut):
        return NOT_RUN
    ran = [i for i, o in enumerate(iut) if o != NOT_RUN]
    iut, adjusted = [iut[i] for i in ran], [adjusted[i] for i in ran]
    if all(o in HOLDS for o in iut):
        if all(o == "reproduced" for o in iut):
            return "reproduced"
        return "supported" if all(o == "supported" for o in iut) else "direction only"
    for kind in AGAINST:
        if kind in adjusted:
            return kind
    if all(o == FEW_SEEDS for o in iut):
        return FEW_SEEDS
    return "inconclusive"


def words(outcome: str, tier: str, ratio: float | tuple[float, float] = math.nan, paper: bool = True) -> str:
    """An outcome in the words its regime allows: only the paper protocol reproduces or
    contradicts; a pilot or a shortened run is consistent with the direction, or not, or unclear.
    ``ratio``: the effect over the paper's (a piece's, or the range of a claim's pieces)."""
    low, high = ratio if isinstance(ratio, tuple) else (ratio, ratio)
    times = ""
    if not math.isnan(low) and outcome in HOLDS:
        span = f"{low:.1f}x" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f}x"
        times = f", effect {span} the paper's"
    if outcome in (NOT_RUN, FEW_SEEDS):
        return outcome
    if tier == "paper protocol":
        return {
            "reproduced": "reproduced",
            "direction only": f"direction only{times}",
            "supported": "supported (direction; no paper value to weigh)",
            "contradicted": "contradicted",
            "negligible": "contradicted (smaller than the smallest effect of interest)",
        }.get(outcome, "inconclusive")
    whose = "the paper's" if paper else "the claimed"
    if outcome in HOLDS:
        return f"{tier}: consistent with {whose} direction{times}"
    if outcome == "contradicted":
        return f"{tier}: inconsistent with {whose} direction"
    if outcome == "negligible":
        return f"{tier}: effect below the smallest of interest"
    return f"{tier}: unclear"


def _paper(study: Study, weights: dict[tuple[str, ...], float]) -> float:
    values = [study.paper.get(levels) for levels in weights]
    if any(v is None for v in values):
        return math.nan
    return float(sum(w * v for w, v in zip(weights.values(), values)))


def _contrast_piece(study: Study, results: list[RunResult], label: str, weights: dict, claim: Claim) -> Piece:
    """A piece from weights over variant levels; the side is the paper's sign, else ``expect``."""
    names = {study.variant_name(levels): w for levels, w in weights.items()}
    est = contrast(results, names)
    paper = _paper(study, weights)
    side = (
        math.copysign(1.0, paper)
        if not math.isnan(paper) and paper != 0
        else (-1.0 if claim.expect == "lower" else 1.0)
    )
    sensitivity = contrast(results, names, impute=True) if est.diverged else None
    return Piece(label, est, 0.0, side, paper, sensitivity, paper)


def pieces(claim: Claim, study: Study, results: list[RunResult]) -> list[Piece]:
    """The evidence of ``claim`` on ``results`` (module docstring)."""
    by_name = {study.variant_name(v): v for v in study.variants()}
    if claim.kind == "each":
        out = []
        for name in claim.variants:
            ref = study.reference_of(by_name[name], claim.against)
            label = f"{name} − {study.variant_name(ref)} (test error, pp)"
            out.append(_contrast_piece(study, results, label, {by_name[name]: 1.0, ref: -1.0}, claim))
        return out
    if claim.kind == "trend":
        index = [f.name for f in study.factors].index(claim.factor)
        x = [float(by_name[v][index]) for v in claim.variants]
        weights: dict[tuple[str, ...], float] = {}
        for name, w in zip(claim.variants, slope_weights(x, claim.per)):
            weights[by_name[name]] = weights.get(by_name[name], 0.0) + w
            if not claim.absolute:
                ref = study.reference_of(by_name[name])
                weights[ref] = weights.get(ref, 0.0) - w
        first = by_name[claim.variants[0]]
        rest = "-".join(lvl for i, lvl in enumerate(first) if i != index)
        if not claim.absolute:
            ref_rest = "-".join(lvl for i, lvl in enumerate(study.reference_of(first)) if i != index)
            what = f"({rest} − {ref_rest})"
        else:
            what = f"{rest}'s error"
        label = f"slope of {what} over {claim.factor}, pp per {claim.unit}"
        return [_contrast_piece(study, results, label, weights, claim)]
    out = []
    for name, below in [*((v, True) for v in claim.collapses), *((v, False) for v in claim.holds)]:
        runs = [r for r in results if r.variant == name]
        for stage in claim.stages:
            values = [
                r.probe[f"stage{stage}_rel"] for r in runs if r.status == "finished" and f"stage{stage}_rel" in r.probe
            ]
            logs = log_ratios(values)
            paper = study.paper_response.get(name, [])
            out.append(
                Piece(
                    f"{name} stage-{stage} response / stage 1 ({'<' if below else '≥'} {claim.below:g}, "
                    "this project's threshold)",
                    estimate(logs, diverged=sum(r.status == "diverged" for r in runs)),
                    math.log(claim.below),
                    -1.0 if below else 1.0,
                    math.nan,  # the paper's curve is read off a figure: judged against the threshold only
                    shown_paper=paper[stage - 1] if len(paper) >= stage else math.nan,
                    log=True,
                )
            )
    return out


def _reference(claim: Claim, study: Study, results: list[RunResult]) -> tuple[str, float, float]:
    """The claim's reference variant (its first comparison's), its mean error here and the paper's."""
    by_name = {study.variant_name(v): v for v in study.variants()}
    first = by_name[(claim.variants or claim.holds or claim.collapses)[0]]
    levels = first if claim.kind == "response" or claim.absolute else study.reference_of(first, claim.against)
    name = study.variant_name(levels)
    errors = [r.test_error for r in results if r.variant == name and r.status == "finished"]
    return name, float(np.mean(errors)) if errors else math.nan, study.paper.get(levels, math.nan)


def _rows(claim: Claim, study: Study, results: list[RunResult], reg: Regime) -> list[dict]:
    found = pieces(claim, study, results)
    p = [pc.est.p(pc.null) for pc in found]
    p_adj = holm(p) if len(found) > 1 else p
    iut, adjusted, rows = [], [], []
    for pc, raw, adj in zip(found, p, p_adj):
        level = consistent_level(raw, adj)
        low, high = pc.est.interval(level)
        low95, high95 = pc.est.interval()
        seed_low, seed_high = pc.est.interval(images=False)
        if pc.est.n == 0:
            first, second = NOT_RUN, NOT_RUN
        elif pc.est.n < 2:
            first, second = FEW_SEEDS, FEW_SEEDS
        else:
            first, second = outcome(low95, high95, pc, claim), outcome(low, high, pc, claim)
        iut.append(first)
        adjusted.append(second)
        sens = ""
        if pc.sensitivity is not None:
            s_low, s_high = pc.sensitivity.interval(images=False)
            sens = outcome(s_low, s_high, pc, claim)
        show = np.exp if pc.log else (lambda v: v)
        rows.append(
            {
                "evidence": pc.label,
                "value": float(show(pc.est.delta)),
                "ci_low": float(show(low)),
                "ci_high": float(show(high)),
                "ci_level": level,
                "ci95_low": float(show(low95)),
                "ci95_high": float(show(high95)),
                "seed_ci95_low": float(show(seed_low)),
                "seed_ci95_high": float(show(seed_high)),
                "interval_sources": "seeds and test images" if pc.est.has_images else "seeds only",
                "paper": pc.shown_paper,
                "ratio": pc.est.delta / pc.paper if not math.isnan(pc.paper) and pc.paper else math.nan,
                "seeds": pc.est.n,
                "diverged": pc.est.diverged,
                "p": raw,
                "p_holm": adj,
                "outcome": second,
                "sensitivity": sens,
                # planned for the claim's verdict: every piece at α (intersection-union); log scale for ratios
                "detectable": detectable(pc.est, ALPHA) if not pc.log else math.nan,
                "seeds_for_paper": seeds_needed(pc.paper, pc.est, ALPHA) if reg.tier == "paper protocol" else math.nan,
            }
        )
    overall = combine(iut, adjusted)
    for r in rows:
        r["claim_outcome"] = overall
    return rows


def judge(study: Study, results: list[RunResult]) -> pd.DataFrame:
    """Every claim of ``study`` judged on one configuration's ``results``: one row per piece of
    evidence, in ``COLUMNS``, with the configuration's regime and how many of the study's runs
    (variants x seeds) it has and its command-line cuts, so that the ledger can choose among them."""
    first = results[0]
    reg = regime(results)
    of_runs = len(study.variants()) * len({r.seed for r in results})
    rows = []
    for claim in study.claims:
        ref, ref_error, ref_paper = _reference(claim, study, results)
        for row in _rows(claim, study, results, reg):
            rows.append(
                {
                    "claim": claim.text,
                    "study": study.name,
                    "paper_table": study.paper_table,
                    "section": BEYOND if study.paper_table == BEYOND else "paper",
                    "kind": claim.kind,
                    **row,
                    "tier": reg.tier,
                    "reductions": "; ".join(reg.reductions),
                    "train_images": reg.train_images,
                    "test_images": reg.test_images,
                    "steps": reg.steps,
                    "share": reg.fraction,
                    "reference": ref,
                    "reference_error": ref_error,
                    "reference_paper": ref_paper,
                    "profile": first.profile,
                    "configuration": first.configuration,
                    "precision": first.precision,
                    "synthetic": first.synthetic,
                    "device": "; ".join(sorted({r.device for r in results})),
                    "runs": len(results),
                    "of_runs": of_runs,
                    "cuts": "; ".join(f"{k}={v}" for k, v in first.overrides.items() if is_identity(k)),
                    "note": study.notes,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def write_claims(df: pd.DataFrame, folder: Path) -> Path | None:
    """``claims.csv`` of one report (None if the study has no claims)."""
    if df.empty:
        return None
    path = Path(folder) / CLAIMS_CSV
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path
