"""The attention's figures of a study: the paper's Fig. 4 (the mean absolute response per stage and
after each attention module's fusion), the distribution of the soft mask's values per stage, and the
soft masks over test images."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.gridspec import GridSpec

from resattn.figures import mask_image, save_figure, variant_colours
from resattn.report.stats import ratio_level
from resattn.study.record import RunResult

QUANTILE_KEYS = ("q05", "q25", "q50", "q75", "q95")


def _probe_curve(results: list[RunResult], name: str, keys: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """The geometric mean over seeds of the probe ratios ``keys`` of a variant and the distances
    from it to the ends of its 95% CI on the log scale (errorbar's ``yerr``; never below 0), and
    the seeds. Ratios spanning orders of magnitude: a t interval on the ratios would go negative."""
    values = np.array(
        [[r.probe[k] for k in keys] for r in results if r.variant == name and all(k in r.probe for k in keys)]
    )
    if not len(values):
        return np.array([]), np.array([]), 0
    levels = np.array([ratio_level(values[:, j]) for j in range(values.shape[1])]).T
    mean = levels[0]
    return mean, np.abs(levels[1:] - mean), len(values)


def relative_response(
    results: list[RunResult],
    styles: dict[str, dict],
    paper: dict[str, list[float]],
    subtitle: str,
    path: Path,
    threshold: float | None = None,
) -> Path | None:
    """Paper Fig. 4, measured on the final weights: each stage's mean |output| relative to stage 1's,
    beside the paper's (left), and the same after each attention module's fusion H (right, log
    scale), where a collapse under NAL shows module by module. The variants the paper plots, when
    it does; every variant otherwise. Geometric means with 95% intervals on the log scale; the
    paper's curves are read off its figure (≈); ``threshold``: a response claim's, this project's."""
    names = [n for n in styles if n in paper] or list(styles)
    colours = variant_colours(names)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.6]})
    drawn, most = False, 0  # most: the largest seed count of a curve
    for name in names:
        stages = sorted(
            {
                int(k[5:-4])
                for r in results
                if r.variant == name
                for k in r.probe
                if k.startswith("stage") and k.endswith("_rel")
            }
        )
        if not stages:
            continue
        mean, yerr, n = _probe_curve(results, name, [f"stage{s}_rel" for s in stages])
        most = max(most, n)
        style = {**styles[name], "color": colours[name]}
        left.errorbar(stages, mean, yerr=np.nan_to_num(yerr) if n > 1 else None, marker="o", capsize=3, **style)
        if name in paper:
            left.plot(range(1, len(paper[name]) + 1), paper[name], ls=":", marker="x", color=style["color"], alpha=0.8)
        modules = sorted(
            {
                k[: -len("_fused_rel")]
                for r in results
                if r.variant == name
                for k in r.probe
                if k.endswith("_fused_rel")
            },
            key=lambda m: (int(m[1 : m.index("m")]), int(m[m.index("m") + 1 :])),
        )
        if modules:
            keys = [f"{m}_fused_rel" for m in modules]
            values = np.array([[r.probe[k] for k in keys] for r in results if r.variant == name and keys[0] in r.probe])
            xs = np.arange(1, len(modules) + 1)
            right.plot(xs, values.mean(0), marker="o", ms=3, **style, label=f"{name} (n={len(values)})")
            if len(values) > 1:  # on a log scale, the range over seeds (a t interval would cross zero)
                right.fill_between(xs, values.min(0), values.max(0), color=style["color"], alpha=0.15)
            for j in range(1, len(modules)):  # stage boundaries
                if modules[j][:2] != modules[j - 1][:2]:
                    right.axvline(j + 0.5, color="0.7", lw=0.8)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if threshold is not None:
        left.axhline(threshold, color="0.4", ls="--", lw=1)
        left.annotate(
            f"{threshold:g}: this project's threshold",
            (1, threshold),
            xytext=(2, 3),
            textcoords="offset points",
            fontsize=7,
            color="0.3",
        )
    left.set_yscale("log")
    left.set_xlabel("stage")
    left.set_ylabel("mean |stage output| / stage 1's (log)")
    left.set_xticks([1, 2, 3])
    spread = "95% CI" if most > 1 else "one seed: no interval"
    left.set_title(
        f"Per stage (Fig. 4): this study (o, geometric mean,\n{spread}), the paper (x, ≈ read off its figure)",
        fontsize=9,
    )
    left.grid(alpha=0.3)
    right.set_yscale("log")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_xlabel("attention module, in network order (grey lines: stage boundaries; bands: range over seeds)")
    right.set_ylabel("mean |H| after fusion / stage 1 output's")
    right.set_title("Per attention module: H = (1 + M)·T (ARL), M·T (NAL), T (no mask)", fontsize=10)
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"Mean absolute response on the final weights, test split\n{subtitle}", fontsize=10)
    return save_figure(fig, path)


def mask_statistics(
    results: list[RunResult], names: list[str], normalizations: dict[str, str], subtitle: str, path: Path
) -> Path | None:
    """The distribution of the soft mask's values per stage (pooled over the stage's modules, mean
    over seeds): box 25-75%, whiskers 5-95%, line at the median; of |M| for channel attention (f2),
    whose values lie in [-1, 1] around ±1/sqrt(C)."""
    stats = {}
    for name in names:
        probes = [r.probe for r in results if r.variant == name and r.probe]
        stages = sorted({int(k[1]) for p in probes for k in p if k.startswith("s") and "_mask_q50" in k})
        if stages:
            stats[name] = {s: [np.mean([p[f"s{s}_mask_{q}"] for p in probes]) for q in QUANTILE_KEYS] for s in stages}
    if not stats:
        return None
    stages = sorted({s for per in stats.values() for s in per})
    colours = variant_colours(list(stats))
    fig, axes = plt.subplots(
        1, len(stages), figsize=(max(9.0, 0.5 * len(stats) * len(stages) + 3), 4.6), sharey=True, squeeze=False
    )
    for ax, stage in zip(axes[0], stages):
        for i, (name, per) in enumerate(stats.items()):
            if stage not in per:
                continue
            q05, q25, q50, q75, q95 = per[stage]
            c = colours[name]
            ax.vlines(i, q05, q95, color=c, lw=1.2)
            ax.add_patch(plt.Rectangle((i - 0.3, q25), 0.6, max(q75 - q25, 1e-3), facecolor=c, alpha=0.45, edgecolor=c))
            ax.hlines(q50, i - 0.3, i + 0.3, color="black", lw=1.5)
        ax.set_xticks(range(len(stats)), list(stats), rotation=40, ha="right", fontsize=8)
        ax.set_xlim(-0.7, len(stats) - 0.3)
        ax.set_title(f"stage {stage}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    absolute = any(normalizations.get(n) == "channel" for n in stats)
    axes[0, 0].set_ylabel("mask value M" + (" (|M| for channel attention)" if absolute else ""))
    axes[0, 0].set_ylim(-0.02, 1.02)
    fig.suptitle(
        f"Soft mask values on the test split, final weights: box 25-75%, whiskers 5-95%, line median\n{subtitle}",
        fontsize=10,
    )
    return save_figure(fig, path)


def mask_grid(mask_files: dict[str, Path], seed: int | None, subtitle: str, path: Path, images: int = 3) -> Path | None:
    """Soft masks of test images: the inputs in the top row, then one row per variant with the
    channel-mean mask of the first module of every stage, under its image. One colour scale for
    every map, so rows and stages compare (the masks of one normalisation share a range)."""
    loaded = {}
    for name, file in mask_files.items():
        if file.is_file():
            with np.load(file) as data:
                firsts = sorted(k for k in data.files if k.startswith("s") and k.endswith("m1"))
                if firsts:
                    loaded[name] = (data["images"], {k: data[k] for k in firsts})
    if not loaded:
        return None
    n = min(images, *(len(v[0]) for v in loaded.values()))
    modules = sorted({k for _, masks in loaded.values() for k in masks})
    low = min(float(m[:n].min()) for _, masks in loaded.values() for m in masks.values())
    high = max(float(m[:n].max()) for _, masks in loaded.values() for m in masks.values())
    rows, cols = len(loaded) + 1, n * len(modules)
    fig = plt.figure(figsize=(1.25 * cols + 2.2, 1.3 * rows + 1.0))
    grid = GridSpec(
        rows,
        cols + 1,
        figure=fig,
        width_ratios=[1] * cols + [0.12],
        wspace=0.08,
        hspace=0.12,
        top=1 - 0.9 / (1.3 * rows + 1.0),
        bottom=0.06,
    )
    inputs = next(iter(loaded.values()))[0]
    for i in range(n):
        centre = i * len(modules) + len(modules) // 2
        ax = fig.add_subplot(grid[0, centre])
        ax.imshow(inputs[i].transpose(1, 2, 0))
        ax.set_title(f"test image {i + 1}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    im = None
    for row, (name, (_, masks)) in enumerate(loaded.items(), start=1):
        for i in range(n):
            for j, module in enumerate(modules):
                ax = fig.add_subplot(grid[row, i * len(modules) + j])
                if module in masks:
                    im = mask_image(ax, masks[module][i], low, high)
                else:
                    ax.axis("off")
                if row == len(loaded):
                    ax.set_xlabel(f"stage {module[1]}\n({module})", fontsize=7)
                if i == 0 and j == 0:
                    ax.set_ylabel(name, fontsize=8)
    if im is not None:
        fig.colorbar(im, cax=fig.add_subplot(grid[1:, cols]), label="mask value (mean over channels)")
    seed_text = f", seed {seed}" if seed is not None else ""
    fig.suptitle(f"Soft masks over test images, first module of each stage{seed_text}\n{subtitle}", fontsize=10)
    return save_figure(fig, path, tight=False, bbox_inches="tight")
