"""Reports of a study, from the run store: tables (Markdown, CSV, LaTeX) and plots in
``reports/<study>/<configuration>/``, also sent to W&B.

A study's results are grouped by the configuration they record (profile, precision and the
command-line settings that change results; :attr:`resattn.study.record.RunSpec.configuration`), so
reports of different profiles or settings never overwrite each other, and a report finds its
results whatever command ran last. This layer reads the run store and knows nothing of the runner.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from resattn.config import ModelConfig
from resattn.report import attention_plots, plots
from resattn.report.claims import BEYOND, judge, pieces, write_claims
from resattn.report.stats import summarise
from resattn.report.tables import readable, write_tables
from resattn.study import wandb_runs
from resattn.study.record import RunResult, RunSpec
from resattn.study.spec import Study, plural
from resattn.study.store import RunDir, study_dir


def by_configuration(results: list[RunResult]) -> dict[str, list[RunResult]]:
    """Results grouped by the study configuration they belong to, in a stable order."""
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for r in sorted(results, key=lambda r: (r.configuration, r.variant, r.seed)):
        groups[r.configuration].append(r)
    return dict(groups)


def current_settings(group: list[RunResult]) -> tuple[list[RunResult], list[RunResult]]:
    """Split one configuration's results into those trained with its newest settings and older ones
    (trained before the profile or study YAML changed), so that a report never mixes the two."""
    newest = max(group, key=lambda r: r.finished_at).settings_digest
    return [r for r in group if r.settings_digest == newest], [r for r in group if r.settings_digest != newest]


def header(study: Study, results: list[RunResult], expected: list[RunSpec] | None, older: list[RunResult]) -> str:
    first = results[0]
    devices = sorted({r.device for r in results})
    seeds = sorted({r.seed for r in results})
    total = f" of {len(expected)}" if expected else ""
    table = study.paper_table if study.paper_table == BEYOND else f"paper {study.paper_table}"
    lines = [
        f"# {study.name}: {study.title} ({table})",
        "",
        f"Profile `{first.profile}`, precision `{first.precision}` (configuration `{first.configuration}`); "
        f"{len(results)}{total} runs have results; seeds {seeds}; test error in % of the test split, final "
        f"weights. Device: {'; '.join(devices)}. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
    ]
    if study.notes:
        lines += ["", f"Note: {study.notes}"]
    if first.reductions:
        lines += [
            "",
            "Reduced from the paper's protocol: " + "; ".join(f"{k} = {v}" for k, v in first.reductions.items()),
        ]
    if expected:
        missing = sorted({r.run_id for r in expected} - {r.run_id for r in results})
        if missing:
            lines += ["", f"Missing runs ({len(missing)}): " + ", ".join(missing)]
    if older:
        lines += [
            "",
            f"Left out ({len(older)}): runs of this configuration trained with other settings or variants (the "
            "profile or study YAML changed since): " + ", ".join(r.run_id for r in older),
        ]
    diverged = [r for r in results if r.status == "diverged"]
    if diverged:
        lines += [
            "",
            f"Diverged runs ({len(diverged)}; non-finite training loss): left out of the errors and contrasts "
            "(converged pairs); the diverged column gives Fisher's exact p against the reference's; the claims give "
            "the verdict with them at chance error beside it: "
            + ", ".join(f"{r.run_id} at step {r.diverged.step} (loss {r.diverged.loss})" for r in diverged),
        ]
    lines += [
        "",
        "Δ vs ref: mean over converged seeds of (variant − reference) test error, in percentage points, with its "
        "95% interval over seeds and test images (every run records which test images it got wrong: the split's "
        "sampling noise is in it; seed-only where a run has no such record) and the seed-only 95% t interval; p: "
        "the unadjusted two-sided p of that difference. No verdicts here: each claim of the study is judged in "
        "claims.csv and the ledger (reports/CLAIMS.md), within its own family.",
    ]
    return "\n".join(lines)


def build_report(
    study: Study,
    results: list[RunResult],
    folder: Path,
    runs_dir: Path | None = None,
    expected: list[RunSpec] | None = None,
    wandb_mode: str = "disabled",
    project: str = wandb_runs.WANDB_PROJECT,
    entity: str | None = None,
    out=None,
) -> list[Path]:
    """Write the report of one configuration's ``results`` into ``folder``; the mask grid reads the
    masks from ``runs_dir`` (when given); ``expected`` (the runs the study asked for) names the
    missing ones. Files of an earlier build that this one does not write are removed (a report is
    derived from the runs). Returns the files written."""
    out = out or sys.stdout
    order = [study.variant_name(v) for v in study.variants()]
    unknown = [r for r in results if r.variant not in order]  # variants the study YAML no longer has
    results, older = current_settings([r for r in results if r.variant in order])
    older += unknown
    if not results:
        return []
    if expected:
        expected = [s for s in expected if s.settings_digest == results[0].settings_digest]
    folder.mkdir(parents=True, exist_ok=True)
    df = summarise(study, results)
    written = write_tables(df, header(study, results, expected, older), folder)
    judged = judge(study, results)
    claims_file = write_claims(judged, folder)
    written += [claims_file] if claims_file else []
    styles = plots.variant_styles(study)
    seeds = len({r.seed for r in results})
    subtitle = f"{study.name}, profile {results[0].profile}, {results[0].precision}, {plural(seeds, 'seed')}"
    finished = [r for r in results if r.status == "finished"]  # curves and probes: diverged runs left out
    first_seed = min((r.seed for r in finished), default=None)
    shown = sorted((r for r in finished if r.seed == first_seed), key=lambda r: order.index(r.variant))
    mask_files = {r.variant: RunDir.of(runs_dir, r).masks for r in shown} if runs_dir is not None else {}
    normalizations = {r.variant: r.config["model"].get("normalization", ModelConfig.normalization) for r in results}
    figures = [
        plots.error_per_variant(df, subtitle, folder / "error.png", plots.side_by_side(study)),
        plots.learning_curves(finished, styles, subtitle, folder / "curves.png"),
        attention_plots.relative_response(
            finished, styles, study.paper_response, subtitle, folder / "response.png", _threshold(study)
        ),
        attention_plots.mask_statistics(finished, order, normalizations, subtitle, folder / "mask_stats.png"),
        attention_plots.mask_grid(mask_files, first_seed, subtitle, folder / "masks.png"),
    ]
    trends = [c for c in study.claims if c.kind == "trend"]
    for i, claim in enumerate(trends):
        row = judged[judged["claim"] == claim.text].iloc[0]
        path = folder / ("delta.png" if i == 0 else f"delta-{i + 1}.png")
        figures.append(
            plots.trend_differences(study, results, claim, pieces(claim, study, results)[0], row, subtitle, path)
        )
    written += [p for p in figures if p is not None]
    for stale in sorted(set(p for p in folder.iterdir() if p.is_file()) - set(written)):
        stale.unlink()  # a file of an earlier build (another table's delta.png, ...): derived, rebuilt from runs/
    if wandb_mode != "disabled" and runs_dir is not None:
        configuration = results[0].configuration
        save_dir = study_dir(runs_dir, study.name, f"report-{configuration}")
        target = wandb_runs.Target(wandb_mode, project, entity)
        wandb_runs.log_report(study.name, configuration, readable(df), written, save_dir, target, out)
    return written


def _threshold(study: Study) -> float | None:
    """The threshold of the study's response claim (this project's choice), if it has one."""
    return next((c.below for c in study.claims if c.kind == "response"), None)


def report_folder(reports_dir: Path, study: Study, configuration: str) -> Path:
    """``reports/<study>/<configuration>/``."""
    return Path(reports_dir) / study.name / configuration
