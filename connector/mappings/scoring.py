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

A fit rule holds exactly one test: an operator on one profile field, or
`not:` around a test, or `all:` / `any:` of tests (each on its own field, or
on the rule's). An engagement rule matches activities of one or more kinds,
optionally `where` their attributes pass the same tests (number tests read the
attribute as a number), and counts them (`min_count`, `max_count`).

Field names are checked across the file in `connector.engine.load.cross_check`,
since custom fields are declared in the CRM mapping files, not here.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from connector.domain import ACTIVITY_KINDS, is_activity_kind
from connector.mapfile import Strict, not_yaml_bool
from connector.mappings.probability import ProbabilitySettings

Bant = Literal["budget", "authority", "need", "timeline"]
BANT_KEYS: tuple[str, ...] = ("budget", "authority", "need", "timeline")

# The operators, in the order they are documented and tried.
TEXT_OPERATORS: tuple[str, ...] = ("equals", "in", "contains", "matches", "words", "present", "missing")
# Number tests: `range: {min, max}`, or `min:` / `max:` on their own (together they are one test).
NUMBER_OPERATORS: tuple[str, ...] = ("range", "min", "max")
# Tests made of tests.
COMBINATORS: tuple[str, ...] = ("not", "all", "any")
OPERATORS: tuple[str, ...] = (*TEXT_OPERATORS[:2], *NUMBER_OPERATORS, *TEXT_OPERATORS[2:])
FIT_OPERATORS: tuple[str, ...] = (*OPERATORS, "domain_in")
FIT_TESTS: tuple[str, ...] = (*FIT_OPERATORS, *COMBINATORS)
CONDITION_TESTS: tuple[str, ...] = (*OPERATORS, *COMBINATORS)
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
    return f"{op}_" if op in ("in", "not", "all", "any") else op


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
    """Operators shared by fit tests and activity conditions; exactly one test is set.

    `min` and `max` together are one test (a range); `range` is the same written as one key.
    """

    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    range: Range | None = None
    min: Number | None = None
    max: Number | None = None
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

    @field_validator("max")
    @classmethod
    def _min_below_max(cls, v: Number | None, info: ValidationInfo) -> Number | None:
        lo = info.data.get("min")
        if v is not None and lo is not None and lo > v:
            raise ValueError(f"min ({lo:g}) is above max ({v:g})")
        return v

    def operators(self) -> list[str]:
        """Names (as written in the file) of the tests that are set."""
        return [op for op in FIT_TESTS if getattr(self, _attr(op), None) is not None]

    def test_name(self) -> str:
        """The one test this node holds ('min' and 'max' together read as 'range')."""
        ops = self.operators()
        return "range" if ops and ops[0] in NUMBER_OPERATORS else ops[0]

    def bounds(self) -> tuple[float | None, float | None]:
        """(min, max) of a number test, from `range` or from `min` / `max`."""
        if self.range is not None:
            return self.range.min, self.range.max
        return self.min, self.max

    def _one_operator(self, allowed: tuple[str, ...]) -> None:
        ops = self.operators()
        if not ops:
            raise ValueError(f"needs one test: {', '.join(allowed)}")
        tests = len(ops) - (1 if "min" in ops and "max" in ops else 0)
        if tests > 1:
            raise ValueError(
                f"has {tests} tests ({', '.join(ops)}); write one rule per test, "
                "or combine them with all: or any:"
            )


class Condition(Operators):
    """A test on one attribute of an activity (url, form, title, campaign, subject, duration, ...)."""

    not_: Condition | None = Field(default=None, alias="not")
    all_: list[Condition] | None = Field(default=None, alias="all")
    any_: list[Condition] | None = Field(default=None, alias="any")

    @field_validator("all_", "any_")
    @classmethod
    def _some(cls, v: list[Condition] | None) -> list[Condition] | None:
        if v is not None and not v:
            raise ValueError("the list is empty")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        self._one_operator(CONDITION_TESTS)
        return self


class Test(Operators):
    """A test on a profile field: one operator, or `not` / `all` / `any` of tests.

    `field` may be left out where an enclosing test or the rule gives it.
    """

    field: Text | None = None
    domain_in: list[Text] | None = None
    not_: Test | None = Field(default=None, alias="not")
    all_: list[Test] | None = Field(default=None, alias="all")
    any_: list[Test] | None = Field(default=None, alias="any")

    @field_validator("all_", "any_")
    @classmethod
    def _some(cls, v: list[Test] | None) -> list[Test] | None:
        if v is not None and not v:
            raise ValueError("the list is empty")
        return v

    @field_validator("domain_in")
    @classmethod
    def _domains(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for d in _nonempty_texts(v):
            if "@" in d or "/" in d or " " in d.strip():
                raise ValueError(f"'{d}' is not a domain (write it like gmail.com)")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> Test:
        self._one_operator(FIT_TESTS)
        return self

    def children(self) -> list[Test]:
        if self.not_ is not None:
            return [self.not_]
        return list(self.all_ or self.any_ or [])


class FitRule(Test):
    """Points for a lead whose profile passes the rule's test."""

    name: Text
    points: Number
    bant: Bant | None = None
    # Rules sharing an `exclusive` name: only the first that matches, in file order, counts.
    exclusive: Text | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    def fields_read(self) -> list[str]:
        """Every profile field the rule's tests read, in order of appearance."""
        out: list[str] = []

        def walk(t: Test, inherited: str | None) -> None:
            f = t.field or inherited
            kids = t.children()
            if not kids and f is not None:
                out.append(f)
            for k in kids:
                walk(k, f)

        walk(self, None)
        return list(dict.fromkeys(out))


class EngagementRule(Strict):
    """Points per matching activity, decayed by age, within a window, capped."""

    name: Text
    kind: Texts
    where: dict[Text, Condition] = Field(default_factory=dict)
    points: Number
    max_points: Number | None = None
    max_count: int | None = None
    # At least this many occurrences in the window, or the rule gives nothing ("5 or more visits").
    min_count: int | None = None
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
            if not is_activity_kind(k):
                raise ValueError(
                    f"unknown activity kind '{k}'{_suggest(k, ACTIVITY_KINDS)}; "
                    f"known: {', '.join(sorted(ACTIVITY_KINDS))}, or custom:NAME for a kind the CRM mapping names"
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

    @field_validator("max_count", "min_count")
    @classmethod
    def _count(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be 1 or more")
        return v

    @field_validator("min_count")
    @classmethod
    def _counts_ordered(cls, v: int | None, info: ValidationInfo) -> int | None:
        most = info.data.get("max_count")
        if v is not None and most is not None and v > most:
            raise ValueError(f"min_count ({v}) is above max_count ({most}); no lead could pass it")
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



class FieldSettings(Strict):
    """How one profile field is read, whatever rule reads it."""

    # Values that mean "not answered" on this field (form placeholders such as Select, --, n/a):
    # read as empty, so `present: true` fails and `missing: true` passes on them. Case and spaces ignored.
    not_answered: list[Text] = Field(default_factory=list)
    # With aliases: a value the alias table does not know is reported as a problem on the lead.
    # Default (false): it simply matches no rule.
    closed: bool = False

    @field_validator("not_answered")
    @classmethod
    def _values(cls, v: list[str]) -> list[str]:
        return v if not v else _nonempty_texts(v)


class ScoringFile(Strict):
    """The whole of mappings/scoring.yaml."""

    model: ModelSettings
    fields: dict[Text, FieldSettings] = Field(default_factory=dict)
    aliases: dict[Text, dict[Text, list[Text]]] = Field(default_factory=dict)
    fit: list[FitRule] = Field(default_factory=list)
    engagement: list[EngagementRule] = Field(default_factory=list)
    probability: ProbabilitySettings = ProbabilitySettings()  # the learned probability (connector.mappings.probability)


# What each kind of rule accepts, for the hint on an unknown key.
FIT_KEYS = ("name", "field", "points", "bant", "exclusive")
ENGAGEMENT_KEYS = tuple(n for n in EngagementRule.model_fields)
