"""Loading YAML mapping files into typed, validated objects.

Every file under mappings/ goes through `load_model`: the YAML is read with the
line of every key remembered, validated by a pydantic model that forbids
unknown keys, and any problem becomes one `MappingError` naming the file, the
line and the key, so an admin can fix it without reading Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from connector.errors import UserError

M = TypeVar("M", bound=BaseModel)

Loc = tuple[str | int, ...]


class Strict(BaseModel):
    """Base for every mapping-file model: unknown keys are errors, values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class MappingError(UserError):
    """A mapping file is wrong. The message is one sentence an admin can act on."""

    def __init__(self, file: str, line: int | None, key: str | None, problem: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.problem = problem
        where = file
        if line is not None:
            where += f", line {line}"
        if key:
            where += f", key '{key}'"
        super().__init__(f"{where}: {problem}")


def not_yaml_bool(value: Any) -> Any:
    """A pydantic before-validator for text: YAML 1.1 reads NO, no, off, yes, on as booleans
    (Norway's country code is the classic victim); ask for quotes instead of storing False."""
    if isinstance(value, bool):
        raise ValueError(
            f"{str(value).lower()} is not text here; YAML reads yes/no/on/off as true/false, "
            "so put the value in quotes (for example 'NO')"
        )
    return value


def time_zone_name(value: str) -> str:
    """A pydantic after-validator: an IANA time zone name this machine knows."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"'{value}' is not a known time zone (use names like Europe/Berlin)") from None
    return value


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class _Positions:
    """Line numbers (1-based) of every key and list item, by path."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}

    def line_of(self, loc: Loc) -> int | None:
        # pydantic may point below what the YAML has (a missing key): walk up.
        while True:
            if loc in self.lines:
                return self.lines[loc]
            if not loc:
                return None
            loc = loc[:-1]


def _construct(node: yaml.Node, loc: Loc, pos: _Positions, file: str, scalars: yaml.SafeLoader) -> Any:
    pos.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, (*loc, "<key>"), pos, file, scalars)
            if isinstance(key, list | dict):
                raise MappingError(file, key_node.start_mark.line + 1, dotted(loc), "a key must be a plain word")
            if key in out:
                raise MappingError(
                    file, key_node.start_mark.line + 1, dotted((*loc, str(key))), "this key appears twice"
                )
            key_loc = (*loc, str(key) if not isinstance(key, int) else key)
            pos.lines[key_loc] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, key_loc, pos, file, scalars)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*loc, i), pos, file, scalars) for i, item in enumerate(node.value)]
    return scalars.construct_object(node, deep=True)


def read_yaml(path: Path) -> tuple[Any, _Positions]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(file, None, None, "the file does not exist") from None
    except OSError as exc:
        raise MappingError(file, None, None, f"cannot be read ({exc.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise MappingError(file, line, None, f"is not valid YAML ({exc.problem})") from None
    pos = _Positions()
    if node is None:
        return {}, pos
    # A loader of its own, used only to turn scalar nodes into values with YAML's usual typing. It keeps
    # every node it turned (with its marks, which hold the file's text) until it is dropped: one shared
    # by the whole process kept every file it ever read: 0.85 MB for scoring.yaml, 1.1 MB for a
    # HubSpot worker's files, and more at each re-read of away.yaml (routing reads it when it changes).
    return _construct(node, (), pos, file, yaml.SafeLoader("")), pos


def _friendly(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "this key is required"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"must be one of {expected}"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, ") :]
    return msg[:1].lower() + msg[1:]


def _clean_loc(loc: Loc) -> Loc:
    # pydantic puts union member names and function-validator names into loc;
    # keep only what is a path in the file.
    return tuple(p for p in loc if isinstance(p, int) or not (p.startswith("function-") or "[" in p))


def load_model(path: Path, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Read `path` and validate it as `model`; raise MappingError on the first problem."""
    data, pos = read_yaml(path)
    return validate(data, pos, model, str(path), context)


def validate(data: Any, pos: _Positions, model: type[M], file: str, context: dict[str, Any] | None = None) -> M:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _clean_loc(tuple(err["loc"]))
        raise MappingError(file, pos.line_of(loc), dotted(loc) or None, _friendly(dict(err))) from None
