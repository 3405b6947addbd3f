"""The paper's claims judged on a study's results, and the claims ledger that gathers them.

Each study YAML lists the claims it tests (:class:`resattn.study.spec.Claim`: ``each``, ``trend``
or ``response``). A report judges them on its configuration's results and writes ``claims.csv``
next to its table, one row per piece of evidence (a comparison, a slope, a probed value). The
ledger, ``reports/CLAIMS.md`` with ``reports/CLAIMS.csv``, has one row per claim of every study:
the evidence of the most faithful configuration that has any (complete and without command-line
cuts first; then the profile's place in ``profiles.yaml``: paper, then gpu, then quick; then the
most seeds; one with runs missing or cut says so); a study without results reads
``not run``. Configurations trained on synthetic data (the smoke profile) say nothing about the
paper's claims and are left out, so a smoke run never changes the ledger. It is rebuilt from the
``claims.csv`` files under ``reports/``, after every study and by ``studies/report.py --claims``, and
rewritten only when its content changes.

A claim's verdict combines its evidence: ``reproduced`` when every piece is, ``contradicted``
when any piece is, ``inconclusive`` otherwise (``needs ≥ 2 seeds`` when no piece has two).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from resattn.report.stats import decide, detectable, level, seeds_needed, side_verdict, trend, verdict
from resattn.study.spec import Claim, Study, available_studies, load_profile, load_study, plural, profile_names
from resattn.study.store import RunResult, atomic_path

CLAIMS_CSV, LEDGER = "claims.csv", "CLAIMS"
COLUMNS = [
    "claim",
    "study",
    "paper_table",
    "kind",
    "evidence",
    "value",
    "ci95_low",
    "ci95_high",
    "paper",
    "seeds",
    "diverged",
    "p",
    "detectable",
    "seeds_for_paper",
    "verdict",
    "claim_verdict",
    "profile",
    "configuration",
    "precision",
    "synthetic",
    "runs",
    "of_runs",
    "cuts",
    "note",
]
NOT_RUN = "not run"


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from those of its evidence (module docstring)."""
    if not verdicts or all(v == NOT_RUN for v in verdicts):
        return NOT_RUN
    if "contradicted" in verdicts:
        return "contradicted"
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if all(v in ("needs ≥ 2 seeds", NOT_RUN) for v in verdicts):
        return "needs ≥ 2 seeds"
    return "inconclusive"


def _each(claim: Claim, summary: pd.DataFrame) -> list[dict]:
    rows = []
    for name in claim.variants:
        row = summary.loc[name]
        rows.append(
            {
                "evidence": f"{name} − {row['reference']} (test error, pp)",
                "value": row["diff_vs_ref"],
                "ci95_low": row["diff_ci95_low"],
                "ci95_high": row["diff_ci95_high"],
                "paper": row["paper_diff"],
                "seeds": row["paired_seeds"],
                "diverged": row["diverged"] + row["ref_diverged"],
                "p": row["p_holm"],
                "detectable": row["detectable_diff"],
                "seeds_for_paper": row["seeds_for_paper_diff"],
                "verdict": _expected(claim, row) if row["paired_seeds"] else NOT_RUN,
            }
        )
    return rows


def _expected(claim: Claim, row) -> str:
    """A comparison's verdict; against the claim's own direction (``expect``) where the paper has no Δ."""
    if claim.expect is None or not pd.isna(row["paper_diff"]):
        return row["verdict"]
    side = 1.0 if claim.expect == "higher" else -1.0
    return decide(row["paired_seeds"], row["diff_ci95_low"], row["diff_ci95_high"], row["p_holm"], side)


def _trend(claim: Claim, study: Study, results: list[RunResult], summary: pd.DataFrame) -> list[dict]:
    t = trend(study, results, claim.variants, claim.factor, claim.per)
    s = t.slope
    levels = {study.variant_name(v): v for v in study.variants()}[claim.variants[0]]
    index = [f.name for f in study.factors].index(claim.factor)

    def others(lvls: tuple[str, ...]) -> str:  # the levels of the factors other than the trend's
        return "-".join(x for i, x in enumerate(lvls) if i != index)

    involved = {*claim.variants, *(summary.loc[v, "reference"] for v in claim.variants)}
    return [
        {
            "evidence": f"slope of ({others(levels)} − {others(study.reference_of(levels))}) over {claim.factor}, "
            f"pp per {claim.unit}",
            "value": s.delta,
            "ci95_low": s.low,
            "ci95_high": s.high,
            "paper": t.paper,
            "seeds": s.n,
            "diverged": int(sum(summary.loc[v, "diverged"] for v in involved)),
            "p": s.p,  # one trend test per study: nothing to adjust
            "detectable": detectable(s.sd, s.n),
            "seeds_for_paper": seeds_needed(t.paper, s.sd),
            "verdict": verdict(s, t.paper, s.p) if s.n else NOT_RUN,
        }
    ]


def _response(claim: Claim, study: Study, results: list[RunResult]) -> list[dict]:
    rows = []
    for name, below in [*((v, True) for v in claim.collapses), *((v, False) for v in claim.holds)]:
        runs = [r for r in results if r.variant == name]
        for stage in claim.stages:
            values = [r.probe[f"stage{stage}_rel"] for r in runs if f"stage{stage}_rel" in r.probe]
            v = level(values, floor=0.0)  # a mean |response| ratio is >= 0
            paper = study.paper_response.get(name, [])
            rows.append(
                {
                    "evidence": f"{name} stage-{stage} response / stage 1 ({'<' if below else '≥'} {claim.below:g})",
                    "value": v.mean,
                    "ci95_low": v.low,
                    "ci95_high": v.high,
                    "paper": paper[stage - 1] if len(paper) >= stage else math.nan,
                    "seeds": v.n,
                    "diverged": sum(r.status == "diverged" for r in runs),  # no probe: not in the values
                    "p": math.nan,
                    "detectable": math.nan,
                    "seeds_for_paper": math.nan,
                    "verdict": side_verdict(v, claim.below, below) if v.n else NOT_RUN,
                }
            )
    return rows


def judge(study: Study, summary: pd.DataFrame, results: list[RunResult]) -> pd.DataFrame:
    """Every claim of ``study`` judged on one configuration's ``results`` (``summary``: their
    :func:`resattn.report.stats.summarise`): one row per piece of evidence, in ``COLUMNS``, each
    saying how many runs the configuration has of the study's (variants x seeds) and its cuts (the
    command-line settings that change results), so that the ledger can prefer a complete one."""
    summary = summary.set_index("variant", drop=False)
    first = results[0]
    of_runs = len(study.variants()) * len({r.seed for r in results})
    cuts = "; ".join(f"{k}={v}" for k, v in first.overrides.items())
    rows = []
    for claim in study.claims:
        if claim.kind == "each":
            evidence = _each(claim, summary)
        elif claim.kind == "trend":
            evidence = _trend(claim, study, results, summary)
        else:
            evidence = _response(claim, study, results)
        overall = combine([e["verdict"] for e in evidence])
        for e in evidence:
            rows.append(
                {
                    "claim": claim.text,
                    "study": study.name,
                    "paper_table": study.paper_table,
                    "kind": claim.kind,
                    **e,
                    "claim_verdict": overall,
                    "profile": first.profile,
                    "configuration": first.configuration,
                    "precision": first.precision,
                    "synthetic": first.synthetic,
                    "runs": len(results),
                    "of_runs": of_runs,
                    "cuts": cuts,
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


def _partial(row) -> str:
    """``; 4 of 6 runs; cut: trainer.max_epochs=1`` for a configuration with runs missing or cut
    from the command line (a report written before these columns existed was complete); else ``""``."""
    runs, of = row.get("runs"), row.get("of_runs")
    missing = f"; {int(runs)} of {int(of)} runs" if not pd.isna(runs) and not pd.isna(of) and runs < of else ""
    cuts = row.get("cuts")
    return missing + (f"; cut: {cuts}" if isinstance(cuts, str) and cuts else "")


def _fidelity(df: pd.DataFrame, order: list[str]) -> tuple:
    """How faithful a configuration's evidence is: complete and uncut first (every run of the study,
    no command-line cuts), then its profile's place in profiles.yaml, then seeds."""
    profile = df["profile"].iloc[0]
    whole = not _partial(df.iloc[0])
    return (whole, order.index(profile) if profile in order else -1, df["seeds"].max(), df["configuration"].iloc[0])


def ledger(reports_dir: Path) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """For every claim of every study: the evidence of the most faithful configuration under
    ``reports_dir`` (or a ``not run`` row); and, per study, the configurations that have claims."""
    order = profile_names()
    rows, configurations = [], {}
    for name in available_studies():
        study = load_study(name)
        if not study.claims:
            continue
        found = [pd.read_csv(p) for p in sorted((Path(reports_dir) / name).glob(f"*/{CLAIMS_CSV}"))]
        found = [df for df in found if not df.empty and not ("synthetic" in df and df["synthetic"].any())]
        configurations[name] = [df["configuration"].iloc[0] for df in found]
        best = max(found, key=lambda df: _fidelity(df, order)) if found else None
        for claim in study.claims:
            mine = best[best["claim"] == claim.text] if best is not None else None
            if mine is not None and not mine.empty:
                rows += mine.to_dict("records")
            else:
                rows.append(
                    {
                        "claim": claim.text,
                        "study": name,
                        "paper_table": study.paper_table,
                        "kind": claim.kind,
                        "verdict": NOT_RUN,
                        "claim_verdict": NOT_RUN,
                        "note": study.notes,
                    }
                )
    return pd.DataFrame(rows, columns=COLUMNS), configurations


def _num(value, digits: int = 2, signed: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _evidence(row) -> str:
    """One piece of evidence in a ledger cell: value [95% CI], the paper's, seeds, verdict, seeds needed."""
    signed, digits = row["kind"] != "response", 2 if row["kind"] != "response" else 3
    interval = ""
    if not pd.isna(row["ci95_low"]):
        interval = f" [{_num(row['ci95_low'], digits, signed)}, {_num(row['ci95_high'], digits, signed)}]"
    seeds = int(row["seeds"]) if not pd.isna(row["seeds"]) else 0
    diverged = f", {int(row['diverged'])} diverged (at chance error)" if row["diverged"] else ""
    plan = ""
    if not pd.isna(row["seeds_for_paper"]):
        plan = f"; the paper's value needs {_num(row['seeds_for_paper'], 0, signed=False)} seeds"
    return (
        f"{row['evidence']}: {_num(row['value'], digits, signed)}{interval}, paper {_num(row['paper'], 2, signed)} "
        f"({plural(seeds, 'seed')}{diverged}): *{row['verdict']}*{plan}"
    )


def write_ledger(reports_dir: Path) -> list[Path]:
    """``CLAIMS.md`` and ``CLAIMS.csv`` in ``reports_dir``, from the reports' ``claims.csv``."""
    df, configurations = ledger(reports_dir)
    reports_dir = Path(reports_dir)
    profiles = {name: load_profile(name).synthetic for name in profile_names()}
    faithful = ", then ".join(name for name in reversed(profiles) if not profiles[name])
    synthetic = ", ".join(name for name, generated in profiles.items() if generated)
    lines = [
        "# Claims ledger: the paper's claims, judged by this suite",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the reports under `{reports_dir}/` "
        "(`studies/report.py --claims` rebuilds it). For each study, the evidence of its most faithful "
        f"configuration with results (complete and without command-line cuts first, else its missing runs "
        f"and cuts are named; then profile {faithful}; then the most seeds); configurations trained on "
        f"synthetic data (the {synthetic} profile) test the code, not the paper, and are left out.",
        "",
        "Evidence: a difference (variant − reference, test error in pp) with its 95% paired t interval over seeds "
        "and its verdict (reproduced: the interval excludes 0 on the paper's side and the Holm-adjusted p < 0.05; "
        "contradicted: it excludes 0 on the other side and p < 0.05; inconclusive: these seeds cannot tell); a "
        "trend's slope of the per-seed differences over the factor, judged the same way; a probed value against "
        "the paper's threshold (reproduced when its 95% interval lies on the claimed side). A claim is reproduced "
        "when all its evidence is, contradicted when any of it is. 'needs N seeds': the seeds a paired test needs "
        "to detect the paper's value with 80% power, given the spread seen here.",
        "",
        "| claim | study | configuration | evidence | verdict |",
        "|---|---|---|---|---|",
    ]
    for claim, group in df.groupby("claim", sort=False):
        first = group.iloc[0]
        if first["claim_verdict"] == NOT_RUN:
            where, evidence = "—", "no results yet"
        else:
            seeds = int(group["seeds"].max())
            where = (
                f"`{first['configuration']}` ({first['profile']}, {first['precision']}, {plural(seeds, 'seed')}"
                f"{_partial(first)})"
            )
            evidence = "<br>".join(_evidence(row) for _, row in group.iterrows())
        note = " ¹" if isinstance(first["note"], str) and first["note"] else ""
        lines.append(
            f"| {claim} | {first['study']} ({first['paper_table']}){note} | {where} | {evidence} | "
            f"**{first['claim_verdict']}** |"
        )
    notes = {r["study"]: r["note"] for _, r in df.iterrows() if isinstance(r["note"], str) and r["note"]}
    if notes:
        lines += ["", "¹ " + " ".join(f"{study}: {note}" for study, note in notes.items())]
    lines += [
        "",
        "Configurations with claims, by study: "
        + "; ".join(f"{study}: {', '.join(c) or 'none'}" for study, c in configurations.items()),
    ]
    md, csv = reports_dir / f"{LEDGER}.md", reports_dir / f"{LEDGER}.csv"
    text, table = "\n".join(lines) + "\n", df.to_csv(index=False)
    if csv.is_file() and md.is_file() and csv.read_text() == table and _undated(md.read_text()) == _undated(text):
        return [md, csv]  # nothing changed: the committed ledger keeps its date
    with atomic_path(md) as tmp:
        tmp.write_text(text)
    with atomic_path(csv) as tmp:
        tmp.write_text(table)
    return [md, csv]


def _undated(text: str) -> str:
    """The ledger without its generation time."""
    return re.sub(r"^Generated \S+ \S+ UTC ", "", text, flags=re.M)
