"""Train every variant x seed of a study, log each run to W&B, write reports/<study>/.

python studies/run.py ARL_vs_NAL --profile quick --data_dir ../shared/data/cifar10-exact
python studies/run.py noisy_labels --seeds 5 --jobs 2 --set trainer.max_epochs=20
python studies/run.py mask_structure --dry-run
python studies/run.py ARL_vs_NAL --profile paper --executor ray --gpus-per-run 1 --ray-address auto
python studies/run.py ARL_vs_NAL --profile paper --executor slurm --gpus-per-run 1 --slurm slurm_partition=gpu

Exit codes: 0 done; 1 some runs failed (run again to retry them); 2 bad input; 130 interrupted
(the runs in flight saved checkpoints: run the same command again to continue).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resattn.study.executors import EXECUTORS
from resattn.study.runner import WANDB_MODES, StopRequested, run_study
from resattn.study.spec import available_studies, parse_overrides, parse_pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help=f"one of: {', '.join(available_studies())} (ablations/<study>.yaml)")
    parser.add_argument("--profile", default="quick", help="smoke, quick or paper (ablations/profiles.yaml)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the profile's)")
    parser.add_argument("--data_dir", default=None, help="CIFAR folder (shortcut for --set data.data_dir=...)")
    parser.add_argument("--download", action="store_true", help="download CIFAR if missing (data.download=true)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set model.width=0.5 (repeatable)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (local: processes; slurm: array parallelism)")
    parser.add_argument("--force", action="store_true", help="retrain runs that already have a result")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; train nothing")
    parser.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        default=None,
        help="default: online with W&B credentials configured, else offline",
    )
    parser.add_argument("--project", default="resattn", help="W&B project")
    parser.add_argument("--entity", default=None, help="W&B entity (user or team)")
    scale = parser.add_argument_group("where runs train (README: Running a study on a Ray cluster / on SLURM)")
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
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        if args.data_dir:
            overrides["data.data_dir"] = str(Path(args.data_dir).expanduser().resolve())
        if args.download:
            overrides["data.download"] = True
        failed = run_study(
            args.study,
            args.profile,
            args.seeds,
            overrides,
            args.jobs,
            args.force,
            args.dry_run,
            args.runs_dir,
            args.reports_dir,
            args.wandb,
            args.project,
            args.entity,
            executor=args.executor,
            cpus_per_run=args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            ray_address=args.ray_address,
            max_retries=args.max_retries,
            slurm=parse_pairs(args.slurm, "--slurm"),
        )
    except StopRequested as stop:
        print(str(stop), file=sys.stderr)
        return 130
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
