"""The study's plots: error per variant, learning curves, error vs depth, Fig. 4 responses, mask
statistics and a grid of attention masks. Each is a PNG with a title, labelled axes and a legend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from resattn.study.spec import Study  # noqa: E402
from resattn.study.store import RunResult, atomic_path  # noqa: E402

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


def _save(fig, path: Path, tight: bool = True, **savefig) -> Path:
    """Save atomically (a report being rewritten is never seen half-written), then close."""
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, **savefig)
    plt.close(fig)
    return path


def error_per_variant(df: pd.DataFrame, subtitle: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(df) + 3), 4.5))
    x = np.arange(len(df))
    mean = df["error_mean"].to_numpy()
    ci = np.where(df["seeds"] > 1, (df["ci95_high"] - df["ci95_low"]).to_numpy() / 2, np.nan)
    label = "this study (mean, 95% CI)" if (df["seeds"] > 1).any() else "this study (1 seed: no interval)"
    ax.errorbar(x, mean, yerr=np.nan_to_num(ci), fmt="o", color="C0", capsize=5, label=label)
    if df["paper_error"].notna().any():
        ax.scatter(x, df["paper_error"], marker="x", s=70, color="C3", zorder=3, label="paper")
    ax.set_xticks(x, df["variant"], rotation=30 if len(df) > 4 else 0, ha="right" if len(df) > 4 else "center")
    ax.set_ylabel("test error (%)")
    ax.set_xlabel("variant")
    ax.set_title(f"Test error per variant\n{subtitle}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def learning_curves(results: list[RunResult], styles: dict[str, dict], subtitle: str, path: Path) -> Path | None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = False
    for name, style in styles.items():
        runs = [r for r in results if r.variant == name and r.epochs]
        for ax, key in zip(axes, ("val/err1", "train/loss")):
            curves = [[e.get(key) for e in r.epochs] for r in runs]
            curves = [c for c in curves if c and all(v is not None for v in c)]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            arr = np.array([c[:n] for c in curves]) * (100 if key == "val/err1" else 1)
            epochs = np.arange(1, n + 1)
            mean, std = arr.mean(0), arr.std(0)
            ax.plot(epochs, mean, **style, label=f"{name} (n={len(curves)})", marker="." if n < 15 else None)
            if len(curves) > 1:
                ax.fill_between(epochs, mean - std, mean + std, color=style["color"], alpha=0.15)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set_ylabel("validation top-1 error (%)")
    axes[1].set_ylabel("training loss (cross-entropy)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_title("Validation error (mean ± std over seeds)", fontsize=10)
    axes[1].set_title("Training loss (mean ± std over seeds)", fontsize=10)
    axes[1].legend(fontsize=8)
    fig.suptitle(subtitle, fontsize=10)
    return _save(fig, path)


def error_vs_depth(df: pd.DataFrame, study: Study, subtitle: str, path: Path) -> Path | None:
    """The shape of Table 3: one line per level of the other factor, paper dashed."""
    names = [f.name for f in study.factors]
    if "depth" not in names or len(names) != 2:
        return None
    other = names[1 - names.index("depth")]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (level, group) in enumerate(df.groupby(other, sort=False)):
        depth = group["depth"].astype(int).to_numpy()
        ci = np.where(group["seeds"] > 1, (group["ci95_high"] - group["ci95_low"]) / 2, np.nan)
        ax.errorbar(
            depth,
            group["error_mean"],
            yerr=np.nan_to_num(ci),
            marker="o",
            capsize=4,
            color=f"C{i}",
            label=f"{level.upper()} (this study, 95% CI)",
        )
        if group["paper_error"].notna().any():
            ax.plot(
                depth,
                group["paper_error"],
                ls="--",
                marker="x",
                color=f"C{i}",
                alpha=0.7,
                label=f"{level.upper()} (paper)",
            )
    ax.set_xlabel("network depth (layers)")
    ax.set_ylabel("test error (%)")
    ax.set_xticks(sorted(df["depth"].astype(int).unique()))
    ax.set_title(f"Test error vs depth\n{subtitle}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def relative_response(
    results: list[RunResult], styles: dict[str, dict], paper: dict[str, list[float]], subtitle: str, path: Path
) -> Path | None:
    """Paper Fig. 4: each stage's mean absolute response divided by stage 1's."""
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    drawn = False
    for name, style in styles.items():
        probes = [r.probe for r in results if r.variant == name and r.probe]
        stages = sorted(
            int(k[5:-4]) for k in (probes[0] if probes else {}) if k.startswith("stage") and k.endswith("_rel")
        )
        if not stages:
            continue
        values = np.array([[p[f"stage{s}_rel"] for s in stages] for p in probes])
        ax.errorbar(
            stages,
            values.mean(0),
            yerr=values.std(0) if len(values) > 1 else None,
            marker="o",
            capsize=3,
            **style,
            label=f"{name} (n={len(values)})",
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for j, (label, values) in enumerate(paper.items()):
        ax.plot(
            range(1, len(values) + 1),
            values,
            ls=":",
            color="black",
            marker="xs^dv"[j % 5],
            alpha=0.5,
            label=f"paper Fig. 4: {label}",
        )
    ax.set_xlabel("stage")
    ax.set_ylabel("mean |response| relative to stage 1")
    ax.set_xticks([1, 2, 3])
    ax.set_title(f"Relative mean absolute response per stage (Fig. 4)\n{subtitle}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def mask_statistics(results: list[RunResult], styles: dict[str, dict], subtitle: str, path: Path) -> Path | None:
    stats = {}
    for name in styles:
        probes = [r.probe for r in results if r.variant == name and r.probe]
        modules = [k[:-5] for k in (probes[0] if probes else {}) if k.endswith("_mean") and k.startswith("s")]
        if modules:
            stats[name] = {
                m: {s: np.mean([p[f"{m}_{s}"] for p in probes]) for s in ("mean", "std", "low", "high")}
                for m in modules
            }
    if not stats:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for i, (name, per_module) in enumerate(stats.items()):  # i: dodge offset
        modules = list(per_module)
        x = np.arange(len(modules)) + 0.25 * (i - (len(stats) - 1) / 2) / max(1, len(stats) - 1)  # dodge
        axes[0].errorbar(
            x,
            [per_module[m]["mean"] for m in modules],
            yerr=[per_module[m]["std"] for m in modules],
            marker="o",
            capsize=3,
            **styles[name],
            label=name,
        )
        axes[1].plot(x, [100 * per_module[m]["low"] for m in modules], marker="o", **styles[name], label=name)
        axes[2].plot(x, [100 * per_module[m]["high"] for m in modules], marker="o", **styles[name], label=name)
    for ax, title, ylabel in zip(
        axes,
        ("mask value: mean ± std", "mask values below 0.05", "mask values above 0.95"),
        ("mask value", "% of mask values", "% of mask values"),
    ):
        ax.set_xticks(np.arange(len(modules)), modules, rotation=45)
        ax.set_xlabel("attention module (stage, module)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.suptitle(f"Soft mask statistics on validation data\n{subtitle}", fontsize=10)
    return _save(fig, path)


def mask_grid(mask_files: dict[str, Path], subtitle: str, path: Path, images: int = 6) -> Path | None:
    """Top row: test images; below, one row per variant: its first-stage mask (channel mean) on each."""
    loaded = {}
    for name, file in mask_files.items():
        if file.is_file():
            with np.load(file) as data:
                masks = sorted(k for k in data.files if k.startswith("s1m"))
                if masks:
                    loaded[name] = (data["images"], data[masks[0]], masks[0])
    if not loaded:
        return None
    n = min(images, *(len(v[0]) for v in loaded.values()))
    # one colour scale for all rows (comparable), spanning the values shown (structure visible)
    low = min(float(v[1][:n].min()) for v in loaded.values())
    high = max(float(v[1][:n].max()) for v in loaded.values())
    rows = len(loaded) + 1
    fig, axes = plt.subplots(rows, n, figsize=(1.5 * n + 1.6, 1.5 * rows + 0.9), squeeze=False)
    first_images = next(iter(loaded.values()))[0]
    for col in range(n):
        axes[0, col].imshow(first_images[col].transpose(1, 2, 0))
        axes[0, col].set_title(f"test image {col + 1}", fontsize=8)
    axes[0, 0].set_ylabel("input", fontsize=8)
    for row, (name, (_, masks, module)) in enumerate(loaded.items(), start=1):
        for col in range(n):
            im = axes[row, col].imshow(masks[col], cmap="viridis", vmin=low, vmax=high)
        axes[row, 0].set_ylabel(f"{name}\n({module})", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1:, :].ravel().tolist(), shrink=0.9, label="mask value (mean over channels)")
    fig.suptitle(f"First-stage soft masks on test images\n{subtitle}", fontsize=10)
    return _save(fig, path, tight=False, bbox_inches="tight")
