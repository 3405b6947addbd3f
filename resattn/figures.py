"""What every figure of resattn shares, below both of its users (the study's report plots and a
trained model's masks): saving a figure atomically, drawing a soft mask on its own axes and a colour
per variant.

Matplotlib draws off-screen here (Agg): figures are files, never windows.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from resattn.study.store import atomic_path  # noqa: E402


def save_figure(fig, path: Path, tight: bool = True, **savefig) -> Path:
    """Save atomically (a report being rewritten is never seen half-written), then close."""
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, **savefig)
    plt.close(fig)
    return path


def mask_image(ax, mask: np.ndarray, vmin: float, vmax: float):
    """``mask`` (h, w) as a heat map on its own axes (beside its image, never blended over it, so
    its colours are the mask's alone), on the scale [vmin, vmax] the figure shares."""
    im = ax.imshow(mask, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def variant_colours(names: list[str]) -> dict[str, str]:
    """One distinct colour per variant (tab10, then tab20), for plots that draw variants side by side."""
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}
