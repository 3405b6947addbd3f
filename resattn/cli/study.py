"""``resattn study`` (``studies/run.py``): run a study, then report it (:mod:`resattn.cli.report`).

Bad input exits 2 with one line naming the flag or setting, before anything is written; the study
spec layer imports no torch, so a mistyped study, profile or flag is answered at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resattn.cli.entry import OneLineParser
from resattn.cli.report import add_study_argument, check_runs_dir, rebuild_ledger, write_reports
from resattn.study.options import DEFAULTS, EXECUTORS, StudyOptions
from resattn.study.spec import available_studies, load_study, parse_overrides, parse_pairs, profile_names
from resattn.study.store import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    RunDir,
    StoreError,
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


def _list_studies(runs_dir: Path) -> int:
    try:
        check_runs_dir(runs_dir)
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
    add_study_argument(parser)
    parser.add_argument("--list", action="store_true", help="list the studies, their paper tables and finished runs")
    parser.add_argument(
        "--profile",
        default=DEFAULTS["profile"],
        help=f"one of {', '.join(profile_names())} (ablations/profiles.yaml); default: %(default)s",
    )
    parser.add_argument(
        "--seeds", type=int, default=DEFAULTS["seeds"], help="seeds per variant (default: the profile's)"
    )
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
    parser.add_argument(
        "--jobs", type=int, default=DEFAULTS["jobs"], help="runs at once (local: processes; slurm: array parallelism)"
    )
    parser.add_argument(
        "--pack",
        type=int,
        default=DEFAULTS["pack"],
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
        default=DEFAULTS["wandb"],
        help="default: online with W&B credentials configured, else offline",
    )
    parser.add_argument("--project", default=DEFAULTS["project"], help="W&B project")
    parser.add_argument("--entity", default=DEFAULTS["entity"], help="W&B entity (user or team)")
    scale = parser.add_argument_group("where runs train (docs/scale-out.md: Ray, SLURM)")
    scale.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=DEFAULTS["executor"],
        help="local processes, Ray tasks or a SLURM array",
    )
    scale.add_argument(
        "--cpus-per-run", type=float, default=DEFAULTS["cpus_per_run"], help="CPU cores per run (local: torch threads)"
    )
    scale.add_argument(
        "--gpus-per-run",
        type=float,
        default=DEFAULTS["gpus_per_run"],
        help="GPUs per run (ray, slurm); see also trainer.devices",
    )
    scale.add_argument(
        "--ray-address",
        default=DEFAULTS["ray_address"],
        help="Ray cluster: auto (the one this machine belongs to) or HOST:PORT; default RAY_ADDRESS, else a local one",
    )
    scale.add_argument(
        "--max-retries", type=int, default=DEFAULTS["max_retries"], help="retries of a failed run, from its checkpoint"
    )
    scale.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="submitit parameter, e.g. --slurm slurm_partition=gpu --slurm timeout_min=720 (repeatable)",
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=DEFAULTS["runs_dir"], help="where runs are stored (default: %(default)s)"
    )
    parser.add_argument(
        "--reports-dir", type=Path, default=DEFAULTS["reports_dir"], help="where reports go (default: %(default)s)"
    )
    return parser


def study_main(argv: list[str] | None = None) -> int:
    """``resattn study``: run a study, then write its report."""
    parser = study_parser()
    args = parser.parse_args(argv)
    if args.list:
        return _list_studies(args.runs_dir)
    if args.study is None:
        parser.error("name a study (or --list to see them)")
    from resattn.study.plan import plan_study
    from resattn.study.runner import StopRequested, StudyError, run_study

    try:
        overrides = parse_overrides(args.overrides)
        if args.data_dir:
            overrides["data.data_dir"] = str(Path(args.data_dir).expanduser().resolve())
        if not args.download:
            overrides["data.download"] = False
        slurm = parse_pairs(args.slurm, "--slurm")
        flags = {k: v for k, v in vars(args).items() if k in StudyOptions.model_fields}
        options = StudyOptions.checked(**{**flags, "overrides": overrides, "slurm": slurm})
        outcome = run_study(plan_study(options), options)
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
    if options.dry_run:
        return EXIT_OK
    try:  # the configurations this invocation's results recorded (a finished run keeps its own)
        results = [r for r in (RunDir.of(options.runs_dir, run).read_result() for run in outcome.runs) if r is not None]
        configurations = {r.configuration for r in results}
        written = write_reports(
            outcome.study,
            options.runs_dir,
            options.reports_dir,
            select=lambda name, _: name in configurations,
            wandb_mode=outcome.wandb_mode,
            project=options.project,
            entity=options.entity,
        )
    except (OSError, ValueError) as err:  # the runs are trained and stored; only the report failed
        print(f"error: the report could not be written ({err}); rebuild it with studies/report.py", file=sys.stderr)
        return EXIT_FAILED
    for folder, files in written.items():
        print(f"Report: {folder}/ ({', '.join(p.name for p in files)})")
    if not written:
        print(f"No results for {outcome.study.name} yet: nothing to report.")
    else:
        code = rebuild_ledger(options.reports_dir)
        if code != EXIT_OK:
            return code
    return EXIT_FAILED if outcome.failed else EXIT_OK
