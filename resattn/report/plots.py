"""The study's error plots, each a PNG whose point can be read at a glance: test error per variant
beside the paper's (each on its own axis), the difference a trend claim is about against its factor
with the paper's on the same axis, and learning curves; and the variants' line styles and order
that the report's plots share (the attention's figures are :mod:`resattn.report.attention_plots`).
Legends sit outside the data; a figure of one seed says it has no interval; variants with diverged
runs (left out of the errors) are marked."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from resattn.figures import save_figure, variant_colours
from resattn.report.claims import words
from resattn.report.stats import contrast
from resattn.study.record import RunResult
from resattn.study.spec import Claim, Study, plural

LINESTYLES = ("-", "--", "-.", ":")


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
    for i in np.flatnonzero((df["seeds"] == 0).to_numpy()):  # asked for but not trained (e.g. --variants)
        ax.text(
            x[i],
            0.5,
            "no runs",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            ha="center",
            va="center",
            fontsize=8,
            color="0.45",
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
    return save_figure(fig, path)


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
    fig, ax = plt.subplots(figsize=(7.8, 5.4))
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
    lines = [*textwrap.wrap(claim.text, 90), *textwrap.wrap(f"{slope}{paper_slope}: {said}", 90), subtitle]
    ax.set_title("\n".join(lines), fontsize=9)
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    if paper_ax is not ax:
        extra = paper_ax.get_legend_handles_labels()
        handles = (handles[0] + extra[0], handles[1] + extra[1])
    # below the axes, so that the title has the figure's whole width and nothing covers the data
    ax.legend(*handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    return save_figure(fig, path)


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
    # the legend right of the loss panel, from whichever panel has the most curves (a run may log no loss)
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda found: len(found[0]))
    if handles:
        axes[1].legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(subtitle, fontsize=10)
    return save_figure(fig, path)
