"""The claims ledger: ``reports/CLAIMS.md`` and ``reports/CLAIMS.csv``, one entry per claim of every
study, from the reports' ``claims.csv`` (:mod:`resattn.report.claims`).

Per study it takes the most faithful configuration with results, by what its runs actually ran
(:class:`resattn.report.regime.Regime`): complete and without command-line cuts first, then its
tier (paper protocol, shortened, pilot), then its share of the paper's steps x images x width²,
then seeds. Configurations on generated data (the smoke profile) test the code, not the paper, and
are left out, so a smoke run never changes the ledger. A report written by an earlier version
(no regime in its claims.csv) is re-worded from its stored intervals as a pilot or shortened run,
and says so. The ledger keeps its date when nothing else changed.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from resattn.report.claims import BEYOND, CLAIMS_CSV, COLUMNS, NOT_RUN, combine, words
from resattn.report.regime import TIERS
from resattn.study.spec import available_studies, load_profile, load_study, plural, reductions
from resattn.study.store import atomic_path

LEDGER = "CLAIMS"
LEGACY = (
    "judged by an earlier version: seed-only t intervals (on the ratios themselves for Fig. 4), p Holm-adjusted "
    "over the whole study; its table.md's verdict column uses that version's words"
)
NOT_JUDGED = "not judged: its report predates this claim"


def _legacy(df: pd.DataFrame) -> pd.DataFrame:
    """A claims.csv of an earlier version in today's columns: its tier from its profile (it has no
    realised counts), each piece's outcome recomputed from its stored 95% interval."""
    study = load_study(df["study"].iloc[0])
    profile = df["profile"].iloc[0]
    reduced = reductions(load_profile(profile), load_profile("paper"))
    df = df.rename(columns={"verdict": "old_verdict"}).copy()
    df["tier"] = "pilot" if profile in ("quick", "smoke") else "shortened"
    df["reductions"] = "; ".join([LEGACY, *(f"{k} = {v}" for k, v in reduced.items())])
    df["section"] = [BEYOND if t == BEYOND else "paper" for t in df["paper_table"]]
    df["ci_low"], df["ci_high"], df["ci_level"] = df["ci95_low"], df["ci95_high"], 0.95
    df["p_holm"], df["p"] = df["p"], math.nan  # that version stored the study-wide Holm p
    df["interval_sources"] = "seeds only"
    # planned by the earlier version from the SD seen (not its upper bound), and from a pilot for the paper
    df["detectable"] = df["seeds_for_paper"] = math.nan
    df["ratio"] = [
        v / p if p and not pd.isna(p) and k != "response" else math.nan
        for v, p, k in zip(df["value"], df["paper"], df["kind"])
    ]
    expect = {c.text: c.expect for c in study.claims}
    outcomes = []
    for _, row in df.iterrows():
        low, high, paper = row["ci95_low"], row["ci95_high"], row["paper"]
        if row["kind"] == "response" or pd.isna(low):
            old = row["old_verdict"]
            outcomes.append({"reproduced": "supported"}.get(old, old))
            continue
        side = (
            math.copysign(1.0, paper)
            if not pd.isna(paper) and paper
            else (-1.0 if expect.get(row["claim"]) == "lower" else 1.0)
        )
        if (low > 0 and side > 0) or (high < 0 and side < 0):
            outcomes.append(
                "supported" if pd.isna(paper) else "reproduced" if low <= paper <= high else "direction only"
            )
        else:
            outcomes.append("contradicted" if low > 0 or high < 0 else "inconclusive")
    df["outcome"] = outcomes
    df["claim_outcome"] = df["claim"].map(
        {c: combine(list(g["outcome"]), list(g["outcome"])) for c, g in df.groupby("claim")}
    )
    return df.reindex(columns=COLUMNS)


def _partial(row) -> str:
    """``; 4 of 6 runs; cut: trainer.max_epochs=1`` for a configuration with runs missing or cut
    from the command line; else ``""``."""
    runs, of = row.get("runs"), row.get("of_runs")
    missing = f"; {int(runs)} of {int(of)} runs" if not pd.isna(runs) and not pd.isna(of) and runs < of else ""
    cuts = row.get("cuts")
    return missing + (f"; cut: {cuts}" if isinstance(cuts, str) and cuts else "")


def _fidelity(df: pd.DataFrame) -> tuple:
    """How faithful a configuration's evidence is (module docstring)."""
    first = df.iloc[0]
    tier = TIERS.index(first["tier"]) if first["tier"] in TIERS else -1
    share = 0.0 if pd.isna(first["share"]) else first["share"]
    return (not _partial(first), tier, share, df["seeds"].max(), first["configuration"])


def ledger(reports_dir: Path) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """For every claim of every study: the evidence of the most faithful configuration under
    ``reports_dir`` (or a ``not run`` row); and, per study, the configurations that have claims."""
    rows, configurations = [], {}
    for name in available_studies():
        study = load_study(name)
        if not study.claims:
            continue
        found = [pd.read_csv(p) for p in sorted((Path(reports_dir) / name).glob(f"*/{CLAIMS_CSV}"))]
        found = [df for df in found if not df.empty and not ("synthetic" in df and df["synthetic"].any())]
        found = [df if "tier" in df else _legacy(df) for df in found]
        configurations[name] = [df["configuration"].iloc[0] for df in found]
        best = max(found, key=_fidelity) if found else None
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
                        "section": BEYOND if study.paper_table == BEYOND else "paper",
                        "kind": claim.kind,
                        "outcome": NOT_RUN if best is None else NOT_JUDGED,
                        "claim_outcome": NOT_RUN if best is None else NOT_JUDGED,
                        "configuration": None if best is None else best["configuration"].iloc[0],
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
    """One piece in a ledger cell: value [interval] (level, sources), the paper's, seeds, its
    outcome in its regime's words, the sensitivity to diverged runs, and the planning figure."""
    response = row["kind"] == "response"
    signed, digits = not response, 3 if response else 2
    interval = ""
    if not pd.isna(row["ci_low"]):
        interval = (
            f" [{_num(row['ci_low'], digits, signed)}, {_num(row['ci_high'], digits, signed)}] "
            f"({row['ci_level']:.1%}, {row['interval_sources']})"
        )
    paper = f"paper ≈{_num(row['paper'], 2, False)}" if response else f"paper {_num(row['paper'], 2, signed)}"
    seeds = int(row["seeds"]) if not pd.isna(row["seeds"]) else 0
    diverged = ""
    if not pd.isna(row["diverged"]) and row["diverged"]:
        sensitivity = words(row["sensitivity"], row["tier"]) if isinstance(row["sensitivity"], str) else "—"
        diverged = f", {int(row['diverged'])} diverged (left out; at chance error: {sensitivity})"
    plans = []
    if not pd.isna(row["detectable"]):
        regime = "" if row["tier"] == "paper protocol" else f" ({row['tier']} estimate)"
        plans.append(f"detectable ≥ {_num(row['detectable'], 2, False)} pp{regime}")
    if not pd.isna(row["seeds_for_paper"]):
        plans.append(f"the paper's value needs {_num(row['seeds_for_paper'], 0, signed=False)} seeds")
    plan = "".join(f"; {p}" for p in plans)
    if row["outcome"] == NOT_RUN:
        return f"{row['evidence']}: no runs in this configuration, {paper}"
    said = words(row["outcome"], row["tier"], row["ratio"], not pd.isna(row["paper"]) or response)
    value = _num(row["value"], digits, signed)
    return f"{row['evidence']}: {value}{interval}, {paper} ({plural(seeds, 'seed')}{diverged}): *{said}*{plan}"


def _where(first, seeds: int) -> str:
    """The evidence's configuration: tier, reductions, realised counts, reference error beside the paper's."""
    counts = (
        "data unrecorded"
        if pd.isna(first["train_images"])
        else f"{int(first['train_images']):,} train / {int(first['test_images']):,} test images"
    )
    reference = ""
    if isinstance(first["reference"], str):
        ours, theirs = _num(first["reference_error"], 1, False), _num(first["reference_paper"], 2, False)
        reference = f"; {first['reference']} {ours}% (paper {theirs}%)"
    cut = _partial(first)
    reduced = first["reductions"] if isinstance(first["reductions"], str) and first["reductions"] else "none"
    return (
        f"`{first['configuration']}`: **{first['tier']}** ({reduced}); {counts}; {plural(seeds, 'seed')}"
        f"{reference}{cut or '; overrides: none'}"
    )


HEADER = [
    "How to read it (what the code does, `resattn/report/claims.py`):",
    "",
    "- **Evidence** per study: the configuration whose runs come closest to the paper's protocol: complete and "
    "without command-line cuts first, then its tier, then its share of the paper's steps × training images × "
    "width², then seeds. The tier is what the runs recorded, not the profile's name: *paper protocol* (nothing "
    "reduced: width 1, 160,000 steps at batch 64, fp32, 50,000 / 10,000 images, data recorded), *pilot* (under 5% "
    "of the steps, 20% of the images or half the width), *shortened* (any other reduction).",
    "- **A piece of evidence**: a difference of test errors (pp), a slope, or a Fig. 4 response ratio (geometric "
    "mean, interval on the log scale, against this project's threshold; the paper's curve is read off its figure, "
    "≈). Its interval covers the seeds and the test images (a fixed split adds its own sampling noise) where every "
    "run recorded its per-image outcomes (never narrower than the seed-only interval), else the seeds only; it is "
    "Holm-adjusted within its claim, at the level shown, so that it excludes 0 exactly when the adjusted test rejects.",
    "- **A claim** is its own family (a variant in no claim changes no verdict). It holds when every piece's 95% "
    "interval excludes 0 on the paper's side (an intersection–union test: no adjustment); it is contradicted when "
    "a piece's adjusted interval excludes 0 on the other side.",
    "- **Words**: only the paper protocol says *reproduced* (the interval holds the paper's value, or lies within "
    "the claim's margin), *direction only* (it excludes the paper's value: the effect's ratio to the paper's is "
    "given), *contradicted* (also: inside ±the claim's smallest effect of interest) or *inconclusive*. A pilot or "
    "shortened run can only be *consistent* or *inconsistent* with the paper's direction, *unclear*, or have an "
    "effect below the smallest of interest. Claims with no paper value are judged on their direction.",
    "- **Planning** (80% power at α = 0.05, from the 80% upper bound of the seed SD and the test-sample error): "
    "the smallest effect a piece's seeds detect, an estimate for its regime only below the paper protocol (its "
    "error level is not the paper's); at the paper protocol, also the seeds the paper's value needs.",
    "- **Diverged runs** are left out (converged pairs); the verdict with them at chance error is given beside it.",
]


def _ratios(group: pd.DataFrame) -> tuple[float, float]:
    """The range of a claim's effect-to-paper ratios (NaN where none)."""
    ratios = [r for r in group["ratio"] if not pd.isna(r)]
    return (min(ratios), max(ratios)) if ratios else (math.nan, math.nan)


def _verdict(group: pd.DataFrame) -> str:
    """A judged claim's verdict in its regime's words; where some of its pieces have no runs in the
    configuration (e.g. the CIFAR-100 half of a study run on CIFAR-10 only), on how many it rests."""
    first = group.iloc[0]
    said = words(first["claim_outcome"], first["tier"], _ratios(group), first["section"] != BEYOND)
    missing = group[group["outcome"] == NOT_RUN]
    if missing.empty:
        return said
    return (
        f"{said}, on {len(group) - len(missing)} of {len(group)} pieces "
        f"(no runs for {', '.join(e.split(' (')[0] for e in missing['evidence'])})"
    )


def _table(df: pd.DataFrame) -> list[str]:
    lines = ["| claim | study | evidence from | evidence | verdict |", "|---|---|---|---|---|"]
    for claim, group in df.groupby("claim", sort=False):
        first = group.iloc[0]
        if first["claim_outcome"] in (NOT_RUN, NOT_JUDGED):
            where = "—" if pd.isna(first["configuration"]) else f"`{first['configuration']}`"
            evidence = "no results yet" if first["claim_outcome"] == NOT_RUN else "its runs' report predates this claim"
            verdict = first["claim_outcome"]
        else:
            where = _where(first, int(group["seeds"].max()))
            evidence = "<br>".join(_evidence(row) for _, row in group.iterrows())
            verdict = _verdict(group)
        note = " ¹" if isinstance(first["note"], str) and first["note"] else ""
        lines.append(
            f"| {claim} | {first['study']} ({first['paper_table']}){note} | {where} | {evidence} | **{verdict}** |"
        )
    return lines


README_BLOCK = (
    "<!-- results: begin (generated from reports/CLAIMS.csv by studies/report.py --claims) -->",
    "<!-- results: end -->",
)


def results_table(df: pd.DataFrame) -> str:
    """The ledger in one line per claim, for the README: claim, verdict in its regime's words,
    tier, seeds, configuration and device."""
    lines = ["| claim | study | verdict | tier | seeds | configuration | device |", "|---|---|---|---|---|---|---|"]
    for claim, group in df.groupby("claim", sort=False):
        first = group.iloc[0]
        if first["claim_outcome"] in (NOT_RUN, NOT_JUDGED):
            lines.append(f"| {claim} | {first['study']} | {first['claim_outcome']} | — | — | — | — |")
            continue
        said = _verdict(group)
        lines.append(
            f"| {claim} | {first['study']} | {said} | {first['tier']} | {int(group['seeds'].max())} | "
            f"`{first['configuration']}` | {first['device'] if isinstance(first['device'], str) else '—'} |"
        )
    return "\n".join(lines)


def update_readme(readme: Path, df: pd.DataFrame) -> bool:
    """Replace the results block of ``readme`` (between ``README_BLOCK``'s markers) with
    :func:`results_table`; False where the file has no such block or nothing changed."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    begin, end = README_BLOCK
    if begin not in text or end not in text:
        return False
    new = text[: text.index(begin) + len(begin)] + "\n" + results_table(df) + "\n" + text[text.index(end) :]
    if new == text:
        return False
    with atomic_path(readme) as tmp:
        tmp.write_text(new)
    return True


def write_ledger(reports_dir: Path) -> list[Path]:
    """``CLAIMS.md`` and ``CLAIMS.csv`` in ``reports_dir``, from the reports' ``claims.csv``; when
    ``reports_dir`` is a checkout's own ``reports/`` (beside its pyproject.toml), the results block
    of that checkout's README follows them (and says so)."""
    df, configurations = ledger(reports_dir)
    root = Path(reports_dir).resolve().parent
    if Path(reports_dir).resolve().name == "reports" and (root / "pyproject.toml").is_file():
        if update_readme(root / "README.md", df):
            print(f"README results block updated from {Path(reports_dir) / f'{LEDGER}.csv'}.")
    reports_dir = Path(reports_dir)
    lines = [
        "# Claims ledger: the paper's claims, judged by this suite",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the reports under `{reports_dir}/` "
        "(`studies/report.py --claims` rebuilds it); configurations on generated data are left out.",
        "",
        *HEADER,
        "",
        "## The paper's claims",
        "",
        *_table(df[df["section"] != BEYOND]),
    ]
    beyond = df[df["section"] == BEYOND]
    if not beyond.empty:
        lines += ["", "## Beyond the paper: this project's hypotheses", "", *_table(beyond)]
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
