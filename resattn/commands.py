"""The study commands, at the top of the layers: run a study then report it (``resattn study``,
``studies/run.py``), and rebuild reports from the run store (``resattn report``, ``studies/report.py``).

Bad input exits 2 with one line naming the flag or setting, before anything is written; the study
spec layer imports no torch, so a mistyped study, profile or flag is answered at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resattn.entry import OneLineParser
from resattn.study.executors import EXECUTORS
from resattn.study.preflight import check_folder
from resattn.study.spec import available_studies, load_study, parse_overrides, parse_pairs, profile_names
from resattn.study.store import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    RunDir,
    StoreError,
    study_dir,
    study_results,
)
from resattn.study.wandb_runs import WANDB_MODES

RUN_EXAMPLES = """examples:
  python studies/run.py ARL_vs_NAL --profile smoke                  # seconds per run, synthetic data
  python studies/run.py ARL_vs_NAL --data_dir path/to/cifar --jobs 2  # the quick profile, on your CIFAR folder
  python studies/run.py noisy_labels --profile paper --data_dir data --seeds 5   # downloads CIFAR if missing
  python studies/run.py my_study.yaml --profile smoke               # a study YAML of your own
  python studies/run.py --list                                      # the studies and their finished runs
  python studies/run.py ARL_vs_NAL --profile paper --executor ray --gpus-per-run 1 --ray-address auto

exit codes: 0 done; 1 some runs failed (run again to retry them); 2 bad input (nothing was written);
130 interrupted (the runs in flight saved checkpoints: run the same command again to continue).
"""


def _check_runs_dir(runs_dir: Path) -> None:
    """A runs folder to read from: missing is fine (no results yet), a file is bad input."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ValueError(f"--runs-dir {runs_dir} is a file, not a directory.")


def _list_studies(runs_dir: Path) -> int:
    try:
        _check_runs_dir(runs_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{'study':<18} {'paper':<24} finished runs (in {runs_dir})")
    for name in available_studies():
        study = load_study(name)
        try:
            finished = sum(r.status == "finished" for r in study_results(runs_dir, name))
        except StoreError as err:
            finished = f"? ({err})"
        print(f"{name:<18} {study.paper_table:<24} {finished}")
    return EXIT_OK


def study_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="resattn study",
        description="Train every variant x seed of a study (ablations/<study>.yaml), log each run to W&B, and "
        "write reports/<study>/<configuration>/.",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "study", nargs="?", help=f"one of: {', '.join(available_studies())}; or the path of a study YAML"
    )
    parser.add_argument("--list", action="store_true", help="list the studies, their paper tables and finished runs")
    parser.add_argument(
        "--profile",
        default="quick",
        help=f"one of {', '.join(profile_names())} (ablations/profiles.yaml); default: %(default)s",
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the profile's)")
    parser.add_argument("--data_dir", default=None, help="CIFAR folder (shortcut for --set data.data_dir=...)")
    parser.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download CIFAR into --data_dir (default: ./data) when it is missing (md5 checked); on by default",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set model.width=0.5 (repeatable)",
    )
    parser.add_argument(
        "--variants",
        action="append",
        default=None,
        metavar="NAME",
        help="train only these variants: names or shell patterns, e.g. --variants 'cifar10-*' (repeatable); "
        "the report covers every finished run of the study",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (local: processes; slurm: array parallelism)")
    parser.add_argument(
        "--pack",
        type=int,
        default=None,
        help="train up to K seeds of a variant in one process as one vectorised model (default: 1 on a CPU, "
        "every seed up to 8 on a GPU); a pack is one task for --jobs and the executors",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="retrain runs that have a result (the old one is moved to the run's attic/)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; train nothing")
    parser.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        default=None,
        help="default: online with W&B credentials configured, else offline",
    )
    parser.add_argument("--project", default="resattn", help="W&B project")
    parser.add_argument("--entity", default=None, help="W&B entity (user or team)")
    scale = parser.add_argument_group("where runs train (docs/scale-out.md: Ray, SLURM)")
    scale.add_argument(
        "--executor", choices=EXECUTORS, default="local", help="local processes, Ray tasks or a SLURM array"
    )
    scale.add_argument("--cpus-per-run", type=float, default=None, help="CPU cores per run (local: torch threads)")
    scale.add_argument(
        "--gpus-per-run", type=float, default=0, help="GPUs per run (ray, slurm); see also trainer.devices"
    )
    scale.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster: auto (the one this machine belongs to) or HOST:PORT; default RAY_ADDRESS, else a local one",
    )
    scale.add_argument("--max-retries", type=int, default=1, help="retries of a failed run, from its checkpoint")
    scale.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="submitit parameter, e.g. --slurm slurm_partition=gpu --slurm timeout_min=720 (repeatable)",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs are stored (default: runs)")
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"), help="where reports go (default: reports)")
    return parser


def study_main(argv: list[str] | None = None) -> int:
    """``resattn study``: run a study, then write its report."""
    parser = study_parser()
    args = parser.parse_args(argv)
    if args.list:
        return _list_studies(args.runs_dir)
    if args.study is None:
        parser.error("name a study (or --list to see them)")
    from resattn.study.runner import StopRequested, StudyError, run_study

    try:
        overrides = parse_overrides(args.overrides)
        if args.data_dir:
            overrides["data.data_dir"] = str(Path(args.data_dir).expanduser().resolve())
        if not args.download:
            overrides["data.download"] = False
        slurm = parse_pairs(args.slurm, "--slurm")
        check_folder(args.reports_dir, "--reports-dir")
        outcome = run_study(
            args.study,
            args.profile,
            args.seeds,
            overrides,
            args.jobs,
            args.force,
            args.dry_run,
            args.runs_dir,
            args.wandb,
            args.project,
            args.entity,
            executor=args.executor,
            cpus_per_run=args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            ray_address=args.ray_address,
            max_retries=args.max_retries,
            slurm=slurm,
            pack=args.pack,
            variants=args.variants,
        )
    except StopRequested as stop:
        print(str(stop), file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:  # during the checks: nothing was written yet
        print("interrupted before anything was written.", file=sys.stderr)
        return EXIT_STOPPED
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        return EXIT_OK
    try:  # the configurations this invocation's results recorded (a finished run keeps its own)
        results = [r for r in (RunDir.of(args.runs_dir, run).read_result() for run in outcome.runs) if r is not None]
        configurations = {r.configuration for r in results}
        written = write_reports(
            outcome.study,
            args.runs_dir,
            args.reports_dir,
            select=lambda name, _: name in configurations,
            wandb_mode=outcome.wandb_mode,
            project=args.project,
            entity=args.entity,
        )
    except (OSError, ValueError) as err:  # the runs are trained and stored; only the report failed
        print(f"error: the report could not be written ({err}); rebuild it with studies/report.py", file=sys.stderr)
        return EXIT_FAILED
    for folder, files in written.items():
        print(f"Report: {folder}/ ({', '.join(p.name for p in files)})")
    if not written:
        print(f"No results for {outcome.study.name} yet: nothing to report.")
    else:
        code = _write_ledger(args.reports_dir)
        if code != EXIT_OK:
            return code
    return EXIT_FAILED if outcome.failed else EXIT_OK


def _write_ledger(reports_dir: Path) -> int:
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
    project: str = "resattn",
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
    parser.add_argument(
        "study", nargs="?", help=f"one of: {', '.join(available_studies())}; or the path of a study YAML"
    )
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
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    if args.study is None and not args.claims:
        parser.error("name a study (or --claims to rebuild the claims ledger)")
    if args.study is None:
        try:
            check_folder(args.reports_dir, "--reports-dir")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return _write_ledger(args.reports_dir)
    try:
        study = load_study(args.study)
        _check_runs_dir(args.runs_dir)
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
    return _write_ledger(args.reports_dir)
