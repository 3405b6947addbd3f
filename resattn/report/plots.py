"""The study's plots, each a PNG whose point can be read at a glance: test error per variant beside
the paper's (each on its own axis), the difference a trend claim is about against its factor with
the paper's on the same axis, learning curves, the Fig. 4 response per stage and per module, mask
value distributions, and the soft masks over test images. Legends sit outside the data; a figure
of one seed says it has no interval; variants with diverged runs (left out of the errors) are marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.gridspec import GridSpec  # noqa: E402

from resattn.figures import mask_image  # noqa: E402
from resattn.figures import save_figure as _save  # noqa: E402
from resattn.report.claims import words  # noqa: E402
from resattn.report.stats import contrast, ratio_level  # noqa: E402
from resattn.study.spec import Claim, Study, plural  # noqa: E402
from resattn.study.store import RunResult  # noqa: E402

LINESTYLES = ("-", "--", "-.", ":")
QUANTILE_KEYS = ("q05", "q25", "q50", "q75", "q95")


def variant_styles(study: Study) -> dict[str, dict]:
    """Colour and line style per variant, in the study's order: with two or more factors the first
    factor sets the line style (ARL solid, NAL dashed) and the others the colour (one per depth)."""
    styles = {}
    rest = [list(f.levels) for f in study.factors[1:]]
    for levels in study.variants():
        if rest:
            colour = sum(
                r.index(lvl) * int(np.prod([len(x) for x in rest[j + 1 :]]))
                for j, (r, lvl) in enumerate(zip(rest, levels[1:]))
            )
            ls = LINESTYLES[list(study.factors[0].levels).index(levels[0]) % len(LINESTYLES)]
        else:
            colour, ls = list(study.factors[0].levels).index(levels[0]), "-"
        styles[study.variant_name(levels)] = {"color": f"C{colour % 10}", "ls": ls}
    return styles


def variant_colours(names: list[str]) -> dict[str, str]:
    """One distinct colour per variant (tab10, then tab20), for plots that draw variants side by side."""
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _interval_label(n_max: int) -> str:
    return "mean, 95% CI over seeds" if n_max > 1 else "1 seed: no interval"


def side_by_side(study: Study) -> list[list[str]]:
    """The study's variants in groups that share the levels of every factor but the first (arl-56
    beside nal-56, then arl-92 beside nal-92, ...), in the YAML's order; one group per variant for
    a one-factor study."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for levels in study.variants():
        groups.setdefault(levels[1:] if len(levels) > 1 else levels, []).append(study.variant_name(levels))
    return list(groups.values())


def error_per_variant(df: pd.DataFrame, subtitle: str, path: Path, groups: list[list[str]] | None = None) -> Path:
    """This study's test errors (mean, 95% CI) beside the paper's, each panel on its own scale:
    a reduced profile's errors and the paper's lie far apart, and each panel shows its own ordering.
    ``groups`` (:func:`side_by_side`) orders the variants so that those compared at one level stand
    together, grey lines between the groups."""
    order = [v for g in groups or [list(df["variant"])] for v in g if v in set(df["variant"])]
    df = df.set_index("variant", drop=False).loc[order].reset_index(drop=True)
    bounds = np.cumsum([sum(v in order for v in g) for g in groups or []])[:-1] - 0.5
    paper = df["paper_error"].notna().any()
    fig, axes = plt.subplots(1, 2 if paper else 1, figsize=(max(6, 0.55 * len(df) + 3) * (2 if paper else 1), 4.6))
    axes = np.atleast_1d(axes)
    x = np.arange(len(df))
    mean = df["error_mean"].to_numpy()
    several = (df["seeds"] > 1).to_numpy()
    low = np.where(several, mean - df["ci95_low"].to_numpy(), np.nan)  # the interval clipped to [0, 100]:
    high = np.where(several, df["ci95_high"].to_numpy() - mean, np.nan)  # its two ends, not a half-width
    ax = axes[0]
    ax.errorbar(x, mean, yerr=np.nan_to_num([low, high]), fmt="o", color="C0", capsize=5)
    diverged = df["diverged"].to_numpy() > 0
    if diverged.any():
        ax.scatter(x[diverged], mean[diverged], s=160, facecolors="none", edgecolors="C3", lw=1.5, zorder=3)
        for i in np.flatnonzero(diverged):
            ax.annotate(
                f"{df['diverged'].iloc[i]} diverged\n(left out)",
                (x[i], mean[i]),
                xytext=(8, -4),
                textcoords="offset points",
                fontsize=7,
                color="C3",
            )
    ax.set_title(f"This study ({_interval_label(df['seeds'].max())})", fontsize=10)
    ax.set_ylabel("test error (%)")
    if paper:
        axes[1].scatter(x, df["paper_error"], marker="x", s=70, color="C3")
        axes[1].set_title("Paper (its own axis)", fontsize=10)
        axes[1].set_ylabel("paper's test error (%)")
    rotate = len(df) > 4
    for ax in axes:
        ax.set_xticks(x, df["variant"], rotation=35 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
        ax.set_xlim(-0.6, len(df) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        for bound in bounds:
            ax.axvline(bound, color="0.75", lw=0.8)
    fig.suptitle(f"Test error per variant\n{subtitle}", fontsize=10)
    return _save(fig, path)


def trend_differences(
    study: Study, results: list[RunResult], claim: Claim, piece, row, subtitle: str, path: Path
) -> Path | None:
    """A trend claim's picture: at each level of the factor, the difference (variant − reference),
    or the variant's own error (``absolute: true``), each seed's and their mean with its 95% interval
    over seeds and test images, and the paper's on the same axis (a difference in percentage
    points is comparable across regimes; the errors are not: they get their own axis). ``piece``
    and ``row``: the claim's slope and its judged row (:mod:`resattn.report.claims`)."""
    by_name = {study.variant_name(v): v for v in study.variants()}
    index = [f.name for f in study.factors].index(claim.factor)
    relative = not claim.absolute
    fig, ax = plt.subplots(figsize=(7.8, 4.6))
    paper_ax = ax if relative else ax.twinx()
    x, means, lows, highs, paper = [], [], [], [], []
    for name in claim.variants:
        levels = by_name[name]
        ref = study.variant_name(study.reference_of(levels))
        weights = {name: 1.0, ref: -1.0} if relative else {name: 1.0}
        by = {(r.variant, r.seed): r for r in results if r.status == "finished"}
        seeds = sorted(s for (v, s) in by if v == name and all((w, s) in by for w in weights))
        values = [sum(w * by[v, s].test_error for v, w in weights.items()) for s in seeds]
        level = float(levels[index])
        x.append(level)
        if values:
            ax.scatter(np.full(len(values), level), values, s=14, color="0.55", zorder=2)
        est = contrast(results, weights)
        lo, hi = est.interval()
        means.append(est.delta)
        lows.append(lo)
        highs.append(hi)
        theirs = study.paper.get(levels, np.nan)
        paper.append(theirs - study.paper.get(study.reference_of(levels), np.nan) if relative else theirs)
    x, means = np.array(x), np.array(means)
    n = piece.est.n
    yerr = np.nan_to_num([means - np.array(lows), np.array(highs) - means])
    label = "this study (mean, 95% CI over seeds and test images)" if n > 1 else f"this study ({plural(n, 'seed')})"
    ax.errorbar(x, means, yerr=yerr, marker="o", capsize=5, color="C0", lw=2, label=label)
    ax.scatter([], [], s=14, color="0.55", label="each seed")
    if not np.isnan(paper).all():
        paper_ax.plot(
            x, paper, ls="--", marker="x", color="C3", lw=2, label="paper" + ("" if relative else " (right axis)")
        )
    name = "-".join(v for i, v in enumerate(by_name[claim.variants[0]]) if i != index)
    if relative:
        ax.axhline(0, color="black", lw=0.8)
        ref_name = "-".join(v for i, v in enumerate(study.reference_of(by_name[claim.variants[0]])) if i != index)
        ax.set_ylabel(f"Δ test error, {name} − {ref_name} (pp)")
    else:
        ax.set_ylabel(f"{name} test error (%), this study")
        paper_ax.set_ylabel(f"{name} test error (%), paper", color="C3")
    ax.set_xlabel(claim.factor.replace("_", " "))
    ax.set_xticks(x)
    if np.isnan(row["ci95_low"]):
        slope = f"slope {row['value']:+.2f} pp per {claim.unit} (no interval from {plural(n, 'seed')})"
    else:
        slope = f"slope {row['value']:+.2f} [{row['ci95_low']:+.2f}, {row['ci95_high']:+.2f}] pp per {claim.unit}"
    paper_slope = "" if np.isnan(row["paper"]) else f", paper {row['paper']:+.2f}"
    said = words(row["claim_outcome"], row["tier"], row["ratio"])
    ax.set_title(f"{claim.text}\n{slope}{paper_slope}: {said}\n{subtitle}", fontsize=9)
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    if paper_ax is not ax:
        extra = paper_ax.get_legend_handles_labels()
        handles = (handles[0] + extra[0], handles[1] + extra[1])
    ax.legend(*handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.12 if not relative else 1.01, 1.0))
    return _save(fig, path)


def learning_curves(results: list[RunResult], styles: dict[str, dict], subtitle: str, path: Path) -> Path | None:
    """Validation error and training loss per epoch (mean ± std over seeds), one colour per variant
    (its line style from ``styles``). Runs of one epoch have no curve: each variant's value after
    it is then a point (mean ± std over seeds) at its own place on the x axis."""
    colours = variant_colours(list(styles))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    series = {}  # (variant, key) -> per-seed curves, cut to the shortest
    for name in styles:
        runs = [r for r in results if r.variant == name and r.epochs]
        for key in ("val/err1", "train/loss"):
            curves = [[r.epoch_error(e) if key == "val/err1" else e.get(key) for e in r.epochs] for r in runs]
            curves = [c for c in curves if c and all(v is not None for v in c)]
            if curves:
                n = min(len(c) for c in curves)
                series[name, key] = np.array([c[:n] for c in curves])
    if not series:
        plt.close(fig)
        return None
    one_epoch = max(a.shape[1] for a in series.values()) == 1
    names = [n for n in styles if any((n, k) in series for k in ("val/err1", "train/loss"))]
    for ax, key in zip(axes, ("val/err1", "train/loss")):
        for i, name in enumerate(names):
            if (name, key) not in series:
                continue
            arr = series[name, key]
            mean, std = arr.mean(0), arr.std(0)
            style = {**styles[name], "color": colours[name], "label": f"{name} (n={len(arr)})"}
            if one_epoch:
                ax.errorbar([i], mean, yerr=std if len(arr) > 1 else None, fmt="o", capsize=4, **style)
                continue
            epochs = np.arange(1, len(mean) + 1)
            ax.plot(epochs, mean, marker="." if len(mean) < 15 else None, **style)
            if len(arr) > 1:
                ax.fill_between(epochs, mean - std, mean + std, color=colours[name], alpha=0.12)
        if one_epoch:
            rotate = len(names) > 4
            ax.set_xticks(range(len(names)), names, rotation=35 if rotate else 0, ha="right" if rotate else "center")
            ax.tick_params(axis="x", labelsize=8)
        else:
            ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation top-1 error (%)")
    axes[1].set_ylabel("training loss (cross-entropy)")
    after = " after the only epoch" if one_epoch else ""
    axes[0].set_title(f"Validation error{after} (mean ± std over seeds)", fontsize=10)
    axes[1].set_title(f"Training loss{after} (mean ± std over seeds)", fontsize=10)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(subtitle, fontsize=10)
    return _save(fig, path)


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
    drawn = False
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
    left.set_title(
        "Per stage (Fig. 4): this study (o, geometric mean,\n95% CI), the paper (x, ≈ read off its figure)", fontsize=9
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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path, tight=False, bbox_inches="tight")
