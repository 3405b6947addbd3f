"""The schema of a study YAML (its claims included) and of a profile of ``profiles.yaml``: pydantic
models with ``extra="forbid"`` (:class:`StudyFile`, :class:`ClaimSpec`, :class:`ProfileSpec`) that
check the types, ranges, choices and keys, and give the validated objects the runner and the
reports read (:mod:`resattn.study.definition`). A refused file is one :class:`SpecError` line
naming the file, the key path (``claims[0].trend.factor``) and what is allowed there (the field's
``description``; :mod:`resattn.study.errors`).

Written by hand in the validators, because pydantic checks a value against its type and not against
the file's other keys: the cross-references (a reference, a ``paper`` key or an exclusion names a
level of its factor; a claim names variants of this study and a numeric factor; exclusions leave a
variant), a factor given as either a list of values or a mapping of named levels (two forms with
their own messages), and a setting's name with its did-you-mean.

No torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from resattn.config import NUM_CLASSES
from resattn.ranges import Number
from resattn.study.definition import Claim, Factor, Profile, Study, combinations
from resattn.study.errors import At, SpecError, key_path, suggest
from resattn.study.record import SECTIONS

# Factor names that are not "model.<name>" settings.
FACTOR_SETTINGS = {"dataset": "data.dataset", "label_noise": "data.label_noise"}
CLAIM_KINDS = ("each", "trend", "response")
CLAIM_OPTIONS = ("expect", "against", "margin", "smallest_effect")  # see Claim
VARIANTS = "a non-empty list of variants of this study"
AGAINST = "with `each`, a mapping of factor -> one of its levels"
PERCENT = Number(ge=0, le=100)  # the paper's test error


def _text(value: Any) -> Any:
    """A number where text is expected (``paper_table: 3``, a level ``56``) is read as its text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _settings(value: Any) -> dict[str, Any]:
    """Settings: a mapping of ``section.name`` keys, section one of model / data / trainer (their
    values are checked against the declared ranges when the runs are planned: ``check_runs``)."""
    if not isinstance(value, dict):
        raise At("a mapping of settings such as {model.width: 0.25}")
    for name in value:
        if not isinstance(name, str) or name.split(".", 1)[0] not in SECTIONS or "." not in name:
            rest = str(name).partition(".")[2]
            hint = suggest(str(name), [f"{s}.{rest}" for s in SECTIONS] if rest else list(SECTIONS), n=1)
            raise At("a setting named model.<arg>, data.<arg> or trainer.<arg>" + hint, name)
    return dict(value)


Text = Annotated[str, BeforeValidator(_text)]
Settings = Annotated[dict[str, Any], BeforeValidator(_settings)]
SETTINGS_TEXT = "a mapping of settings (section.name: value), each within its declared range"


class _Schema(BaseModel):
    """YAML as written: no key beyond the fields, no silent conversion (``true`` is no number)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    what: ClassVar[str]  # what a value of the model is, for the message when it is not a mapping


def _listed(names: Any, variants: list[str], *keys: Any) -> tuple[str, ...]:
    """Variants a claim names: checked here, against the study's, to name them when refused."""
    if not isinstance(names, list) or not names or any(str(name) not in variants for name in names):
        raise At(f"{VARIANTS} ({', '.join(variants)})", *keys)
    return tuple(str(name) for name in names)


class TrendSpec(_Schema):
    what: ClassVar[str] = "a mapping (see the Claim docstring in resattn/study/definition.py)"
    factor: Text | None = Field(None, description="a factor of this study with numeric levels")
    of: Any = Field(None, description=VARIANTS)
    per: float = Field(1.0, gt=0, description="a number > 0")
    unit: Text | None = Field(None, description="text: the name of `per` units of the factor")
    absolute: bool = Field(False, description="true (the variants' own errors) or false (differences)")


class ResponseSpec(_Schema):
    what: ClassVar[str] = TrendSpec.what
    collapses: Any = Field(None, description=VARIANTS)
    holds: Any = Field(None, description=VARIANTS)
    stages: list[Annotated[int, Field(ge=1)]] = Field([2, 3], description="a list of stage numbers (1-based)")
    below: float = Field(0.1, gt=0, description="a number > 0 (a response relative to stage 1)")


class ClaimSpec(_Schema):
    """One entry of a study's ``claims``: its text, one kind and the options (see :class:`Claim`)."""

    what: ClassVar[str] = "a mapping with `claim` (its text) and exactly one of " + ", ".join(CLAIM_KINDS)
    claim: str = Field(description="text: the claim")
    expect: Literal["higher", "lower"] | None = Field(None, description="higher or lower, with `each`")
    against: dict[str, Text] | None = Field(None, min_length=1, description=AGAINST)
    margin: float | None = Field(None, gt=0, description="a number of percentage points > 0")
    smallest_effect: float | None = Field(None, gt=0, description="a number of percentage points > 0")
    each: Any = Field(None, description=VARIANTS)
    trend: TrendSpec | None = None
    response: ResponseSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ClaimSpec:
        kinds = [k for k in CLAIM_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise At(self.what)
        if self.expect is not None and kinds != ["each"]:
            raise At("higher or lower, with `each`", "expect")
        if self.against is not None and kinds != ["each"]:
            raise At(AGAINST, "against")
        if self.response is not None and (self.margin or self.smallest_effect):
            raise At("margin and smallest_effect go with `each` or `trend`, not `response`")
        return self

    def to_claim(self, factors: dict[str, dict[str, Any]], variants: list[str]) -> Claim:
        """The claim, its factors, levels and variants checked against the study's (raises At)."""
        options = {"expect": self.expect, "margin": self.margin, "smallest_effect": self.smallest_effect}
        if self.each is not None:
            for factor, level in (self.against or {}).items():
                if factor not in factors:
                    raise At(
                        f"a factor of this study ({', '.join(factors)}){suggest(factor, list(factors))}", "against"
                    )
                if level not in factors[factor]:
                    known = list(factors[factor])
                    raise At(f"one of {', '.join(known)}{suggest(level, known)}", "against", factor)
            against = tuple((self.against or {}).items())
            return Claim(self.claim, "each", _listed(self.each, variants, "each"), against=against, **options)
        if self.trend is not None:
            trend = self.trend
            if trend.factor not in factors:
                raise At(f"a factor of this study ({', '.join(factors)})", "trend", "factor")
            levels = list(factors[trend.factor])
            try:
                [float(v) for v in levels]
            except ValueError:
                raise At(f"a factor with numeric levels, not {levels}", "trend", "factor") from None
            return Claim(
                self.claim,
                "trend",
                _listed(trend.of, variants, "trend", "of"),
                trend.factor,
                trend.per,
                trend.unit if trend.unit is not None else f"{trend.per:g} {trend.factor}",
                absolute=trend.absolute,
                **options,
            )
        response = self.response
        return Claim(
            self.claim,
            "response",
            collapses=_listed(response.collapses, variants, "response", "collapses"),
            holds=() if response.holds is None else _listed(response.holds, variants, "response", "holds"),
            stages=tuple(response.stages),
            below=response.below,
        )


def _variants(data: dict[str, Any]) -> list[str] | None:
    """The study's variant names from its validated factors and exclusions (None if either failed)."""
    if "factors" not in data or "exclude" not in data:
        return None
    return ["-".join(levels) for levels in combinations(data["factors"], data["exclude"] or ())]


class StudyFile(_Schema):
    """A study YAML (see :mod:`resattn.study.spec`). The validators of the fields that name levels or
    variants check them against the factors (validated first, in the order of the fields) and
    return the value the :class:`Study` holds."""

    what: ClassVar[str] = "a mapping with keys title, factors, reference, paper"
    title: Text = Field(description="text (required)")
    paper_table: Text | None = Field(None, description="text")
    dataset: Literal[tuple(NUM_CLASSES)] | None = Field(None, description=f"one of {', '.join(NUM_CLASSES)}")
    settings: Settings | None = Field(None, description=SETTINGS_TEXT)
    factors: dict[str, Any] = Field(
        min_length=1,
        description="a non-empty mapping (required) of factor -> a list of distinct values, "
        "or named levels -> settings",
    )
    exclude: list[Annotated[dict[str, Any], Field(min_length=1)]] | None = Field(
        None, description="a list of {factor: level or [levels]} that leaves at least one variant"
    )
    reference: dict[str, Any] = Field(description="a mapping (required) of factor -> one of its levels")
    paper: dict[Any, Any] | None = Field(
        None, description="the paper's test error in percent, a number in [0, 100], nested by the factors' levels"
    )
    paper_response: dict[Text, list[Annotated[float, Field(ge=0)]]] | None = Field(
        None, description="a mapping of variant -> list of per-stage responses, each a number >= 0"
    )
    notes: Text | None = Field(None, description="text")
    claims: list[ClaimSpec] | None = Field(
        None,
        description="a list of claims, {claim: text} with each, trend or response "
        "(see Claim in resattn/study/definition.py)",
    )

    @field_validator("factors")
    @classmethod
    def _levels(cls, factors: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
        """Each factor as its levels, each level as the settings it applies: a list of values of
        the setting the factor names, or a mapping of level names to settings."""
        out = {}
        for name, spec in factors.items():
            setting = FACTOR_SETTINGS.get(name, f"model.{name}")
            if isinstance(spec, list) and spec:
                twice = sorted({str(v) for v in spec if [str(w) for w in spec].count(str(v)) > 1})
                if twice:
                    raise At(f"distinct levels, not {twice[0]} twice", name)
                out[name] = {str(v): {setting: v} for v in spec}
            elif isinstance(spec, dict) and spec:
                out[name] = {}
                for level, settings in spec.items():
                    try:
                        out[name][str(level)] = _settings(settings)
                    except At as err:
                        raise err.below(name, level) from None
            else:
                raise At("a non-empty list of values or a mapping of level -> settings", name)
        return out

    @field_validator("exclude")
    @classmethod
    def _exclusions(cls, rules: list[dict[str, Any]], info: ValidationInfo) -> tuple[dict[str, tuple[str, ...]], ...]:
        """``{factor: level or [levels]}`` rules; a variant matching every key of one is not run."""
        factors, parsed = info.data.get("factors"), []
        for i, rule in enumerate(rules or () if factors is not None else ()):
            parsed.append({})
            for name, levels in rule.items():
                if name not in factors:
                    raise At(f"a factor of this study ({', '.join(factors)})", i, name)
                parsed[-1][name] = tuple(str(v) for v in (levels if isinstance(levels, list) else [levels]))
                if any(v not in factors[name] for v in parsed[-1][name]):
                    raise At(f"levels of {name} ({', '.join(factors[name])})", i, name)
        if factors is not None and not combinations(factors, tuple(parsed)):
            raise At("to leave at least one variant; it removes every variant")
        return tuple(parsed)

    @field_validator("reference")
    @classmethod
    def _reference(cls, reference: dict[str, Any], info: ValidationInfo) -> dict[str, str]:
        factors, reference = info.data.get("factors") or {}, {k: str(v) for k, v in reference.items()}
        for name, level in reference.items() if factors else ():
            if name not in factors:
                raise At(f"a factor of this study ({', '.join(factors)})", name)
            if level not in factors[name]:
                raise At(f"a level of {name} ({', '.join(factors[name])})", name)
        return reference

    @field_validator("paper")
    @classmethod
    def _paper(cls, paper: dict, info: ValidationInfo) -> dict[tuple[str, ...], float]:
        """The nested mapping read as {levels: test error}; any level combination may be left out."""
        factors, out = list((info.data.get("factors") or {}).items()), {}

        def walk(node: Any, levels: tuple[str, ...], keys: tuple) -> None:
            if len(levels) == len(factors):
                if not PERCENT.takes(node):
                    raise At("a number in [0, 100] (test error in percent)", *keys)
                out[levels] = float(node)
                return
            name, known = factors[len(levels)]
            if not isinstance(node, dict):
                raise At(f"a mapping keyed by levels of {name}", *keys)
            for level, child in node.items():
                if str(level) not in known:
                    raise At(f"a level of {name} ({', '.join(known)})", *keys, level)
                walk(child, levels + (str(level),), keys + (level,))

        if factors:
            walk(paper or {}, (), ())
        return out

    @field_validator("paper_response")
    @classmethod
    def _response(cls, response: dict[str, list[float]], info: ValidationInfo) -> dict[str, list[float]]:
        variants = _variants(info.data)
        for name in response or {} if variants is not None else ():
            if name not in variants:
                raise At(f"a variant of this study ({', '.join(variants)})", name)
        return response or {}

    @field_validator("claims")
    @classmethod
    def _claims(cls, claims: list[ClaimSpec], info: ValidationInfo) -> tuple[Claim, ...] | list[ClaimSpec]:
        variants, out = _variants(info.data), []
        if variants is None:
            return claims  # the factors or exclusions were refused: that error is the one reported
        for i, claim in enumerate(claims or ()):
            try:
                out.append(claim.to_claim(info.data["factors"], variants))
            except At as err:
                raise err.below(i) from None
        return tuple(out)

    def study(self, name: str, path: Path) -> Study:
        return Study(
            name=name,
            path=path,
            title=self.title,
            paper_table=self.paper_table or "",
            settings=dict(self.settings or {}),
            factors=[Factor(factor, levels) for factor, levels in self.factors.items()],
            reference=dict(self.reference),
            paper=self.paper or {},
            dataset=self.dataset,
            paper_response=dict(self.paper_response or {}),
            exclude=self.exclude or (),
            notes=" ".join((self.notes or "").split()),
            claims=self.claims or (),
        )


class ProfileSpec(_Schema):
    """One profile of ``profiles.yaml``."""

    what: ClassVar[str] = "a mapping with description, synthetic, seeds, settings"
    description: Text | None = Field(None, description="text")
    synthetic: bool = Field(
        False, description="true or false (true: the generated data set, with the study's class count)"
    )
    seeds: int = Field(1, ge=1, description="an integer >= 1")
    settings: Settings | None = Field(None, description=SETTINGS_TEXT)

    def profile(self, name: str) -> Profile:
        return Profile(name, self.description or "", self.seeds, dict(self.settings or {}), self.synthetic)


# What each field of a study YAML and of a profile may hold: the models' descriptions (listed in
# docs/bad-input.md); settings within them are checked against the declared ranges (SETTINGS).
STUDY_FIELDS = {name: f.description for name, f in StudyFile.model_fields.items()}
PROFILE_FIELDS = {name: f.description for name, f in ProfileSpec.model_fields.items()}


def check_settings(settings: Any, path: Path | str, key: str) -> dict[str, Any]:
    """Settings must be a mapping of ``section.name`` keys, section one of model / data / trainer."""
    try:
        return _settings(settings)
    except At as err:
        raise SpecError(path, key_path(settings, err.keys, key), err.expected) from None
