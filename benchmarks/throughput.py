"""Training throughput of the Residual Attention Network, printed as a markdown table.

For each configuration: training images/s of a plain PyTorch loop (forward, cross-entropy,
backward, Nesterov SGD step) on data from the real CIFAR data path, the achieved FLOP/s (3 x the
forward FLOPs per image: forward + backward) and its fraction of this machine's measured fp32
matmul peak, the data path's images/s on its own, and the ratio of a Lightning run's images/s to
the plain loop's on the same model, data and steps. Warm-up steps (and torch.compile's
compilation) are excluded from every timing and reported separately.

With ``--packed K ...``: the path a study trains with ``--pack K``. For each K, memory layout and
compile mode, the images/s over all K seeds of K separate networks stepping in turn, of one
packed network in the plain loop, and of the study's own packed step (``PackedClassifier`` on
``PackedData`` under ``Trainer.fit``, with the study's divergence guard), with the peak GPU
memory of each. The packed networks keep the layout the study gives them (channels_last unless
``--channels-last false``).

    python benchmarks/throughput.py                       # Attention-56/164 at width 1.0 and 0.25
    python benchmarks/throughput.py --depth 92 --width 1.0 --steps 30 --device cuda --precision bf16-mixed
    python benchmarks/throughput.py --compile false true reduce-overhead --benchmark   # compile modes, cudnn.benchmark
    python benchmarks/throughput.py --packed 1 2 3 --width 0.25   # seed packing against separate runs
    python benchmarks/throughput.py --packed 5 --depth 92 --width 1.0 --channels-last true false --compile false true
"""

from __future__ import annotations

import argparse
import itertools
import time

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from resattn import ModelConfig
from resattn.data import CIFARDataModule, make_synthetic
from resattn.loader import TensorBatches
from resattn.machine import describe_device
from resattn.module import ResidualAttentionClassifier, compile_options
from resattn.packing import PackedClassifier, PackedData, PackedNetwork
from resattn.study.callbacks import DivergenceGuard
from resattn.summary import model_cost

COMPILE_MODES = ("false", "true", "reduce-overhead")  # the values of the model.compile setting, as text


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> float | None:
    """GiB of device memory allocated at the peak since the last reset (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def compile_net(module: torch.nn.Module, mode: str, backend: str = "inductor") -> None:
    """``torch.compile`` ``module`` in place as the ``model.compile`` setting ``mode`` does
    (``false``: not at all). Another ``backend`` (e.g. ``aot_eager``, for a quick CPU check of the
    code path) compiles without the mode, which only inductor knows."""
    if mode == "false":
        return
    if backend == "inductor":
        module.compile(**compile_options(True if mode == "true" else mode))
    else:
        module.compile(backend=backend)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """Measured FLOP/s of a large square matmul: the practical peak the model is compared with."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def batches(n_images: int, batch_size: int, device: torch.device) -> TensorBatches:
    images, labels = make_synthetic(n_images, seed=0)
    images, labels = images.to(device), labels.to(device)
    return TensorBatches(images, labels, images.float().mean(0), batch_size, train=True, seed=0)


def data_path_rate(device: torch.device, batch_size: int, n_images: int = 50_000) -> float:
    """Images/s of the CIFAR training data path alone (index, crop, flip, normalise)."""
    loader = batches(n_images, batch_size, device)
    next(iter(loader))
    sync(device)
    start = time.perf_counter()
    count = sum(x.shape[0] for x, _ in loader)
    sync(device)
    return count / (time.perf_counter() - start)


def autocast(device: torch.device, precision: str):
    enabled = precision == "bf16-mixed"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def plain_loop(model: ResidualAttentionClassifier, loader, steps: int, warmup: int, device, precision) -> tuple:
    """(images/s, warm-up seconds) of a hand-written training loop."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    it = iter(_cycle(loader))
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            warm = time.perf_counter() - start
            start = time.perf_counter()
        x, y = next(it)
        with autocast(device, precision):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * loader.batch_size / (time.perf_counter() - start), warm


def _cycle(loader):
    while True:
        yield from loader


class StepTimer(Callback):
    """Times training steps after ``warmup`` steps, as the plain loop does."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.end = time.perf_counter()


class LoaderData(L.LightningDataModule):
    def __init__(self, loader):
        super().__init__()
        self.loader = loader

    def train_dataloader(self):
        return self.loader


def lightning_rate(
    model, data, images_per_step: int, steps: int, warmup: int, device, precision, benchmark=None, callbacks=()
) -> float:
    """Images/s of Trainer.fit with the study runner's per-step-overhead-free settings
    (``benchmark``: the Trainer's, i.e. cudnn.benchmark; None leaves it as it is)."""
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=warmup + steps,
        precision=precision,
        benchmark=benchmark,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=10**9,
        callbacks=[timer, *callbacks],
    )
    trainer.fit(model, data)
    return steps * images_per_step / (timer.end - timer.start)


def precision_of(args, device: torch.device) -> str:
    return args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")


def run(args) -> list[dict]:
    device = torch.device(args.device)
    precision = precision_of(args, device)
    torch.backends.cudnn.benchmark = args.benchmark
    peak_dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    peak = matmul_peak(device, peak_dtype)
    print(
        f"Machine: {describe_device(device)} (torch {torch.__version__}); "
        f"measured {peak_dtype} matmul peak {peak / 1e9:.1f} GFLOP/s; "
        f"batch {args.batch_size}, best of {args.repeats} x {args.steps} timed steps after {args.warmup} "
        f"warm-up steps, precision {precision}, cudnn.benchmark {args.benchmark}.\n"
    )
    data_rate = data_path_rate(device, args.batch_size, args.data_images)
    rows = []
    for depth in args.depth:
        for width in args.width:
            for channels_last in args.channels_last:
                for mode in args.compile:
                    torch.manual_seed(0)
                    kwargs = dict(depth=depth, width=width, probes=False, channels_last=channels_last)
                    loader = batches(args.batch_size * 8, args.batch_size, device)
                    cost = model_cost(ResidualAttentionClassifier(depth=depth, width=width).net)
                    plains, lights, warms = [], [], []
                    for _ in range(args.repeats):  # interleaved, best of each: this machine's speed drifts
                        model = ResidualAttentionClassifier(**kwargs)
                        compile_net(model.net, mode)
                        rate, warm = plain_loop(model, loader, args.steps, args.warmup, device, precision)
                        plains.append(rate)
                        warms.append(warm)
                        if not args.no_lightning:
                            model = ResidualAttentionClassifier(**kwargs)
                            compile_net(model.net, mode)
                            lights.append(
                                lightning_rate(
                                    model,
                                    LoaderData(loader),
                                    args.batch_size,
                                    args.steps,
                                    args.warmup,
                                    device,
                                    precision,
                                    args.benchmark,
                                )
                            )
                    plain = max(plains)
                    row = dict(
                        name=ModelConfig(depth=depth).name,
                        width=width,
                        channels_last=channels_last,
                        compile=mode,
                        plain=plain,
                        warm=warms[0],
                        flops=3 * cost["flops"] * plain,
                        lightning=max(lights) if lights else None,
                    )
                    rows.append(row)
    print(
        "| network | width | channels_last | compile | train img/s (plain loop) | achieved GFLOP/s "
        "| % of matmul peak | Lightning img/s | Lightning / plain | warm-up s | data path img/s "
        "| data path / train step | 160k steps (paper protocol), projected |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        light = r.get("lightning")
        ratio = f"{light / r['plain']:.3f}" if light else "—"
        print(
            f"| {r['name']} | {r['width']} | {r['channels_last']} | {r['compile']} | {r['plain']:.1f} | "
            f"{r['flops'] / 1e9:.1f} | {100 * r['flops'] / peak:.1f}% | {f'{light:.1f}' if light else '—'} | "
            f"{ratio} | {r['warm']:.1f} | {data_rate:.0f} | "
            f"{data_rate / r['plain']:.0f}x | {160_000 * args.batch_size / (light or r['plain']) / 3600:.1f} h |"
        )
    return rows


def pack_members(depth: int, width: float, k: int, channels_last: bool) -> list[ResidualAttentionClassifier]:
    """K members of a pack as a study builds them: each its own seeded initialisation, in the
    study's memory layout."""
    members = []
    for seed in range(k):
        torch.manual_seed(seed)
        members.append(ResidualAttentionClassifier(depth=depth, width=width, probes=False, channels_last=channels_last))
    return members


def packed_loop(
    nets,
    loaders,
    steps: int,
    warmup: int,
    device,
    precision,
    packed: bool,
    channels_last: bool,
    mode="false",
    backend="inductor",
) -> tuple[float, float]:
    """(images/s over all seeds, warm-up seconds) of K networks trained in one process: one packed
    step on K batches (``packed``), or the K networks' plain steps one after another (as K separate
    runs sharing the device), each network compiled with ``mode`` (:func:`compile_net`). The
    networks keep their memory layout; the separate steps feed ``channels_last`` batches when asked,
    as a run alone does. Nesterov SGD as in the paper; warm-up excluded."""
    models = [PackedNetwork(nets).to(device)] if packed else [n.to(device) for n in nets]
    for model in models:
        compile_net(model, mode, backend)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4) for m in models]
    streams = [iter(_cycle(loader)) for loader in loaders]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            warm = time.perf_counter() - start
            start = time.perf_counter()
        batch = [next(s) for s in streams]
        if packed:
            x, y = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
            with autocast(device, precision):
                logits = models[0](x)
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1).sum()
            opts[0].zero_grad(set_to_none=True)
            loss.backward()
            opts[0].step()
        else:
            for model, opt, (x, y) in zip(models, opts, batch):
                with autocast(device, precision):
                    loss = F.cross_entropy(model(x.contiguous(memory_format=layout)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    sync(device)
    return steps * len(nets) * loaders[0].batch_size / (time.perf_counter() - start), warm


def packed_lightning_rate(
    members,
    batch_size: int,
    steps: int,
    warmup: int,
    device,
    precision,
    mode="false",
    benchmark=None,
    backend="inductor",
) -> float:
    """Images/s over all seeds of the study's packed step: ``PackedClassifier`` of ``members`` on
    ``PackedData`` of their synthetic-data modules (each seeded by its member's index), through
    ``Trainer.fit`` with the study's divergence guard."""
    model = PackedClassifier(members)
    compile_net(model.net, mode, backend)
    datas = [
        CIFARDataModule(dataset="synthetic", synthetic_size=(batch_size * 8, 1), batch_size=batch_size, seed=k)
        for k in range(len(members))
    ]
    return lightning_rate(
        model,
        PackedData(datas),
        len(members) * batch_size,
        steps,
        warmup,
        device,
        precision,
        benchmark,
        [DivergenceGuard()],
    )


def pack_row(args, device, precision: str, depth: int, width: float, k: int, channels_last: bool, mode: str) -> dict:
    """One configuration of :func:`run_packed`: the best of ``args.repeats`` interleaved repetitions
    of each loop, the packed loop's warm-up and the peak memory of each loop."""
    loaders = [batches(args.batch_size * 8, args.batch_size, device) for _ in range(k)]
    loops = ("separate", "packed") if args.no_lightning else ("separate", "packed", "lightning")
    rates = {loop: [] for loop in loops}
    memory, warm = {}, None
    for _ in range(args.repeats):
        for loop in loops:
            members = pack_members(depth, width, k, channels_last)
            reset_peak_memory(device)
            if loop == "lightning":
                rate = packed_lightning_rate(
                    members, args.batch_size, args.steps, args.warmup, device, precision, mode, args.benchmark
                )
            else:
                nets = [m.net for m in members]
                packed = loop == "packed"
                rate, warmed = packed_loop(
                    nets, loaders, args.steps, args.warmup, device, precision, packed, channels_last, mode
                )
                warm = warmed if packed and warm is None else warm
            rates[loop].append(rate)
            memory[loop] = peak_memory(device)
    return dict(
        name=ModelConfig(depth=depth).name,
        width=width,
        k=k,
        channels_last=channels_last,
        compile=mode,
        separate=max(rates["separate"]),
        packed=max(rates["packed"]),
        lightning=max(rates["lightning"]) if "lightning" in rates else None,
        warm=warm,
        memory=memory.get("packed"),
        memory_separate=memory.get("separate"),
    )


def run_packed(args) -> list[dict]:
    """Packed against separate, side by side in one run: for each network, K, memory layout and
    compile mode, the images/s over all K seeds of K separate models stepping in turn, of one
    packed model in the plain loop and of the study's packed Lightning step (interleaved
    repetitions, the best of each), and the peak memory of each."""
    device = torch.device(args.device)
    precision = precision_of(args, device)
    torch.backends.cudnn.benchmark = args.benchmark
    print(
        f"Machine: {describe_device(device)} (torch {torch.__version__}); batch {args.batch_size} per seed, best of "
        f"{args.repeats} x {args.steps} timed steps after {args.warmup} warm-up steps, precision {precision}, "
        f"cudnn.benchmark {args.benchmark}.\n"
    )
    grid = itertools.product(args.depth, args.width, args.packed, args.channels_last, args.compile)
    rows = [pack_row(args, device, precision, *point) for point in grid]
    print(
        "| network | width | seeds K | channels_last | compile | K separate, img/s (all seeds) "
        "| packed, img/s (all seeds) | packed / separate | Lightning packed step, img/s | Lightning / packed "
        "| packed warm-up s | peak memory packed / separate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        memory = f"{r['memory']:.2f} / {r['memory_separate']:.2f} GiB" if r["memory"] is not None else "—"
        light = f"{r['lightning']:.1f} | {r['lightning'] / r['packed']:.2f}" if r["lightning"] else "— | —"
        print(
            f"| {r['name']} | {r['width']} | {r['k']} | {r['channels_last']} | {r['compile']} | {r['separate']:.1f} | "
            f"{r['packed']:.1f} | {r['packed'] / r['separate']:.2f} | {light} | {r['warm']:.1f} | {memory} |"
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, nargs="+", default=[56, 164])
    parser.add_argument("--width", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument(
        "--channels-last",
        type=lambda s: s.lower() == "true",
        nargs="+",
        default=[True],
        help="true/false, several to compare (packs too: the study packs channels_last networks)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; the best is reported")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="32-true or bf16-mixed (default: bf16-mixed on GPUs)")
    parser.add_argument("--data-images", type=int, default=50_000, help="images in the data-path benchmark")
    parser.add_argument(
        "--compile",
        nargs="+",
        choices=COMPILE_MODES,
        default=["false"],
        help="torch.compile the network as model.compile does; several to compare",
    )
    parser.add_argument("--benchmark", action="store_true", help="cudnn.benchmark (the trainer.benchmark setting)")
    parser.add_argument("--no-lightning", action="store_true", help="skip the Lightning comparison")
    parser.add_argument(
        "--packed",
        type=int,
        nargs="+",
        default=None,
        metavar="K",
        help="instead: seed packing against separate runs, for these pack sizes (e.g. 1 2 3)",
    )
    args = parser.parse_args(argv)
    return run_packed(args) if args.packed else run(args)


if __name__ == "__main__":
    main()
