"""What a study invocation will do, decided in one read-only pass: :func:`plan_study` reads the
study and profile, expands them once into runs, resolves every run with the single-run CLI's parser
(precision, ids, ``config.yaml``), picks the pack size, finds what is finished, what resumes and
what trains in which unit (:class:`Task`), and, when something will train, checks the data and the
room for checkpoints and measures each run's cost for the ETA. Nothing is created, moved or
deleted: bad input fails here, before :func:`resattn.study.runner.run_study` writes anything.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from resattn.study import preflight, wandb_runs
from resattn.study.definition import Profile, Study
from resattn.study.options import StudyOptions, WorkerOptions
from resattn.study.record import RunSpec
from resattn.study.spec import check_runs, expand, load_profile, load_study, pick_variants, plural
from resattn.study.store import RunDir, pack_dir


@dataclass(frozen=True)
class Task:
    """One unit of training: a run, or a pack of runs (``members``) trained as one model. ``run_dir``
    is where its log, progress and checkpoint go (the run's folder, or the pack's); ``options``
    is what its worker is started with."""

    run_id: str
    run_dir: RunDir
    options: WorkerOptions = WorkerOptions()
    members: tuple[RunDir, ...] = ()

    @property
    def runs(self) -> tuple[RunDir, ...]:
        return self.members or (self.run_dir,)


@dataclass(frozen=True)
class StudyPlan:
    """A study invocation, planned: the runs with their resolved settings (``built``: what the
    CLI's parser made of each, by run id), where each lives (``dirs``), those ``todo`` (with
    ``resumable``: those that resume from a checkpoint), the units they train in, the pack size and,
    when something will train (not a dry run), each run's cost for the ETA (else None)."""

    study: Study
    profile: Profile
    wandb_mode: str
    runs: list[RunSpec]
    built: dict
    pack: int
    dirs: dict[str, RunDir]
    todo: list[RunSpec]
    resumable: list[RunSpec]
    units: list[Task]
    costs: dict[str, float] | None

    @property
    def unit_of(self) -> dict[str, Task]:
        """The unit each run to train belongs to, by run id."""
        return units_by_run(self.units)

    @property
    def trainer(self):
        """The resolved Lightning Trainer of the first run to train (devices, nodes: for the executor)."""
        return self.built[self.todo[0].run_id].cli.trainer


def plan_study(options: StudyOptions, out: TextIO | None = None) -> StudyPlan:
    """Plan ``options``' study: every check that needs no writing, and the lines that say what the
    study will do (to ``out``, stdout by default), printed once the runs are resolved, before the
    data is checked (with ``data.download`` it may be fetched, into the data folder only).

    Raises:
        ValueError: bad input (unknown study / profile / setting, wrong type, missing data, ...).
    """
    out = out or sys.stdout
    study = load_study(options.study)
    profile = load_profile(options.profile)
    wandb_mode = wandb_runs.decide_mode(options.wandb)
    # The precision of runs that set none is a default below every setting of the study (expand's
    # ``defaults``). Expanded with the CPU's (32-true), the runs are checked before torch loads; they
    # name their accelerators, which that default does not change, and only a CUDA machine that
    # trains them on its GPU has another default (bf16-mixed), for which they are expanded again.
    seeds, overrides, variants = options.seeds, options.overrides, options.variants
    planned = expand(study, profile, seeds, overrides, {"trainer.precision": preflight.CPU_PRECISION}, variants)
    check_runs(planned)  # every value against its declared range, before torch
    precision = preflight.default_precision(planned)  # torch: only once the cheap checks passed
    if precision != preflight.CPU_PRECISION:
        planned = expand(study, profile, seeds, overrides, {"trainer.precision": precision}, variants)
    runs, built = preflight.resolve(planned)
    size = options.pack or preflight.default_pack(runs, built)
    if size > 1 and any(b.cli.trainer.num_devices > 1 or b.cli.trainer.num_nodes > 1 for b in built.values()):
        raise ValueError(f"--pack {size}: a pack trains on one device; with trainer.devices > 1 use --pack 1.")
    dirs = {r.run_id: RunDir.of(options.runs_dir, r) for r in runs}
    has_result = {r.run_id: dirs[r.run_id].read_result() is not None for r in runs}  # a bad result: StoreError
    todo = [r for r in runs if options.force or not has_result[r.run_id]]
    units = plan_units(todo, dirs, size)
    unit_of = units_by_run(units)
    resumable = [
        r
        for r in todo
        if not options.force and (dirs[r.run_id].checkpoint.is_file() or unit_of[r.run_id].run_dir.checkpoint.is_file())
    ]
    plan = StudyPlan(study, profile, wandb_mode, runs, built, size, dirs, todo, resumable, units, None)
    say_plan(plan, options, out)
    if options.dry_run and todo:  # the data the real command needs: present, or what it would do about it
        try:
            preflight.check_data(todo, fetch=False)
        except ValueError as err:
            if not all(r.config["data"].get("download") for r in todo):  # absent: the class default, off
                raise
            print(f"  data: not here yet; the command will first try to download it (needs a network): {err}", file=out)
    if options.dry_run or not todo:
        return plan
    preflight.check_space(options.runs_dir, built, options.jobs if options.executor == "local" else 1)
    costs = preflight.costs(todo, built, preflight.check_data(todo))  # data last: it may download
    return StudyPlan(study, profile, wandb_mode, runs, built, size, dirs, todo, resumable, units, costs)


def say_plan(plan: StudyPlan, options: StudyOptions, out: TextIO) -> None:
    """The study's header: the study and profile, precision and configuration, the profile's
    reductions, and how many runs are finished, to train, packed and resumed."""
    study, runs, todo = plan.study, plan.runs, plan.todo
    print(
        f"Study {study.name} ({study.paper_table}: {study.title}); profile {plan.profile.name}: "
        f"{plan.profile.description}.",
        file=out,
    )
    precisions, configurations = sorted({r.precision for r in runs}), sorted({r.configuration for r in runs})
    print(f"  precision {', '.join(precisions)}; configuration {', '.join(configurations)}", file=out)
    for key, value in runs[0].reductions.items():
        print(f"  reduced: {key} = {value}", file=out)
    packs, n_variants = sum(len(u.members) > 1 for u in plan.units), len(pick_variants(study, options.variants))
    packed = f" in {len(plan.units)} process(es), {packs} pack(s) of up to {plan.pack} seeds" if plan.pack > 1 else ""
    print(
        f"{len(runs)} runs ({plural(n_variants, 'variant')} x {plural(options.seeds or plan.profile.seeds, 'seed')}): "
        f"{len(runs) - len(todo)} finished, {len(todo)} to train{packed} ({len(plan.resumable)} from a checkpoint); "
        f"executor {options.executor}; W&B {plan.wandb_mode}, project {options.project}.",
        file=out,
    )


def units_by_run(units: list[Task]) -> dict[str, Task]:
    """The unit each run of ``units`` trains in, by run id."""
    return {m.name: u for u in units for m in u.runs}


def plan_units(todo: list[RunSpec], dirs: dict[str, RunDir], size: int) -> list[Task]:
    """The units of training: each run alone (``size`` 1), or the runs of each variant in packs of up
    to ``size`` seeds (in seed order; the same runs give the same packs, so a pack resumes as one)."""
    if size == 1:
        return [Task(r.run_id, dirs[r.run_id]) for r in todo]
    groups: dict[tuple, list[RunSpec]] = {}
    for run in todo:
        groups.setdefault((run.variant, run.settings_digest), []).append(run)
    units = []
    for group in groups.values():
        group.sort(key=lambda r: r.seed)
        for i in range(0, len(group), size):
            members = tuple(dirs[r.run_id] for r in group[i : i + size])
            if len(members) == 1:
                units.append(Task(members[0].name, members[0]))
            else:
                folder = pack_dir(list(members))
                units.append(Task(folder.name, folder, members=members))
    return units
