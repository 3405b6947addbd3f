"""One prepared GPU check: the performance questions of a first GPU window, answered in one command.

Stages, the most important first, each with its own time budget (``--dry-run`` lists them):
the device (name, torch / CUDA / cuDNN versions, fp32 and bf16 matmul peak); fp32 against bf16
for one network and one pack (launch- or memory-bound: this decides the GPU profiles'
precision); the plain loop's images/s of Attention-56/92/164; packs of 1, 3, 5 and 8 seeds
against as many separate networks, with peak memory; a short study run of the ``gpu`` profile
end to end through ``studies/run.py`` (synthetic data: the GPU machine has neither CIFAR nor a
network); ``torch.compile`` (default and ``reduce-overhead``) of packs and plain networks; the
study's Lightning step against the plain loop; memory layout and cudnn.benchmark. Every rate is
measured in the ``gpu`` profile's precision (bf16-mixed) unless the stage compares precisions, on
channels_last networks (the study's layout) unless the stage compares layouts, at batch 64.

A stage is stopped when its budget, or the overall ``--budget``, runs out (what it measured so far
is kept), and skipped, reported as skipped, when nothing is left for it; an exception (an OOM, a
compile error) is recorded with its measurement and the check goes on. ``gpu_check.json`` and
``gpu_check.md`` are rewritten after every measurement, so a killed check still leaves its files.
From the measured rates they project the wall time of ARL_vs_NAL with 5 seeds at the ``gpu`` and
``paper`` profiles, and the fraction of the goal each configuration reaches: on one H100-class
GPU, ARL_vs_NAL at the paper protocol with 5 seeds (45 runs) in at most 4 hours, and one
Attention-92 paper-protocol run in at most 15 minutes.

    python benchmarks/gpu_check.py                 # on a GPU: about 7.5 minutes, into $OUT or benchmarks/gpu_check/
    python benchmarks/gpu_check.py --dry-run       # the stages and their budgets, on any machine
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check   # every stage's code, tiny, on a CPU

Without CUDA (and without ``--device cpu``) it says so in one line and exits 2. Exit 0 when every
stage that ran finished without an error, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import throughput as tp
import torch
import yaml

from resattn import ModelConfig
from resattn.machine import describe_device
from resattn.module import ResidualAttentionClassifier
from resattn.study.spec import load_profile, load_study
from resattn.summary import model_cost

ROOT = Path(__file__).resolve().parents[1]
GOAL_STUDY, GOAL_SEEDS, GOAL_STUDY_HOURS = "ARL_vs_NAL", 5, 4.0  # the paper protocol, 45 runs, on one GPU
GOAL_RUN_DEPTH, GOAL_RUN_MINUTES = 92, 15.0  # one Attention-92 paper-protocol run
BF16, FP32 = "bf16-mixed", "32-true"


@dataclass(frozen=True)
class Sizes:
    """What the stages measure: the real sizes, or tiny ones that run every stage's code on a CPU."""

    width: float
    batch: int
    steps: int  # timed steps per measurement
    warmup: int  # steps before the timing (compilation, cudnn.benchmark's search)
    depths: tuple[int, ...]  # the plain loop's networks
    packs: tuple[int, ...]  # the pack sizes compared with separate runs
    depth: int  # the network of the pack, compile, Lightning and layout stages
    k: int  # the pack of the precision, compile, Lightning and layout stages
    study_steps: int
    study_seeds: int
    matmul_n: int


FULL = Sizes(1.0, 64, 30, 5, (56, 92, 164), (1, 3, 5, 8), 92, 5, 300, 2, 8192)
TINY = Sizes(0.125, 8, 2, 1, (56,), (1, 2), 56, 2, 3, 2, 256)


class StageTimeout(BaseException):
    """Raised by the alarm when a stage's budget runs out; a BaseException, so that a measurement's
    error handling lets it through."""


def _alarm(signum, frame):
    raise StageTimeout


@dataclass
class Stage:
    name: str
    budget_s: float
    what: str
    run: Callable[[Check, dict], None]


class Check:
    """The state of one check: its report (the JSON document), written with ``gpu_check.md`` after
    every measurement, and the helpers the stages measure with."""

    def __init__(self, args, sizes: Sizes, out: Path, command: str) -> None:
        self.args, self.sizes, self.out = args, sizes, out
        self.device = torch.device(args.device)
        self.backend = "aot_eager" if args.tiny else "inductor"
        self.costs: dict[str, dict] = {}  # ARL_vs_NAL's variants: depth and multiply-adds per image
        self.report = {
            "command": command,
            "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tiny": args.tiny,
            "budget_s": args.budget,
            "sizes": sizes.__dict__,
            "compile_backend": self.backend,
            "machine": {},
            "stages": [],
            "projection": [],
        }

    # -- measurements ---------------------------------------------------------------------------
    def measure(self, stage: dict, fn: Callable[[], dict], **key) -> dict:
        """One row of ``stage``: ``key`` (what is measured) and the figures ``fn`` returns, or the
        error it raised (an OOM, a compile error: recorded, and the stage goes on)."""
        row = {**key, "error": None}
        stage["rows"].append(row)
        torch.backends.cudnn.benchmark = key.get("cudnn_benchmark", False)
        torch._dynamo.reset()  # a fresh compile per measurement: never the recompile limit's silent eager fallback
        tp.reset_peak_memory(self.device)
        try:
            row.update(fn())
            row["peak_gib"] = tp.peak_memory(self.device)
        except Exception as error:  # recorded in the report; the next measurement runs
            row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
            row["traceback"] = traceback.format_exc(limit=-8)
            self.recover()
        self.save()
        return row

    def recover(self) -> None:
        """Free what a failed or stopped measurement left: compiled graphs, cached device memory."""
        torch._dynamo.reset()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def key(
        self,
        loop: str,
        depth: int,
        k: int = 1,
        precision: str = BF16,
        compile: str = "false",
        layout: str = "channels_last",
        cudnn_benchmark: bool = False,
    ) -> dict:
        """What a row measures; by default as the gpu profile trains (bf16-mixed, eager, channels_last)."""
        return dict(
            loop=loop,
            network=ModelConfig(depth=depth).name,
            depth=depth,
            k=k,
            precision=precision,
            compile=compile,
            layout=layout,
            cudnn_benchmark=cudnn_benchmark,
        )

    def rate(self, key: dict) -> Callable[[], dict]:
        """The measurement of ``key``: images/s over all seeds, ms per step and warm-up seconds of
        the plain loop (``plain``), K networks in turn (``separate``), the packed loop
        (``packed``), or Trainer.fit of one network (``lightning``) or of the study's packed step
        (``lightning-packed``)."""
        s, device = self.sizes, self.device
        channels_last = key["layout"] == "channels_last"
        steps, warmup, precision, mode = s.steps, s.warmup, key["precision"], key["compile"]

        def run() -> dict:
            members = tp.pack_members(key["depth"], s.width, key["k"], channels_last)
            loaders = [tp.batches(s.batch * 8, s.batch, device) for _ in members]
            warm = None
            if key["loop"] == "plain":
                tp.compile_net(members[0].net, mode, self.backend)
                rate, warm = tp.plain_loop(members[0], loaders[0], steps, warmup, device, precision)
            elif key["loop"] in ("separate", "packed"):
                nets = [m.net for m in members]
                packed = key["loop"] == "packed"
                rate, warm = tp.packed_loop(
                    nets, loaders, steps, warmup, device, precision, packed, channels_last, mode, self.backend
                )
            elif key["loop"] == "lightning":
                tp.compile_net(members[0].net, mode, self.backend)
                data = tp.LoaderData(loaders[0])
                rate = tp.lightning_rate(members[0], data, s.batch, steps, warmup, device, precision)
            else:
                rate = tp.packed_lightning_rate(
                    members, s.batch, steps, warmup, device, precision, mode, None, self.backend
                )
            return {"img_s": rate, "ms_step": 1e3 * key["k"] * s.batch / rate, "warmup_s": warm}

        return run

    def row(self, stage: dict, loop: str, depth: int, **kw) -> dict:
        """Measure the row of :meth:`key` ``(loop, depth, **kw)`` into ``stage``."""
        key = self.key(loop, depth, **kw)
        return self.measure(stage, self.rate(key), **key)

    def rows(self) -> list[dict]:
        """Every row measured so far, of every stage."""
        return [r for stage in self.report["stages"] for r in stage.get("rows", []) if r.get("img_s")]

    def find(self, **key) -> dict | None:
        """The first measured row with these key values."""
        return next((r for r in self.rows() if all(r.get(k) == v for k, v in key.items())), None)

    # -- the report -----------------------------------------------------------------------------
    def save(self) -> None:
        self.report["projection"] = projection(self)
        for name, text in (("gpu_check.json", json.dumps(self.report, indent=1)), ("gpu_check.md", markdown(self))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / name)


# -- the stages ---------------------------------------------------------------------------------
def stage_device(check: Check, stage: dict) -> None:
    """The machine: device, versions, fp32 and bf16 matmul peak."""
    device, machine = check.device, check.report["machine"]
    machine.update(
        device=describe_device(device),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        python=sys.version.split()[0],
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        machine[f"{name}_matmul_tflops"] = tp.matmul_peak(device, dtype, check.sizes.matmul_n) / 1e12


def variant_costs(width: float) -> dict[str, dict]:
    """The depth and multiply-adds per image of each variant of the goal's study, at ``width``."""
    study, costs = load_study(GOAL_STUDY), {}
    for levels in study.variants():
        settings = {k: v for f, lvl in zip(study.factors, levels) for k, v in f.levels[lvl].items()}
        model = {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith("model.")}
        net = ResidualAttentionClassifier(**{**model, "width": width, "probes": False}).net
        costs[study.variant_name(levels)] = {"depth": model["depth"], "macs": model_cost(net)["macs"]}
    return costs


def bound(ratio: float) -> str:
    """What the bf16 / fp32 rate ratio of one configuration says about its step."""
    if ratio < 1.15:
        return f"launch-bound: bf16 buys little (x{ratio:.2f}); fp32 costs almost nothing here"
    if ratio < 1.5:
        return f"partly memory-bound: bf16 x{ratio:.2f}"
    return f"memory-bound: bf16 x{ratio:.2f}; the GPU profiles should train in bf16"


def stage_precision(check: Check, stage: dict) -> None:
    """fp32 against bf16 for one network and one pack, with what the ratio says."""
    s = check.sizes
    for loop, k in (("plain", 1), ("packed", s.k)):
        rows = {p: check.row(stage, loop, s.depth, k=k, precision=p) for p in (FP32, BF16)}
        if rows[FP32].get("img_s") and rows[BF16].get("img_s"):
            label = f"{rows[BF16]['network']}, {loop} K={k}"
            stage["notes"].append(f"{label}: {bound(rows[BF16]['img_s'] / rows[FP32]['img_s'])}")


def stage_plain(check: Check, stage: dict) -> None:
    """The plain loop, eager, for each network."""
    for depth in check.sizes.depths:
        check.row(stage, "plain", depth)


def stage_packs(check: Check, stage: dict) -> None:
    """Each pack size against as many separate networks stepping in turn."""
    s = check.sizes
    for k in s.packs:
        separate = check.row(stage, "separate", s.depth, k=k)
        packed = check.row(stage, "packed", s.depth, k=k)
        if separate.get("img_s") and packed.get("img_s"):
            stage["notes"].append(f"K={k}: packed / separate x{packed['img_s'] / separate['img_s']:.2f}")


def stage_compile(check: Check, stage: dict) -> None:
    """Compiled packs and networks (the study's pack and the single-run goal's network first), each
    against its eager rate where one was measured."""
    s = check.sizes
    plan = [("packed", s.depth, s.k, "true"), ("plain", s.depth, 1, "reduce-overhead")]  # the study's, the run's
    plan += [("packed", s.depth, s.k, "reduce-overhead"), ("plain", s.depth, 1, "true")]
    plan += [("plain", d, 1, mode) for d in s.depths if d != s.depth for mode in ("true", "reduce-overhead")]
    for loop, depth, k, mode in plan:
        row = check.row(stage, loop, depth, k=k, compile=mode)
        eager = check.find(**{c: row[c] for c in ("depth", *CONFIG)} | {"compile": "false"})
        if row.get("img_s") and eager:
            stage["notes"].append(
                f"{row['network']} {loop} K={k} compile={mode}: x{row['img_s'] / eager['img_s']:.2f} over eager, "
                f"{row['warmup_s']:.0f} s warm-up (compilation included)"
            )


def stage_lightning(check: Check, stage: dict) -> None:
    """Trainer.fit of one network and of the study's packed step, each against its plain loop."""
    s = check.sizes
    for loop, light, k in (("plain", "lightning", 1), ("packed", "lightning-packed", s.k)):
        ours = check.row(stage, loop, s.depth, k=k)
        theirs = check.row(stage, light, s.depth, k=k)
        if ours.get("img_s") and theirs.get("img_s"):
            stage["notes"].append(f"{light} / {loop} loop, K={k}: {theirs['img_s'] / ours['img_s']:.2f}")


def stage_layout(check: Check, stage: dict) -> None:
    """Memory layout and cudnn.benchmark for a pack and one network, and the fastest of each."""
    s = check.sizes
    for loop, k in (("packed", s.k), ("plain", 1)):
        for layout in ("channels_last", "contiguous"):
            for benchmark in (False, True):
                check.row(stage, loop, s.depth, k=k, layout=layout, cudnn_benchmark=benchmark)
        rows = [r for r in stage["rows"] if r["loop"] == loop and r.get("img_s")]
        if rows:
            best = max(rows, key=lambda r: r["img_s"])
            stage["notes"].append(
                f"{loop} K={k}: fastest {best['layout']}, cudnn.benchmark {best['cudnn_benchmark']} "
                f"({best['img_s']:.0f} img/s)"
            )


def study_command(check: Check, folder: Path) -> list[str]:
    """``studies/run.py`` on two variants of ARL_vs_NAL (Attention-56 ARL and NAL, in a study YAML
    of their own) with the gpu profile's settings, on synthetic data, a short run, seeds packed."""
    s = check.sizes
    study = yaml.safe_load((ROOT / "ablations" / f"{GOAL_STUDY}.yaml").read_text())
    small = {
        "title": f"{study['title']}: Attention-56 only (gpu_check)",
        "paper_table": study["paper_table"],
        "dataset": study["dataset"],
        "factors": {"attention_learning": ["arl", "nal"], "depth": [56]},
        "reference": study["reference"],
        "paper": {level: {56: study["paper"][level][56]} for level in ("arl", "nal")},
    }
    path = folder / "gpu_check_study.yaml"
    path.write_text(yaml.safe_dump(small, sort_keys=False))
    sets = {
        "trainer.max_steps": s.study_steps,
        "data.dataset": "synthetic",
        "data.synthetic_size": f"[{s.study_steps * s.batch}, {10 * s.batch}]",
    }
    if check.args.tiny:
        sets.update({"model.width": s.width, "data.batch_size": s.batch, "trainer.precision": FP32})
    if check.device.type == "cpu":
        sets["trainer.accelerator"] = "cpu"
    command = [sys.executable, str(ROOT / "studies" / "run.py"), str(path), "--profile", "gpu"]
    command += ["--seeds", str(s.study_seeds), "--pack", str(s.study_seeds), "--jobs", "1", "--wandb", "offline"]
    command += ["--force"]  # train again in a folder of an earlier check (its results go to each run's attic/)
    command += ["--runs-dir", str(folder / "runs"), "--reports-dir", str(folder / "reports")]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command


def stage_study(check: Check, stage: dict) -> None:
    """The study of :func:`study_command` in its own process (stopped, with its workers, at the
    budget); its results and report checked."""
    folder = check.out / "study"
    folder.mkdir(exist_ok=True)
    command = study_command(check, folder)
    stage["command"] = " ".join(command)
    log = folder / "study.log"
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = process.wait()
        except StageTimeout:
            os.killpg(process.pid, signal.SIGTERM)  # the runner and its workers checkpoint and stop
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            raise
    stage["returncode"], stage["wall_s"] = rc, time.monotonic() - start
    stage["output_tail"] = log.read_text().splitlines()[-15:]
    results = [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*/*/result.json"))]
    for r in results:
        pack = r.get("pack") or {}
        row = {"run": r["run_id"], "status": r["status"], "wall_time_s": r["wall_time_s"], "error": None}
        row.update(img_s=r["train_images_per_s"] or pack.get("images_per_s"), test_error=r["test_error"])
        row["pack"] = pack.get("id")
        stage["rows"].append(row)
    reports = sorted(str(p.relative_to(check.out)) for p in (folder / "reports").glob("*/*/table.md"))
    stage["reports"] = reports
    expected = 2 * check.sizes.study_seeds
    if rc != 0 or len(results) != expected or not reports or any(r["status"] != "finished" for r in results):
        raise RuntimeError(
            f"studies/run.py exited {rc} with {len(results)} of {expected} results and {len(reports)} report(s); "
            f"see {log.relative_to(check.out)}"
        )


STAGES = [  # most important first; the budgets sum to the default --budget
    Stage("device", 15, "device, torch / CUDA / cuDNN versions, fp32 and bf16 matmul peak", stage_device),
    Stage(
        "precision",
        45,
        "fp32 against bf16: Attention-92 plain and a pack of 5 (launch- or memory-bound)",
        stage_precision,
    ),
    Stage("plain", 30, "plain-loop img/s of Attention-56/92/164 at width 1.0, batch 64, eager", stage_plain),
    Stage(
        "packs",
        50,
        "Attention-92 packs of 1, 3, 5, 8 seeds against as many separate networks, peak memory",
        stage_packs,
    ),
    Stage(
        "study", 120, "a 300-step gpu-profile study (2 variants x 2 seeds, packed) through studies/run.py", stage_study
    ),
    Stage(
        "compile",
        100,
        "compile default and reduce-overhead: a pack of 5, then Attention-92/56/164 plain",
        stage_compile,
    ),
    Stage("lightning", 40, "the study's Lightning step, single and packed, against the plain loop", stage_lightning),
    Stage(
        "layout", 35, "channels_last against contiguous, cudnn.benchmark off and on (pack of 5, plain)", stage_layout
    ),
]


# -- projection and report ----------------------------------------------------------------------
CONFIG = ("loop", "k", "precision", "compile", "layout", "cudnn_benchmark")  # a row's configuration, but the network


def scaled_step(times: dict[int, float], arl: dict[int, int], depth: int, macs: int) -> float:
    """Seconds per step of a network of ``depth`` and ``macs`` multiply-adds: the measured step time
    at the nearest measured depth (``times``), scaled by multiply-adds (``arl``: those of the
    measured ARL networks)."""
    nearest = min(times, key=lambda d: abs(d - depth))
    return times[nearest] * macs / arl[nearest]


def projection(check: Check) -> list[dict]:
    """For each measured configuration: the wall time of ARL_vs_NAL with 5 seeds at the gpu and
    paper profiles, and of one Attention-92 paper run, and the fraction of the goal each reaches
    (goal time / projected time; 1 or more meets it). A variant's step time is the configuration's
    fastest at the nearest measured depth, scaled by the variant's multiply-adds; a pack of K
    trains ceil(5 / K) packs per variant."""
    if not check.rows():
        return []
    check.costs = check.costs or variant_costs(check.sizes.width)
    steps = {name: load_profile(name).settings["trainer.max_steps"] for name in ("gpu", "paper")}
    arl = {c["depth"]: c["macs"] for name, c in check.costs.items() if name.startswith("arl-")}
    measured: dict[tuple, dict[int, float]] = {}
    for r in check.rows():
        if "loop" in r:
            times = measured.setdefault(tuple(r[c] for c in CONFIG), {})
            times[r["depth"]] = min(times.get(r["depth"], math.inf), r["ms_step"] / 1e3)
    out = []
    for config, times in measured.items():
        k = dict(zip(CONFIG, config))["k"]

        study_step_s = sum(
            math.ceil(GOAL_SEEDS / k) * scaled_step(times, arl, c["depth"], c["macs"]) for c in check.costs.values()
        )
        hours = {name: n * study_step_s / 3600 for name, n in steps.items()}
        run_minutes = steps["paper"] * scaled_step(times, arl, GOAL_RUN_DEPTH, arl[GOAL_RUN_DEPTH]) / 60
        out.append(
            {
                **dict(zip(CONFIG, config)),
                "measured_depths": sorted(times),
                "gpu_hours": hours["gpu"],
                "paper_hours": hours["paper"],
                "study_goal": GOAL_STUDY_HOURS / hours["paper"],
                "run_minutes": run_minutes,
                "run_goal": GOAL_RUN_MINUTES / run_minutes,
            }
        )
    return sorted(out, key=lambda p: p["paper_hours"])


def label(r: dict) -> str:
    """A configuration in words: loop, K, precision, compile, layout, cudnn.benchmark."""
    compile = {"false": "eager", "true": "compile"}.get(r["compile"], r["compile"])
    bench = ", cudnn.benchmark" if r["cudnn_benchmark"] else ""
    return f"{r['loop']} K={r['k']}, {r['precision']}, {compile}, {r['layout']}{bench}"


def fmt(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(check: Check) -> str:
    """``gpu_check.md``: the machine, each stage's status and measurements, the projection."""
    rep, m = check.report, check.report["machine"]
    lines = ["# GPU check", "", f"`{rep['command']}`, started {rep['started_at']}."]
    if rep["tiny"]:
        lines.append("**Tiny sizes (a test of the code paths): no figure here means anything.**")
    lines += [
        "",
        f"Machine: {m.get('device', '?')}; torch {m.get('torch', '?')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}; "
        f"measured matmul peak fp32 {fmt(m.get('fp32_matmul_tflops'), '.3g')} TFLOP/s, bf16 "
        f"{fmt(m.get('bf16_matmul_tflops'), '.3g')} TFLOP/s.",
        f"Width {rep['sizes']['width']}, batch {rep['sizes']['batch']} per seed, {rep['sizes']['steps']} timed steps "
        f"after {rep['sizes']['warmup']} warm-up steps; compile backend {rep['compile_backend']}; img/s over all "
        "seeds of a pack; overall budget {:.0f} s.".format(rep["budget_s"]),
        "",
        "| stage | budget s | used s | status | what |",
        "|---|---|---|---|---|",
    ]
    for st in rep["stages"]:
        lines.append(f"| {st['name']} | {st['budget_s']:.0f} | {st['seconds']:.0f} | {st['status']} | {st['what']} |")
    for st in rep["stages"]:
        lines += ["", f"## {st['name']}: {st['status']}", ""]
        if st.get("error"):
            lines += [f"Error: `{st['error']}`", ""]
        if st["name"] == "study":
            lines += study_markdown(st)
        elif st["rows"]:
            lines += [
                "| configuration | network | img/s | ms/step | warm-up s | peak GiB | error |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in st["rows"]:
                unfinished = "" if r.get("img_s") else "not finished: the budget ran out"
                lines.append(
                    f"| {label(r)} | {r['network']} | {fmt(r.get('img_s'))} | {fmt(r.get('ms_step'), '.2f')} | "
                    f"{fmt(r.get('warmup_s'))} | {fmt(r.get('peak_gib'), '.2f')} | {r['error'] or unfinished} |"
                )
        lines += [f"- {note}" for note in st["notes"]]
    lines += [
        "",
        "## Projection and the goal",
        "",
        f"Goal: on one H100-class GPU, {GOAL_STUDY} at the paper protocol with {GOAL_SEEDS} seeds "
        f"({GOAL_SEEDS * len(check.costs)} runs) in at most {GOAL_STUDY_HOURS:.0f} h; "
        f"one Attention-{GOAL_RUN_DEPTH} paper-protocol run in at most {GOAL_RUN_MINUTES:.0f} min."
        " A fraction of 1 or more meets it. Each variant's "
        "step time is the configuration's at the nearest measured depth scaled by multiply-adds; a pack of K "
        f"trains ceil({GOAL_SEEDS}/K) packs per variant; the paper column keeps the configuration's precision "
        "(the paper profile trains in fp32).",
        "",
        f"| configuration | measured at | {GOAL_STUDY}, gpu profile | {GOAL_STUDY}, paper profile | of the study goal "
        f"| one Attention-{GOAL_RUN_DEPTH} paper run | of the run goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in rep["projection"]:
        depths = ", ".join(str(d) for d in p["measured_depths"])
        lines.append(
            f"| {label(p)} | {depths} | {p['gpu_hours']:.1f} h | {p['paper_hours']:.1f} h | {p['study_goal']:.2f} | "
            f"{p['run_minutes']:.0f} min | {p['run_goal']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def study_markdown(st: dict) -> list[str]:
    lines = [f"`{st.get('command', '')}`", ""]
    if "returncode" in st:
        lines += [f"Exit code {st['returncode']} after {st['wall_s']:.0f} s; reports: {', '.join(st['reports'])}.", ""]
    if st["rows"]:
        lines += ["| run | status | wall s | train img/s (a pack's: all seeds) | test error % | pack |"]
        lines.append("|---|---|---|---|---|---|")
        for r in st["rows"]:
            lines.append(
                f"| {r['run']} | {r['status']} | {fmt(r['wall_time_s'])} | {fmt(r['img_s'])} | "
                f"{fmt(r['test_error'], '.2f')} | {r['pack'] or ''} |"
            )
    if st.get("output_tail"):
        lines += ["", "```", *st["output_tail"], "```"]
    return lines


# -- running ------------------------------------------------------------------------------------
def run_stages(check: Check, stages: list[Stage], scale: float) -> int:
    """Each stage in turn under its budget (x ``scale``), cut to what is left of the overall
    budget; the report written after each. 0 when no stage failed and no measurement raised, else 1."""
    end = time.monotonic() + check.args.budget
    previous = signal.signal(signal.SIGALRM, _alarm)
    failed = False
    for stage in stages:
        record = {"name": stage.name, "budget_s": stage.budget_s * scale, "what": stage.what, "status": "running"}
        record.update(seconds=0.0, rows=[], notes=[])
        check.report["stages"].append(record)
        budget = min(record["budget_s"], end - time.monotonic())
        if budget <= 0:
            record["status"] = "skipped: the overall budget ran out"
            check.save()
            continue
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, budget)
        try:
            stage.run(check, record)
            record["status"] = "done"
        except StageTimeout:
            record["status"] = f"stopped at its budget ({budget:.0f} s)"
            check.recover()
        except Exception as error:  # recorded; the next stage runs
            record["status"] = "failed"
            record["error"] = f"{type(error).__name__}: {error}"
            record["traceback"] = traceback.format_exc()
            check.recover()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        record["seconds"] = time.monotonic() - start
        errors = sum(1 for r in record["rows"] if r.get("error"))
        if errors and record["status"] == "done":
            record["status"] = f"done, {errors} measurement(s) failed"
        failed |= record["status"] == "failed" or errors > 0
        check.save()
    signal.signal(signal.SIGALRM, previous)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "benchmarks" / "gpu_check"))
    parser.add_argument(
        "--budget", type=float, default=sum(s.budget_s for s in STAGES), help="overall seconds for the stages"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's budget (slow machines)")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STAGES], help="run only these stages")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, compile backend aot_eager: a CPU test")
    parser.add_argument("--dry-run", action="store_true", help="print the stages and their budgets, run nothing")
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    stages = [s for s in STAGES if not args.only or s.name in args.only]
    if args.dry_run:
        print(
            f"gpu_check: {len(stages)} stages, most important first, within {args.budget:.0f} s overall; "
            f"writes gpu_check.md and gpu_check.json into {args.out} after every measurement."
        )
        for i, s in enumerate(stages, 1):
            print(f"{i:2}. {s.name:<10} {s.budget_s * args.scale:5.0f} s  {s.what}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}); nothing measured "
            "(--dry-run prints the plan, --device cpu --tiny tests the code).",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args, TINY if args.tiny else FULL, args.out, command)
    code = run_stages(check, stages, args.scale)
    print(f"gpu_check: wrote {args.out / 'gpu_check.md'} and gpu_check.json (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
