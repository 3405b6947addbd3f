"""Regenerate reports/<study>/ (tables and plots) from stored results, or from a W&B project.

python studies/report.py ARL_vs_NAL                      # the runs of the last studies/run.py
python studies/report.py ARL_vs_NAL --profile quick --seeds 2
python studies/report.py ARL_vs_NAL --from-wandb my-team/resattn
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from resattn.report import build_report
from resattn.study.spec import available_studies, expand, load_profile, load_study, parse_overrides


def results_from_wandb(path: str, study: str, download_to: Path) -> list[dict]:
    """The ``result.json`` of every run in the W&B group ``study`` of project ``ENTITY/PROJECT``."""
    import wandb

    results = []
    for run in wandb.Api().runs(path, filters={"group": study, "jobType": {"$ne": "report"}}):
        target = download_to / run.id
        try:
            run.file("result.json").download(root=str(target), replace=True)
        except Exception as err:  # a run that never finished has no result file
            print(f"skipping W&B run {run.name}: no result.json ({err})", file=sys.stderr)
            continue
        results.append(json.loads((target / "result.json").read_text()))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help=f"one of: {', '.join(available_studies())}")
    parser.add_argument("--profile", default=None, help="default: the profile of the last studies/run.py")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE")
    parser.add_argument(
        "--from-wandb",
        default=None,
        metavar="ENTITY/PROJECT",
        help="read results from this W&B project (the study's group) instead of runs/",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    try:
        study = load_study(args.study)
        latest_path = args.runs_dir / study.name / "latest.json"
        latest = json.loads(latest_path.read_text()) if latest_path.is_file() else {}
        profile = load_profile(args.profile or latest.get("profile", "quick"))
        overrides = parse_overrides(args.overrides) if args.overrides is not None else latest.get("overrides", {})
        seeds = args.seeds if args.seeds is not None else latest.get("seeds")
        runs = expand(study, profile, seeds, overrides)
        results = None
        if args.from_wandb:
            results = results_from_wandb(args.from_wandb, study.name, args.runs_dir / study.name / "_wandb")
            results = [r for r in results if r["run_id"] in {run.run_id for run in runs}]
        written = build_report(study, runs, args.runs_dir, args.reports_dir, results=results)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
