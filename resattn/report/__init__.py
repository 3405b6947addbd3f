"""Reports of a study: tables (Markdown, CSV, LaTeX) and plots in ``reports/<study>/``, also sent to W&B."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from resattn.report import plots
from resattn.report.stats import summarise
from resattn.report.tables import readable, write_tables
from resattn.study.results import read_result
from resattn.study.spec import Run, Study


def header(study: Study, runs: list[Run], results: list[dict]) -> str:
    profile = runs[0].profile if runs else "?"
    devices = sorted({r.get("device", "?") for r in results})
    seeds = sorted({r["seed"] for r in results})
    lines = [
        f"# {study.name}: {study.title} (paper {study.paper_table})",
        "",
        f"Profile `{profile}`; {len(results)} of {len(runs)} runs have results; seeds {seeds}; "
        f"test error in % of the test split, final weights. Device: {'; '.join(devices)}. "
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
    ]
    if runs and runs[0].reductions:
        lines.append("")
        lines.append(
            "Reduced from the paper's protocol: " + "; ".join(f"{k} = {v}" for k, v in runs[0].reductions.items())
        )
    missing = [r.run_id for r in runs if r.run_id not in {x["run_id"] for x in results}]
    if missing:
        lines.append("")
        lines.append(f"Missing runs ({len(missing)}): " + ", ".join(missing))
    diverged = [r for r in results if r.get("status") == "diverged"]
    if diverged:
        lines.append("")
        lines.append(
            f"Diverged runs ({len(diverged)}; non-finite training loss, left out of the statistics, counted in "
            "the seeds column): "
            + ", ".join(
                f"{r['run_id']} at step {r['diverged']['step']} (loss {r['diverged']['loss']})" for r in diverged
            )
        )
    lines.append("")
    lines.append(
        "Δ vs ref: mean over matched seeds of (variant − reference) test error, in percentage points; "
        "p: paired t-test over those seeds, then Holm-corrected over the study's comparisons; "
        "paper's direction: whether the sign of Δ matches the paper's."
    )
    return "\n".join(lines)


def build_report(
    study: Study,
    runs: list[Run],
    runs_dir: Path,
    reports_dir: Path,
    results: list[dict] | None = None,
    wandb_mode: str = "disabled",
    project: str = "resattn",
    entity: str | None = None,
    out=None,
) -> list[Path]:
    """Write ``reports/<study>/`` from the results of ``runs`` (read from ``runs_dir`` unless given)."""
    out = out or sys.stdout
    if results is None:
        results = [r for r in (read_result(Path(runs_dir) / run.study / run.run_id) for run in runs) if r]
    if not results:
        print(f"No results for {study.name} yet: nothing to report.", file=out)
        return []
    folder = Path(reports_dir) / study.name
    folder.mkdir(parents=True, exist_ok=True)
    df = summarise(study, results)
    head = header(study, runs, results)
    written = write_tables(df, head, folder)
    variants = [study.variant_name(v) for v in study.variants()]
    styles = plots.variant_styles(study)
    n_seeds = len({r["seed"] for r in results})
    subtitle = f"{study.name}, profile {runs[0].profile if runs else '?'}, {n_seeds} seed(s)"
    finished = [r for r in results if r.get("status") == "finished"]  # curves and probes: diverged runs left out
    mask_files = {
        v: Path(runs_dir) / study.name / r["run_id"] / "masks.npz"
        for v in variants
        for r in finished
        if r["variant"] == v and r["seed"] == min(x["seed"] for x in finished)
    }
    for path in (
        plots.error_per_variant(df, subtitle, folder / "error.png"),
        plots.learning_curves(finished, styles, subtitle, folder / "curves.png"),
        plots.error_vs_depth(df, study, subtitle, folder / "depth.png"),
        plots.relative_response(finished, styles, study.paper_response, subtitle, folder / "response.png"),
        plots.mask_statistics(finished, styles, subtitle, folder / "mask_stats.png"),
        plots.mask_grid(mask_files, subtitle, folder / "masks.png"),
    ):
        if path is not None:
            written.append(path)
    if wandb_mode != "disabled":
        log_report_to_wandb(study, df, written, runs_dir, wandb_mode, project, entity, out)
    return written


def log_report_to_wandb(
    study: Study, df, files: list[Path], runs_dir: Path, mode: str, project: str, entity: str | None, out
) -> None:
    """One W&B run per report (job_type ``report`` in the study's group): the table and the plots."""
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        save_dir = Path(runs_dir) / study.name / "_report"
        save_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=project,
            entity=entity,
            group=study.name,
            job_type="report",
            name=f"{study.name}-report",
            mode=mode,
            dir=str(save_dir),
            reinit="create_new",
        )
        run.log(
            {
                "table": wandb.Table(dataframe=readable(df)),
                **{f"plots/{p.stem}": wandb.Image(str(p)) for p in files if p.suffix == ".png"},
            }
        )
        run.finish()
    except Exception as err:  # the files on disk are the report; W&B is a copy
        print(f"W&B: could not log the report ({type(err).__name__}: {err}); the files are in place.", file=out)
