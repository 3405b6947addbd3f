"""The study table as Markdown, CSV and LaTeX."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from resattn.study.store import atomic_path

COLUMNS = {  # summary column -> heading of the human-readable tables
    "variant": "variant",
    "seeds": "seeds",
    "error": "test error % (mean ± std)",
    "ci95": "95% CI",
    "paper_error": "paper %",
    "diff_vs_ref": "Δ vs ref, pp [95% CI, seeds and test images]",
    "diff_seed": "seed-only 95% CI",
    "paper_diff": "paper Δ",
    "p_value": "p",
    "params_m": "params (M)",
    "gmacs": "GMACs / image",
    "wall_time_min": "wall time (min)",
}


def _num(value: float, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _delta(row) -> str:
    if row.reference == row.variant:
        return "reference"
    interval = "" if math.isnan(row.diff_ci95_low) else f" [{_num(row.diff_ci95_low)}, {_num(row.diff_ci95_high)}]"
    return f"{_num(row.diff_vs_ref, signed=True)}{interval} vs {row.reference}"


def _seeds(row) -> str:
    """Converged seeds, and the diverged runs with Fisher's p against the reference's."""
    if not row.diverged:
        return f"{row.seeds}"
    p = "" if math.isnan(row.diverged_p) else f", Fisher p {row.diverged_p:.2f} vs ref"
    return f"{row.seeds} ({row.diverged} diverged{p})"


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """The summary formatted for people: one string column per heading of ``COLUMNS``."""
    out = pd.DataFrame(
        {
            "variant": df["variant"],
            "seeds": [_seeds(row) for row in df.itertuples()],
            "error": [f"{_num(m)} ± {_num(s)}" for m, s in zip(df["error_mean"], df["error_std"])],
            "ci95": [
                f"[{_num(lo)}, {_num(hi)}]" if not math.isnan(lo) else "—"
                for lo, hi in zip(df["ci95_low"], df["ci95_high"])
            ],
            "paper_error": [_num(v) for v in df["paper_error"]],
            "diff_vs_ref": [_delta(row) for row in df.itertuples()],
            "diff_seed": [
                "—" if math.isnan(lo) else f"[{_num(lo)}, {_num(hi)}]"
                for lo, hi in zip(df["diff_seed_ci95_low"], df["diff_seed_ci95_high"])
            ],
            "paper_diff": [_num(v, signed=True) for v in df["paper_diff"]],
            "p_value": [_num(v, 3) for v in df["p_value"]],
            "params_m": [_num(v, 3) for v in df["params_m"]],
            "gmacs": [_num(v, 3) for v in df["gmacs"]],
            "wall_time_min": [_num(v, 1) for v in df["wall_time_min"]],
        }
    )
    return out.rename(columns=COLUMNS)


def markdown(df: pd.DataFrame) -> str:
    """The readable table as a GitHub-flavoured markdown table (a ``|`` inside a cell is escaped)."""
    table = readable(df)

    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [row(table.columns), "|" + "---|" * len(table.columns)]
    lines += [row(r) for r in table.itertuples(index=False)]
    return "\n".join(lines)


def write_tables(df: pd.DataFrame, header: str, folder: Path) -> list[Path]:
    """``table.md`` (with ``header``), ``table.csv`` (every statistic, full precision), ``table.tex``."""
    folder.mkdir(parents=True, exist_ok=True)
    md, csv, tex = folder / "table.md", folder / "table.csv", folder / "table.tex"
    with atomic_path(md) as tmp:
        tmp.write_text(header + "\n\n" + markdown(df) + "\n")
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(tex) as tmp:
        caption = header.splitlines()[0].lstrip("# ")
        for char in "\\&%$#_{}":  # LaTeX's special characters, escaped as pandas escapes the cells
            caption = caption.replace(char, "\\" + char)
        tmp.write_text(readable(df).to_latex(index=False, escape=True, caption=caption))
    return [md, csv, tex]
