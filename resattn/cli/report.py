"""``resattn report`` (``studies/report.py``): rebuild a study's reports from the run store (or a W&B
project), and the claims ledger; :func:`write_reports` also serves ``resattn study``, which reports
what it trained.

Bad input exits 2 with one line naming the flag, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resattn.cli.entry import OneLineParser
from resattn.study.options import DEFAULTS
from resattn.study.preflight import check_folder
from resattn.study.spec import available_studies, load_study
from resattn.study.store import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, study_dir, study_results
from resattn.study.wandb_runs import WANDB_PROJECT


def check_runs_dir(runs_dir: Path) -> None:
    """A runs folder to read from: missing is fine (no results yet), a file is bad input."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ValueError(f"--runs-dir {runs_dir} is a file, not a directory.")


def rebuild_ledger(reports_dir: Path) -> int:
    """Rebuild ``reports/CLAIMS.md`` / ``.csv`` from every report's ``claims.csv``; say where."""
    from resattn.report.ledger import write_ledger

    try:
        md, _ = write_ledger(reports_dir)
    except (OSError, ValueError) as err:
        print(
            f"error: the claims ledger could not be written ({err}); rebuild it with studies/report.py --claims",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"Claims ledger: {md} (and {md.with_suffix('.csv').name})")
    return EXIT_OK


def write_reports(
    study,
    runs_dir: Path,
    reports_dir: Path,
    results=None,
    select=lambda configuration, profile: True,
    wandb_mode: str = "disabled",
    project: str = WANDB_PROJECT,
    entity: str | None = None,
) -> dict[str, list[Path]]:
    """One report per configuration of ``study`` that has results (and passes ``select``), each from
    every result of that configuration in the run store (or ``results``, e.g. from W&B); the runs
    folders of a configuration without a result are listed as missing. Returns the files per folder."""
    from resattn.report import build_report, by_configuration, report_folder
    from resattn.study.store import study_runs

    from_store = results is None
    results = study_results(runs_dir, study.name) if from_store else results
    specs = [rd.read_spec() for rd in study_runs(runs_dir, study.name)] if from_store else []
    written = {}
    for name, group in by_configuration(results).items():
        if not select(name, group[0].profile):
            continue
        folder = report_folder(reports_dir, study, name)
        expected = [s for s in specs if s.configuration == name] or None
        files = build_report(
            study, group, folder, runs_dir if from_store else None, expected, wandb_mode, project, entity
        )
        if files:
            written[folder] = files
    return written


def add_study_argument(parser: argparse.ArgumentParser) -> None:
    """The positional STUDY of ``resattn study`` and ``resattn report``: a packaged study or a YAML path."""
    parser.add_argument(
        "study", nargs="?", help=f"one of: {', '.join(available_studies())}; or the path of a study YAML"
    )


def report_main(argv: list[str] | None = None) -> int:
    """``resattn report``: rebuild reports/<study>/<configuration>/ from the run store (or W&B)."""
    parser = OneLineParser(
        prog="resattn report",
        description="Rebuild reports/<study>/<configuration>/ (tables and plots) from the stored results of every "
        "configuration of a study, whatever command ran last; or from a W&B project.",
        epilog="examples:\n  python studies/report.py ARL_vs_NAL\n  python studies/report.py ARL_vs_NAL --list\n"
        "  python studies/report.py ARL_vs_NAL --configuration quick\n"
        "  python studies/report.py --claims                  # the claims ledger only\n"
        "  python studies/report.py ARL_vs_NAL --from-wandb my-team/resattn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_study_argument(parser)
    parser.add_argument("--list", action="store_true", help="list the configurations that have results")
    parser.add_argument(
        "--claims",
        action="store_true",
        help="rebuild the claims ledger (reports/CLAIMS.md, .csv) from every report's claims.csv; with a study, "
        "after rebuilding its reports",
    )
    parser.add_argument(
        "--wandb-dirs",
        action="store_true",
        help="print the offline W&B folders to upload (wandb sync $(...)), abandoned attempts left out",
    )
    parser.add_argument("--configuration", default=None, help="report only this configuration (see --list)")
    parser.add_argument("--profile", default=None, help="report only the configurations of this profile")
    parser.add_argument(
        "--from-wandb",
        default=None,
        metavar="ENTITY/PROJECT",
        help="read results from this W&B project (the study's group) instead of runs/",
    )
    parser.add_argument("--runs-dir", type=Path, default=DEFAULTS["runs_dir"], help="default: %(default)s")
    parser.add_argument("--reports-dir", type=Path, default=DEFAULTS["reports_dir"], help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.study is None and not args.claims:
        parser.error("name a study (or --claims to rebuild the claims ledger)")
    if args.study is None:
        try:
            check_folder(args.reports_dir, "--reports-dir")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return rebuild_ledger(args.reports_dir)
    try:
        study = load_study(args.study)
        check_runs_dir(args.runs_dir)
        if args.wandb_dirs:
            from resattn.study.store import study_runs
            from resattn.study.wandb_runs import sync_dirs

            print("\n".join(str(p) for p in sync_dirs(study_runs(args.runs_dir, study.name)) if p.is_dir()))
            return EXIT_OK
        if args.from_wandb:
            from resattn.study.wandb_runs import results_from_project

            if args.from_wandb.count("/") != 1:
                raise ValueError(f"--from-wandb {args.from_wandb!r}: expected ENTITY/PROJECT.")
            try:
                results = results_from_project(
                    args.from_wandb, study.name, study_dir(args.runs_dir, study.name, "wandb")
                )
            except Exception as err:  # no credentials, no network, no such project: W&B says which
                raise ValueError(f"--from-wandb {args.from_wandb}: {type(err).__name__}: {err}") from err
        else:
            results = study_results(args.runs_dir, study.name)
        from resattn.report import by_configuration

        groups = by_configuration(results)
        if args.list:
            print(f"{study.name}: configurations with results in {args.runs_dir / study.name}")
            for name, group in groups.items():
                seeds = sorted({r.seed for r in group})
                settings = "; ".join(f"{k}={v}" for k, v in group[0].overrides.items()) or "none"
                print(
                    f"  {name:<24} {len(group)} results ({len({r.variant for r in group})} variants, seeds {seeds}); "
                    f"profile {group[0].profile}, precision {group[0].precision}, command-line settings: {settings}"
                )
            return EXIT_OK
        check_folder(args.reports_dir, "--reports-dir")
        written = write_reports(
            study,
            args.runs_dir,
            args.reports_dir,
            results if args.from_wandb else None,
            select=lambda name, profile: args.configuration in (None, name) and args.profile in (None, profile),
        )
        if not written:
            have = ", ".join(groups) or "none"
            print(
                f"error: no results for {study.name} in {args.runs_dir / study.name} matching the selection "
                f"(configurations with results: {have}).",
                file=sys.stderr,
            )
            return EXIT_FAILED if not groups else EXIT_BAD_INPUT
        for folder, files in written.items():
            print(f"{folder}/: {', '.join(p.name for p in files)}")
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return rebuild_ledger(args.reports_dir)
