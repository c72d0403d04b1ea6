"""The schema of mappings/scoring.yaml: the scoring model an admin writes.

A closed vocabulary: every key is known, every operator is one of a fixed set,
every profile field and activity kind is one the engine understands. Anything
else is rejected by `connector.engine.load_scoring` with one `MappingError`
naming the file, the line and the key.

Layout of the file (see mappings/scoring.yaml for a commented example):

    model:       label, default decay and window, weights, caps, bands, grades
    aliases:     per profile field, canonical value -> the spellings CRMs use
    fit:         rules over profile fields (explicit score)
    engagement:  rules over activities (implicit score)

A fit rule tests one profile field with exactly one operator; an engagement
rule matches activities of one or more kinds, optionally `where` their
attributes pass operator tests.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from connector.domain import ACTIVITY_KINDS, PROFILE_FIELDS
from connector.mapfile import Strict, not_yaml_bool
from connector.mappings.probability import ProbabilitySettings

Bant = Literal["budget", "authority", "need", "timeline"]
BANT_KEYS: tuple[str, ...] = ("budget", "authority", "need", "timeline")

# The operators, in the order they are documented and tried.
TEXT_OPERATORS: tuple[str, ...] = ("equals", "in", "contains", "matches", "words", "present", "missing")
FIT_OPERATORS: tuple[str, ...] = (*TEXT_OPERATORS[:2], "range", *TEXT_OPERATORS[2:], "domain_in")
# Profile fields whose value is an address a domain can be read from.
DOMAIN_FIELDS: frozenset[str] = frozenset({"email", "website"})

_NAME = re.compile(r"^[^\W_][\w ,.&/()+'-]{0,59}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_ATTR = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def _suggest(word: str, known: frozenset[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _scalar(value: Any) -> Any:
    not_yaml_bool(value)
    if not isinstance(value, str | int | float):
        raise ValueError("must be a text or a number")
    return value


def _listed(value: Any) -> Any:
    # `contains: /pricing` is short for `contains: [/pricing]`
    return [value] if isinstance(value, str) else value


Text = Annotated[str, BeforeValidator(not_yaml_bool)]
# One type per key (no unions), so an error points at the key and not at a union member.
Number = float  # strict mode still takes an int for a float
Scalar = Annotated[Any, BeforeValidator(_scalar)]
Texts = Annotated[list[Text], BeforeValidator(_listed)]


def _nonempty_texts(values: list[str]) -> list[str]:
    if not values:
        raise ValueError("the list is empty")
    for v in values:
        if not v.strip():
            raise ValueError("the list holds an empty text")
    return values


def _attr(op: str) -> str:
    return "in_" if op == "in" else op


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"bad regular expression ({exc})") from None
    return pattern


class Range(Strict):
    """Numeric range, inclusive at both ends; either end may be left out."""

    min: Number | None = None
    max: Number | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        return self


class Operators(Strict):
    """Operators shared by fit rules and activity conditions; exactly one is set."""

    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    contains: Texts | None = None
    matches: Text | None = None
    words: list[Text] | None = None
    present: Literal[True] | None = None
    missing: Literal[True] | None = None

    @field_validator("in_")
    @classmethod
    def _in_nonempty(cls, v: list[str | Number] | None) -> list[str | Number] | None:
        if v is not None:
            if not v:
                raise ValueError("the list is empty")
            kinds = {isinstance(x, str) for x in v}
            if len(kinds) > 1:
                raise ValueError("the values must be all text or all numbers")
        return v

    @field_validator("contains")
    @classmethod
    def _contains_nonempty(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _nonempty_texts(v)

    @field_validator("words")
    @classmethod
    def _words_nonempty(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _nonempty_texts(v)

    @field_validator("matches")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return None if v is None else _check_regex(v)

    def operators(self) -> list[str]:
        """Names (as written in the file) of the operators that are set."""
        return [op for op in FIT_OPERATORS if getattr(self, _attr(op), None) is not None]

    def _one_operator(self, allowed: tuple[str, ...]) -> None:
        ops = self.operators()
        if not ops:
            raise ValueError(f"needs one test: {', '.join(allowed)}")
        if len(ops) > 1:
            raise ValueError(f"has {len(ops)} tests ({', '.join(ops)}); write one rule per test")


class Condition(Operators):
    """A test on one attribute of an activity (url, form, title, campaign, subject, ...)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        self._one_operator(TEXT_OPERATORS)
        return self


class FitRule(Operators):
    """Points for a profile field passing one test."""

    name: Text
    field: Text
    range: Range | None = None
    domain_in: list[Text] | None = None
    points: Number
    bant: Bant | None = None
    # Rules sharing an `exclusive` name: only the first that matches, in file order, counts.
    exclusive: Text | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("field")
    @classmethod
    def _known_field(cls, v: str) -> str:
        if v not in PROFILE_FIELDS:
            raise ValueError(
                f"unknown profile field '{v}'{_suggest(v, PROFILE_FIELDS)}; "
                f"known: {', '.join(sorted(PROFILE_FIELDS))}"
            )
        return v

    @field_validator("domain_in")
    @classmethod
    def _domains(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if v is None:
            return v
        if info.data.get("field") not in DOMAIN_FIELDS:
            fields = " or ".join(sorted(DOMAIN_FIELDS))
            raise ValueError(f"domain_in reads a domain, so it applies to {fields}")
        for d in _nonempty_texts(v):
            if "@" in d or "/" in d or " " in d.strip():
                raise ValueError(f"'{d}' is not a domain (write it like gmail.com)")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> FitRule:
        self._one_operator(FIT_OPERATORS)
        return self


class EngagementRule(Strict):
    """Points per matching activity, decayed by age, within a window, capped."""

    name: Text
    kind: Texts
    where: dict[Text, Condition] = Field(default_factory=dict)
    points: Number
    max_points: Number | None = None
    max_count: int | None = None
    window_days: Number | None = None
    decay: bool = True
    half_life_days: Number | None = None
    bant: Bant | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("the list is empty")
        for k in v:
            if k not in ACTIVITY_KINDS:
                raise ValueError(
                    f"unknown activity kind '{k}'{_suggest(k, ACTIVITY_KINDS)}; "
                    f"known: {', '.join(sorted(ACTIVITY_KINDS))}"
                )
        return v

    @field_validator("where")
    @classmethod
    def _attr_names(cls, v: dict[str, Condition]) -> dict[str, Condition]:
        for name in v:
            if not _ATTR.match(name):
                raise ValueError(f"'{name}' is not an attribute name (lower-case letters, digits, _)")
        return v

    @field_validator("max_points", "window_days", "half_life_days")
    @classmethod
    def _positive(cls, v: Number | None) -> Number | None:
        if v is not None and not v > 0:
            raise ValueError("must be above 0")
        return v

    @field_validator("max_count")
    @classmethod
    def _count(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be 1 or more")
        return v

    @field_validator("half_life_days")
    @classmethod
    def _decay_consistent(cls, v: Number | None, info: ValidationInfo) -> Number | None:
        if v is not None and info.data.get("decay") is False:
            raise ValueError("is set but decay is false; remove one of them")
        return v

    def kinds(self) -> tuple[str, ...]:
        return tuple(self.kind)


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("a rule name is 1-60 letters, digits, spaces and , . _ & / ( ) + ' -")
    return v


class Bounds(Strict):
    min: Number | None = None
    max: Number | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min ({self.min:g}) must be below max ({self.max:g})")
        return self


class Caps(Strict):
    fit: Bounds = Bounds()
    engagement: Bounds = Bounds()
    total: Bounds = Bounds(min=0, max=100)


class Weights(Strict):
    fit: Number = 1.0
    engagement: Number = 1.0

    @field_validator("fit", "engagement")
    @classmethod
    def _nonnegative(cls, v: Number) -> Number:
        if v < 0:
            raise ValueError("a weight cannot be negative")
        return v


class Bands(Strict):
    """Total score from which a lead is warm, and hot; below warm it is cold."""

    warm: int
    hot: int

    @model_validator(mode="after")
    def _ordered(self) -> Bands:
        if not self.warm < self.hot:
            raise ValueError(f"thresholds out of order: hot ({self.hot}) must be above warm ({self.warm})")
        return self


class Grades(Strict):
    """Fit score from which a lead is graded A, B, C; below C it is D."""

    A: int
    B: int
    C: int

    @model_validator(mode="after")
    def _ordered(self) -> Grades:
        if not self.A > self.B > self.C:
            raise ValueError(
                f"thresholds out of order: need A ({self.A}) above B ({self.B}) above C ({self.C})"
            )
        return self


class ModelSettings(Strict):
    label: Text
    half_life_days: Number = 30
    window_days: Number | None = None
    weights: Weights = Weights()
    caps: Caps = Caps()
    bands: Bands
    grades: Grades

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        if not _LABEL.match(v):
            raise ValueError("a label is 1-40 letters, digits and . _ -, for example acme-eu-2026.11")
        return v

    @field_validator("half_life_days", "window_days")
    @classmethod
    def _positive(cls, v: Number | None) -> Number | None:
        if v is not None and not v > 0:
            raise ValueError("must be above 0")
        return v



class ScoringFile(Strict):
    """The whole of mappings/scoring.yaml."""

    model: ModelSettings
    aliases: dict[Text, dict[Text, list[Text]]] = Field(default_factory=dict)
    fit: list[FitRule] = Field(default_factory=list)
    engagement: list[EngagementRule] = Field(default_factory=list)
    probability: ProbabilitySettings = ProbabilitySettings()  # the learned probability (connector.mappings.probability)

    @field_validator("aliases")
    @classmethod
    def _alias_fields(cls, v: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
        for name in v:
            if name not in PROFILE_FIELDS:
                raise ValueError(f"unknown profile field '{name}'{_suggest(name, PROFILE_FIELDS)}")
        return v


# What each kind of rule accepts, for the hint on an unknown key.
FIT_KEYS = ("name", "field", "points", "bant", "exclusive")
ENGAGEMENT_KEYS = tuple(n for n in EngagementRule.model_fields)
