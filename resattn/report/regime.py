"""The regime of a study configuration: what its runs actually trained, against the paper's protocol.

A verdict's words depend on it (:mod:`resattn.report.claims`). The tier comes from what the runs
recorded (realised optimiser steps, width, image counts, precision, batch), never from the profile's
name:

- ``paper protocol``: nothing reduced: the paper profile's settings (``ablations/profiles.yaml``,
  PAPER.md section 5) on the full CIFAR splits (50,000 training and 10,000 test images), with the
  data recorded in every result. Only this tier can say ``reproduced`` or ``contradicted``.
- ``pilot``: comparably small to the quick profile: under ``PILOT_BELOW`` of the paper's steps,
  training images or width, or generated data.
- ``shortened``: every other reduction (e.g. the gpu profile's fifth of the steps in bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

from resattn.study.record import RunResult
from resattn.study.spec import load_profile

PAPER_IMAGES = {"train": 50_000, "test": 10_000}  # CIFAR-10 and CIFAR-100: no validation split (PAPER.md 5)
PILOT_BELOW = {"steps": 0.05, "train": 0.2, "width": 0.5}  # fractions of the paper's: a pilot below any
TIERS = ("pilot", "shortened", "paper protocol")  # least to most faithful
# Settings whose departure is told from what the runs recorded (realised counts, steps, precision).
MEASURED = {
    "model.width",
    "data.train_size",
    "data.test_size",
    "data.batch_size",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.precision",
    "data.dataset",
}


@dataclass(frozen=True)
class Regime:
    """What a configuration's runs trained: ``steps`` (realised optimiser steps, the most of its
    finished runs), ``width``, ``train_images`` / ``test_images`` (realised; None where a result
    did not record its data), ``precision``, ``batch_size``; ``reductions`` against the paper's
    protocol, one phrase each, and the ``tier`` they put it in."""

    tier: str
    reductions: tuple[str, ...]
    steps: int | None
    width: float
    train_images: int | None
    test_images: int | None
    precision: str
    batch_size: int

    @property
    def fraction(self) -> float:
        """A rough share of the paper's protocol, to rank configurations of one tier: steps x
        training images x width² (compute per image grows with the width's square), each capped at 1."""
        paper_steps = _paper()["trainer.max_steps"]
        steps = min(1.0, (self.steps or 0) / paper_steps)
        images = min(1.0, (self.train_images or 0) / PAPER_IMAGES["train"])
        return steps * images * min(1.0, self.width) ** 2

    @property
    def rank(self) -> tuple[int, float]:
        return TIERS.index(self.tier), self.fraction

    def counts(self) -> str:
        """``5,085 train / 1,000 test images`` (or ``data unrecorded``)."""
        if self.train_images is None:
            return "data unrecorded"
        return f"{self.train_images:,} train / {self.test_images:,} test images"


def _paper() -> dict:
    return load_profile("paper").settings


def regime(results: list[RunResult]) -> Regime:
    """The :class:`Regime` of one configuration's results (all share their settings but the seeds
    and the factor levels)."""
    first = results[0]
    paper = _paper()
    model, data = first.config["model"], first.config["data"]
    finished = [r for r in results if r.status == "finished" and r.epochs] or results
    steps = max((int(r.epochs[-1]["step"]) for r in finished if r.epochs and "step" in r.epochs[-1]), default=None)
    width = float(model.get("width", paper["model.width"]))
    batch = int(data.get("batch_size", paper["data.batch_size"]))
    recorded = [r.data for r in results if r.data]
    train = min(d["train_images"] for d in recorded) if len(recorded) == len(results) else None
    test = min(d["test_images"] for d in recorded) if len(recorded) == len(results) else None
    out = []
    if first.synthetic:
        out.append("generated data")
    if train is None:
        out.append("data unrecorded")
    else:
        out += [
            f"{n:,} of {PAPER_IMAGES[s]:,} {what} images"
            for s, n, what in (("train", train, "training"), ("test", test, "test"))
            if n < PAPER_IMAGES[s]
        ]
    if steps is None or steps < paper["trainer.max_steps"]:
        out.append(f"{steps:,} of {paper['trainer.max_steps']:,} steps" if steps else "steps unrecorded")
    if width != paper["model.width"]:
        out.append(f"width {width:g} (paper {paper['model.width']:g})")
    if first.precision != paper["trainer.precision"]:
        out.append(f"{first.precision} (paper {paper['trainer.precision']})")
    if batch != paper["data.batch_size"]:
        out.append(f"batch {batch} (paper {paper['data.batch_size']})")
    out += [f"{k} = {v}" for k, v in first.reductions.items() if k not in MEASURED]
    small = (
        first.synthetic
        or (steps or 0) < PILOT_BELOW["steps"] * paper["trainer.max_steps"]
        or (train is not None and train < PILOT_BELOW["train"] * PAPER_IMAGES["train"])
        or width < PILOT_BELOW["width"] * paper["model.width"]
    )
    tier = "paper protocol" if not out else "pilot" if small else "shortened"
    return Regime(tier, tuple(out), steps, width, train, test, first.precision, batch)
