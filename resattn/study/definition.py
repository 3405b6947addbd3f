"""A study as the runner and the reports read it, once its YAML is validated (the schema of the files
is :mod:`resattn.study.schema`): a :class:`Study` with its factors (:class:`Factor`) and claims
(:class:`Claim`), and a :class:`Profile` of ``profiles.yaml``.

No torch here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def combinations(factors: dict[str, dict], exclude: tuple[dict[str, tuple[str, ...]], ...]) -> list[tuple[str, ...]]:
    """Every combination of the factors' levels, in their order, but those an exclusion matches."""
    names = list(factors)
    return [
        levels
        for levels in itertools.product(*(list(levels) for levels in factors.values()))
        if not any(all(dict(zip(names, levels))[k] in v for k, v in rule.items()) for rule in exclude)
    ]


@dataclass(frozen=True)
class Factor:
    name: str
    levels: dict[str, dict[str, Any]]  # level name -> settings it applies


@dataclass(frozen=True)
class Claim:
    """A claim of the paper and how a study tests it (the ``claims`` list of a study YAML).

    - ``each: [variants]``: every listed variant differs from its reference in the paper's
      direction (``X beats Y at each depth``); judged by each comparison's verdict.
    - ``trend: {factor, of: [variants], per, unit}``: the difference (variant − reference) grows
      or shrinks along a numeric factor as in the paper; judged by the slope of the per-seed
      differences over the factor (``per`` units of it, called ``unit``).
    - ``response: {collapses: [variants], holds: [variants], stages, below}``: the Fig. 4 probe:
      the relative response of ``stages`` falls below ``below`` for the first variants and not for
      the others.

    ``expect: higher | lower`` (with ``each``) states the claimed direction of a comparison the
    paper has no number for (the variants' error higher or lower than the reference's); where the
    paper has a Δ, its sign is the claim.

    Options: ``against: {factor: level}`` (with ``each``) compares with that variant instead of
    the study's reference (Attention-236 against Attention-92); ``absolute: true`` (with ``trend``)
    takes the slope of the variants' own errors, not of their differences from the reference (ARL's
    error falls with depth); ``margin`` (pp) an equivalence margin around the paper's value within
    which an interval reproduces it; ``smallest_effect`` (pp) the smallest effect of interest: an
    interval inside ±it contradicts the claim (an equivalence test).
    """

    text: str
    kind: str
    variants: tuple[str, ...] = ()  # each / trend: compared with their references
    factor: str | None = None  # trend
    per: float = 1.0  # trend: the slope is given per this many units of the factor
    unit: str = ""  # trend: the name of those units
    collapses: tuple[str, ...] = ()  # response
    holds: tuple[str, ...] = ()  # response
    stages: tuple[int, ...] = (2, 3)  # response
    below: float = 0.1  # response
    expect: str | None = None  # each, beyond the paper: "higher" / "lower" error than the reference
    against: tuple[tuple[str, str], ...] = ()  # each: (factor, level) pairs replacing the reference's
    absolute: bool = False  # trend: the slope of the variants' own errors, not of their differences
    margin: float | None = None  # pp: an interval within paper ± margin reproduces the paper's value
    smallest_effect: float | None = None  # pp: an interval within ±this contradicts the claim


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    title: str
    paper_table: str
    settings: dict[str, Any]
    factors: list[Factor]
    reference: dict[str, str]
    paper: dict[tuple[str, ...], float]
    dataset: str | None = None
    paper_response: dict[str, list[float]] = field(default_factory=dict)  # Fig. 4 curves, by variant
    exclude: tuple[dict[str, tuple[str, ...]], ...] = ()  # level combinations not run
    notes: str = ""
    claims: tuple[Claim, ...] = ()

    def variants(self) -> list[tuple[str, ...]]:
        """Every combination of factor levels, in the order of the YAML, but the excluded ones."""
        return combinations({f.name: f.levels for f in self.factors}, self.exclude)

    def variant_name(self, levels: tuple[str, ...]) -> str:
        return "-".join(levels)

    def reference_of(self, levels: tuple[str, ...], against: tuple[tuple[str, str], ...] = ()) -> tuple[str, ...]:
        """The variant this one is compared with: same levels, but the reference level(s), or a
        claim's ``against`` levels where it names them."""
        other = dict(against) or self.reference
        return tuple(other.get(f.name, lvl) for f, lvl in zip(self.factors, levels))


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    seeds: int
    settings: dict[str, Any]
    synthetic: bool = False
