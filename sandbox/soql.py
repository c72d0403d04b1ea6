"""The subset of SOQL a sync connector sends, parsed, type-checked and evaluated.

    SELECT f1, f2, Rel.Field | COUNT()
    FROM Object
    [WHERE cond]          cond: term (AND term)* | term (OR term)*, term: [NOT] simple | [NOT] (cond)
    [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
    [LIMIT n] [OFFSET n]

simple: `f = | != | <> | < | <= | > | >= value`, `f [NOT] IN (v, ...)`, `f LIKE 'pattern'`;
values: quoted strings with backslash escapes, numbers, true/false/null, datetime literals
(`2026-01-01T00:00:00Z`, `...+00:00`, `...000Z`) and date literals (`2026-01-01`).

As in Salesforce: keywords and names are case-insensitive, mixing AND and OR at one level
needs parentheses, string comparisons ignore case, datetimes are unquoted and must match
the field's type. Errors carry Salesforce's error codes (MALFORMED_QUERY, INVALID_FIELD,
INVALID_TYPE, INVALID_QUERY_FILTER_OPERATOR) and its message layout: the query line, a caret
under the offending token, `ERROR at Row:r:Column:c` and the reason.

Runtime values: datetimes are float seconds since the epoch (UTC), dates 'YYYY-MM-DD'
strings, ids 18-character strings, the rest plain Python values. A record is a mapping from
canonical field names to those values; a relationship name maps to the related record (a
mapping) or None.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sandbox import sf_ids


class SoqlError(Exception):
    """A query Salesforce would refuse, with its error code and message."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


class FieldType(StrEnum):
    ID = "id"
    REFERENCE = "reference"
    STRING = "string"
    PICKLIST = "picklist"
    TEXTAREA = "textarea"
    EMAIL = "email"
    PHONE = "phone"
    URL = "url"
    BOOLEAN = "boolean"
    INT = "int"
    DOUBLE = "double"
    CURRENCY = "currency"
    PERCENT = "percent"
    DATE = "date"
    DATETIME = "datetime"


STRING_TYPES = frozenset(
    {FieldType.STRING, FieldType.PICKLIST, FieldType.TEXTAREA, FieldType.EMAIL, FieldType.PHONE, FieldType.URL}
)
ID_TYPES = frozenset({FieldType.ID, FieldType.REFERENCE})
NUMBER_TYPES = frozenset({FieldType.INT, FieldType.DOUBLE, FieldType.CURRENCY, FieldType.PERCENT})

# How Salesforce names a type in "must be of type X" messages.
_TYPE_WORD = {
    FieldType.BOOLEAN: "boolean",
    FieldType.INT: "integer",
    FieldType.DOUBLE: "double",
    FieldType.CURRENCY: "currency",
    FieldType.PERCENT: "double",
    FieldType.DATE: "date",
    FieldType.DATETIME: "dateTime",
}


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: FieldType
    label: str = ""
    custom: bool = False
    updateable: bool = False
    nillable: bool = True
    length: int = 0
    precision: int = 0
    scale: int = 0
    picklist: tuple[str, ...] = ()
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None


@dataclass(slots=True)
class SObjectType:
    name: str
    key_prefix: str
    label: str
    fields: dict[str, Field] = field(default_factory=dict)  # lower-case name -> field

    def add(self, f: Field) -> None:
        self.fields[f.name.lower()] = f

    def get(self, name: str) -> Field | None:
        return self.fields.get(name.lower())

    def relationship(self, name: str) -> Field | None:
        """The reference field whose relationship is called `name` (e.g. Account -> AccountId)."""
        lowered = name.lower()
        for f in self.fields.values():
            if f.relationship_name is not None and f.relationship_name.lower() == lowered:
                return f
        return None


class Catalog(Protocol):
    def sobject(self, name: str) -> SObjectType | None: ...


# ---------------------------------------------------------------------------
# Query model


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A field of the queried object, or of a parent through relationship names."""

    path: tuple[str, ...]  # canonical: relationship names then the field name
    field: Field
    objects: tuple[str, ...]  # the object type at each step (len(path))

    @property
    def name(self) -> str:
        return ".".join(self.path)


class Expr:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Const(Expr):
    value: bool


@dataclass(frozen=True, slots=True)
class Compare(Expr):
    ref: FieldRef
    op: str  # = != < <= > >=
    value: Any


@dataclass(frozen=True, slots=True)
class InList(Expr):
    ref: FieldRef
    values: tuple[Any, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class Like(Expr):
    ref: FieldRef
    pattern: str  # the SOQL pattern, unescaped wildcards kept

    def regex(self) -> re.Pattern[str]:
        out = []
        i = 0
        p = self.pattern
        while i < len(p):
            ch = p[i]
            if ch == "\\" and i + 1 < len(p):
                out.append(re.escape(p[i + 1]))
                i += 2
                continue
            out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
            i += 1
        return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class And(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not(Expr):
    item: Expr


@dataclass(frozen=True, slots=True)
class OrderItem:
    ref: FieldRef
    descending: bool
    nulls_last: bool


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    sobject: SObjectType
    select: tuple[FieldRef, ...]
    count_only: bool
    where: Expr | None
    order_by: tuple[OrderItem, ...]
    limit: int | None
    offset: int


# ---------------------------------------------------------------------------
# Tokens

_KEYWORDS = frozenset(
    {
        "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "ASC", "DESC",
        "NULLS", "FIRST", "LAST", "LIMIT", "OFFSET", "TRUE", "FALSE", "NULL", "GROUP", "HAVING",
        "INCLUDES", "EXCLUDES", "WITH", "FOR", "USING", "TYPEOF",
    }
)  # fmt: skip

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\w:]))
  | (?P<number>-?\d+(?:\.\d+)?(?![\w.]))
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # keyword, name, string, number, date, datetime, op, punct, eof
    text: str
    pos: int

    @property
    def upper(self) -> str:
        return self.text.upper()


def _tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            bad = text[pos:].split(None, 1)[0]
            if text[pos] == "'":
                raise _error(text, pos, "MALFORMED_QUERY", f"line 1:{pos} mismatched character '<EOF>' expecting '''")
            raise _error(text, pos, "MALFORMED_QUERY", f"unexpected token: '{bad}'")
        kind = m.lastgroup or ""
        if kind != "ws":
            value = m.group()
            if kind == "name" and value.upper() in _KEYWORDS:
                kind = "keyword"
            tokens.append(Token(kind, value, pos))
        pos = m.end()
    tokens.append(Token("eof", "<EOF>", len(text)))
    return tokens


def _error(text: str, pos: int, code: str, detail: str) -> SoqlError:
    row = text.count("\n", 0, pos) + 1
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    col = pos - line_start + 1
    return SoqlError(code, f"\n{line}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n{detail}")


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


# ---------------------------------------------------------------------------
# Literal parsing


def parse_datetime(text: str) -> float:
    """Seconds since the epoch of a SOQL/ISO datetime (Z, +hh:mm, +hhmm; optional millis)."""
    s = text
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    elif re.search(r"[+-]\d{4}$", s):
        s = s[:-2] + ":" + s[-2:]
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_datetime(ts: float) -> str:
    """Salesforce's output form: 2026-01-01T00:00:00.000+0000."""
    text = (_EPOCH + timedelta(milliseconds=round(ts * 1000))).isoformat(timespec="milliseconds")
    return text[:-6] + "+0000"


def _valid_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, text: str, catalog: Catalog) -> None:
        self.text = text
        self.catalog = catalog
        self.tokens = _tokenize(text)
        self.i = 0
        self.sobject: SObjectType | None = None

    # -- token helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        t = self.tokens[self.i]
        if t.kind != "eof":
            self.i += 1
        return t

    def at_keyword(self, *words: str) -> bool:
        return self.tok.kind == "keyword" and self.tok.upper in words

    def unexpected(self, t: Token | None = None) -> SoqlError:
        t = t or self.tok
        return _error(self.text, t.pos, "MALFORMED_QUERY", f"unexpected token: '{t.text}'")

    def expect_keyword(self, word: str) -> Token:
        if not self.at_keyword(word):
            raise self.unexpected()
        return self.advance()

    def expect_punct(self, ch: str) -> Token:
        if not (self.tok.kind == "punct" and self.tok.text == ch):
            raise self.unexpected()
        return self.advance()

    def at_punct(self, ch: str) -> bool:
        return self.tok.kind == "punct" and self.tok.text == ch

    # -- grammar
    def parse(self) -> Query:
        self.expect_keyword("SELECT")
        raw_fields: list[Token] = []
        count_only = False
        if self.tok.kind == "name" and self.tok.upper == "COUNT" and self.tokens[self.i + 1].text == "(":
            self.advance()
            self.expect_punct("(")
            self.expect_punct(")")
            count_only = True
        else:
            while True:
                if self.tok.kind != "name":
                    raise self.unexpected()
                raw_fields.append(self.advance())
                if not self.at_punct(","):
                    break
                self.advance()
        self.expect_keyword("FROM")
        # `Group` (queues, public groups) is an object name here, not GROUP BY
        named = self.tok.kind == "name" or (self.tok.kind == "keyword" and self.tok.upper == "GROUP")
        if not named or "." in self.tok.text:
            raise self.unexpected()
        obj_tok = self.advance()
        sobject = self.catalog.sobject(obj_tok.text)
        if sobject is None:
            raise _error(
                self.text,
                obj_tok.pos,
                "INVALID_TYPE",
                f"sObject type '{obj_tok.text}' is not supported. If you are attempting to use a custom "
                "object, be sure to append the '__c' after the entity name. Please reference your WSDL "
                "or the describe call for the appropriate names.",
            )
        self.sobject = sobject
        select: list[FieldRef] = []
        seen: set[str] = set()
        for t in raw_fields:
            ref = self.field_ref(t)
            key = ref.name.lower()
            if key in seen:
                raise _error(self.text, t.pos, "MALFORMED_QUERY", f"duplicate field selected: {ref.name}")
            seen.add(key)
            select.append(ref)
        where: Expr | None = None
        if self.at_keyword("WHERE"):
            self.advance()
            where = self.condition()
        order: list[OrderItem] = []
        if self.at_keyword("ORDER"):
            self.advance()
            self.expect_keyword("BY")
            while True:
                order.append(self.order_item())
                if not self.at_punct(","):
                    break
                self.advance()
        limit: int | None = None
        offset = 0
        if self.at_keyword("LIMIT"):
            self.advance()
            limit = self.integer()
        if self.at_keyword("OFFSET"):
            self.advance()
            offset = self.integer()
            if offset > 2000:
                raise SoqlError("NUMBER_OUTSIDE_VALID_RANGE", "Maximum SOQL offset allowed is 2000")
        if self.tok.kind != "eof":
            raise self.unexpected()
        return Query(self.text, sobject, tuple(select), count_only, where, tuple(order), limit, offset)

    def integer(self) -> int:
        t = self.tok
        if t.kind != "number" or not t.text.isdigit():
            raise self.unexpected()
        self.advance()
        return int(t.text)

    def order_item(self) -> OrderItem:
        if self.tok.kind != "name":
            raise self.unexpected()
        ref = self.field_ref(self.advance())
        descending = False
        if self.at_keyword("ASC", "DESC"):
            descending = self.advance().upper == "DESC"
        nulls_last = descending
        if self.at_keyword("NULLS"):
            self.advance()
            if not self.at_keyword("FIRST", "LAST"):
                raise self.unexpected()
            nulls_last = self.advance().upper == "LAST"
        return OrderItem(ref, descending, nulls_last)

    def field_ref(self, t: Token) -> FieldRef:
        assert self.sobject is not None
        parts = t.text.split(".")
        obj = self.sobject
        path: list[str] = []
        objects: list[str] = []
        for rel in parts[:-1]:
            ref_field = obj.relationship(rel)
            target = self.catalog.sobject(ref_field.reference_to[0]) if ref_field and ref_field.reference_to else None
            if ref_field is None or target is None or ref_field.relationship_name is None:
                raise _error(
                    self.text,
                    t.pos,
                    "INVALID_FIELD",
                    f"Didn't understand relationship '{rel}' in field path. If you are attempting to use a "
                    "custom relationship, be sure to append the '__r' after the custom relationship name. "
                    "Please reference your WSDL or the describe call for the appropriate names.",
                )
            path.append(ref_field.relationship_name)
            objects.append(obj.name)
            obj = target
        f = obj.get(parts[-1])
        if f is None:
            raise _error(
                self.text,
                t.pos,
                "INVALID_FIELD",
                f"No such column '{parts[-1]}' on entity '{obj.name}'. If you are attempting to use a custom "
                "field, be sure to append the '__c' after the custom field name. Please reference your WSDL "
                "or the describe call for the appropriate names.",
            )
        path.append(f.name)
        objects.append(obj.name)
        return FieldRef(tuple(path), f, tuple(objects))

    def condition(self) -> Expr:
        items = [self.term(first=True)]
        joiner: str | None = None
        while self.at_keyword("AND", "OR"):
            word = self.tok.upper
            if joiner is not None and word != joiner:
                raise self.unexpected()
            joiner = word
            self.advance()
            items.append(self.term(first=False))
        if joiner is None:
            return items[0]
        return And(tuple(items)) if joiner == "AND" else Or(tuple(items))

    def term(self, *, first: bool) -> Expr:
        if self.at_keyword("NOT"):
            if not first:
                raise self.unexpected()
            self.advance()
            return Not(self.term(first=False))
        if self.at_punct("("):
            self.advance()
            inner = self.condition()
            self.expect_punct(")")
            return inner
        return self.simple()

    def simple(self) -> Expr:
        if self.tok.kind != "name":
            raise self.unexpected()
        ftok = self.advance()
        ref = self.field_ref(ftok)
        t = self.tok
        if t.kind == "op":
            self.advance()
            op = {"<>": "!="}.get(t.text, t.text)
            vtok = self.advance()
            value = self.literal(vtok, ref, op)
            return Compare(ref, op, value)
        if self.at_keyword("NOT") or self.at_keyword("IN"):
            negated = self.advance().upper == "NOT"
            if negated:
                self.expect_keyword("IN")
            self.expect_punct("(")
            values: list[Any] = []
            while True:
                values.append(self.literal(self.advance(), ref, "IN"))
                if not self.at_punct(","):
                    break
                self.advance()
            self.expect_punct(")")
            return InList(ref, tuple(values), negated)
        if self.at_keyword("LIKE"):
            self.advance()
            vtok = self.advance()
            if vtok.kind != "string":
                raise self.unexpected(vtok)
            if ref.field.type not in STRING_TYPES and ref.field.type not in ID_TYPES:
                raise _error(
                    self.text, ftok.pos, "INVALID_FIELD",
                    f"invalid operator on {ref.field.type.value} field: {ref.name}"
                )  # fmt: skip
            return Like(ref, self.string_value(vtok, like=True))
        raise self.unexpected()

    def string_value(self, t: Token, *, like: bool = False) -> str:
        body = t.text[1:-1]
        out: list[str] = []
        i = 0
        while i < len(body):
            ch = body[i]
            if ch == "\\":
                nxt = body[i + 1]
                if nxt in _ESCAPES:
                    out.append(_ESCAPES[nxt])
                elif (nxt in "%_" and like) or nxt in "%_":
                    out.append("\\" + nxt)
                else:
                    raise _error(self.text, t.pos, "MALFORMED_QUERY", "Invalid string literal: illegal escape sequence")
                i += 2
                continue
            out.append(ch)
            i += 1
        return "".join(out)

    def literal(self, t: Token, ref: FieldRef, op: str) -> Any:
        ftype = ref.field.type
        if t.kind == "keyword" and t.upper == "NULL":
            if op == "IN":
                return None
            if op not in ("=", "!="):
                raise _error(self.text, t.pos, "MALFORMED_QUERY", f"unexpected token: '{t.text}'")
            return None

        def mismatch(quoted: bool) -> SoqlError:
            word = _TYPE_WORD.get(ftype, "string")
            enclosed = "should be enclosed in quotes" if quoted else "should not be enclosed in quotes"
            return _error(
                self.text, t.pos, "INVALID_FIELD",
                f"value of filter criterion for field '{ref.path[-1]}' must be of type {word} and {enclosed}",
            )  # fmt: skip

        if t.kind in ("op", "punct", "eof") or (t.kind == "keyword" and t.upper not in ("TRUE", "FALSE")):
            raise self.unexpected(t)
        if t.kind == "name":
            raise self.unexpected(t)
        if ftype in ID_TYPES:
            if t.kind != "string":
                raise mismatch(quoted=True)
            raw = self.string_value(t)
            full = sf_ids.normalize(raw)
            if full is None:
                raise _error(self.text, t.pos, "INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {raw}")
            return full
        if ftype in STRING_TYPES:
            if t.kind != "string":
                raise mismatch(quoted=True)
            return self.string_value(t)
        if ftype == FieldType.BOOLEAN:
            if t.kind != "keyword" or t.upper not in ("TRUE", "FALSE"):
                raise mismatch(quoted=False)
            if op not in ("=", "!=", "IN"):
                raise _error(self.text, t.pos, "INVALID_FIELD", f"invalid operator on boolean field: {ref.name}")
            return t.upper == "TRUE"
        if ftype in NUMBER_TYPES:
            if t.kind != "number":
                raise mismatch(quoted=False)
            if ftype == FieldType.INT and "." not in t.text:
                return int(t.text)
            return float(t.text)
        if ftype == FieldType.DATETIME:
            if t.kind != "datetime":
                raise mismatch(quoted=False)
            try:
                return parse_datetime(t.text)
            except ValueError:
                raise _error(self.text, t.pos, "INVALID_FIELD", f"invalid date: {t.text}") from None
        if ftype == FieldType.DATE:
            if t.kind != "date":
                raise mismatch(quoted=False)
            if not _valid_date(t.text):
                raise _error(self.text, t.pos, "INVALID_FIELD", f"invalid date: {t.text}")
            return t.text
        raise mismatch(quoted=False)  # pragma: no cover - every type is handled above


def parse(text: str, catalog: Catalog) -> Query:
    """Parse and type-check `text` against `catalog`; raises SoqlError."""
    if not text or not text.strip():
        raise SoqlError("MALFORMED_QUERY", "unexpected token: '<EOF>'")
    return _Parser(text, catalog).parse()


# ---------------------------------------------------------------------------
# Evaluation

Record = Mapping[str, Any]
Predicate = Callable[[Record], bool]


def getter(ref: FieldRef) -> Callable[[Record], Any]:
    path = ref.path
    if len(path) == 1:
        name = path[0]
        return lambda r: r.get(name)

    def walk(r: Record) -> Any:
        cur: Any = r
        for part in path:
            if cur is None:
                return None
            cur = cur.get(part)
        return cur

    return walk


def _fold(value: Any, ftype: FieldType) -> Any:
    if isinstance(value, str) and ftype in STRING_TYPES:
        return value.casefold()
    return value


def _compare(op: str, ftype: FieldType, lit: Any, get: Callable[[Record], Any]) -> Predicate:
    want = _fold(lit, ftype)
    if op == "=":
        if want is None:
            return lambda r: get(r) is None
        if ftype in STRING_TYPES:
            return lambda r: (v := get(r)) is not None and v.casefold() == want
        return lambda r: get(r) == want
    if op == "!=":
        if want is None:
            return lambda r: get(r) is not None
        if ftype in STRING_TYPES:
            return lambda r: (v := get(r)) is None or v.casefold() != want
        return lambda r: get(r) != want
    fn = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]
    if ftype in STRING_TYPES:
        return lambda r: (v := get(r)) is not None and fn(v.casefold(), want)
    if ftype == FieldType.BOOLEAN:
        raise SoqlError("INVALID_FIELD", "invalid operator on boolean field")
    return lambda r: (v := get(r)) is not None and fn(v, want)


def compile_predicate(expr: Expr | None) -> Predicate:
    """A function telling whether a record matches `expr` (None matches everything)."""
    if expr is None:
        return lambda r: True
    if isinstance(expr, Const):
        value = expr.value
        return lambda r: value
    if isinstance(expr, Compare):
        return _compare(expr.op, expr.ref.field.type, expr.value, getter(expr.ref))
    if isinstance(expr, InList):
        get = getter(expr.ref)
        ftype = expr.ref.field.type
        values = frozenset(_fold(v, ftype) for v in expr.values)
        has_null = None in values
        if ftype in STRING_TYPES:

            def member(r: Record) -> bool:
                v = get(r)
                return has_null if v is None else v.casefold() in values

        else:

            def member(r: Record) -> bool:
                return get(r) in values

        if expr.negated:
            return lambda r: not member(r)
        return member
    if isinstance(expr, Like):
        get = getter(expr.ref)
        rx = expr.regex()
        return lambda r: (v := get(r)) is not None and rx.fullmatch(v) is not None
    if isinstance(expr, And):
        parts = [compile_predicate(e) for e in expr.items]
        return lambda r: all(p(r) for p in parts)
    if isinstance(expr, Or):
        parts = [compile_predicate(e) for e in expr.items]
        return lambda r: any(p(r) for p in parts)
    if isinstance(expr, Not):
        inner = compile_predicate(expr.item)
        return lambda r: not inner(r)
    raise TypeError(f"not an expression: {expr!r}")


def conjuncts(expr: Expr | None) -> list[Expr]:
    """The top-level AND terms of `expr` (one term when it is not an AND)."""
    if expr is None:
        return []
    if isinstance(expr, And):
        out: list[Expr] = []
        for item in expr.items:
            out.extend(conjuncts(item))
        return out
    return [expr]


def simplify(expr: Expr | None, known: Mapping[str, Any]) -> Expr | None:
    """Fold conditions on fields whose value is the same for every candidate record.

    `known` maps top-level canonical field names to that value. Returns None when the
    condition is always true, Const(False) when it is never true.
    """
    if expr is None:
        return None
    folded = _simplify(expr, known)
    if isinstance(folded, Const) and folded.value:
        return None
    return folded


def _simplify(expr: Expr, known: Mapping[str, Any]) -> Expr:
    if isinstance(expr, Compare | InList | Like):
        ref = expr.ref
        if len(ref.path) == 1 and ref.path[0] in known:
            value = known[ref.path[0]]
            return Const(compile_predicate(expr)({ref.path[0]: value}))
        return expr
    if isinstance(expr, And | Or):
        is_and = isinstance(expr, And)
        items: list[Expr] = []
        for item in expr.items:
            s = _simplify(item, known)
            if isinstance(s, Const):
                if s.value != is_and:  # False in an AND, True in an OR decides it
                    return Const(s.value)
                continue
            items.append(s)
        if not items:
            return Const(is_and)
        if len(items) == 1:
            return items[0]
        return And(tuple(items)) if is_and else Or(tuple(items))
    if isinstance(expr, Not):
        inner = _simplify(expr.item, known)
        return Const(not inner.value) if isinstance(inner, Const) else Not(inner)
    return expr


class _Reversed:
    """Inverts the order of a sort-key component (for DESC)."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.v < self.v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and bool(self.v == other.v)

    def __hash__(self) -> int:  # pragma: no cover - keys are only compared
        return hash(self.v)


def sort_key(order_by: Sequence[OrderItem], tie_breaker: str = "Id") -> Callable[[Record], tuple[Any, ...]]:
    """A key function implementing ORDER BY (nulls placement, case-insensitive strings) plus
    a final tie-break on Id so that paging is stable."""
    parts: list[tuple[Callable[[Record], Any], bool, bool, bool]] = []
    for item in order_by:
        parts.append((getter(item.ref), item.descending, item.nulls_last, item.ref.field.type in STRING_TYPES))

    def key(r: Record) -> tuple[Any, ...]:
        out: list[Any] = []
        for get, desc, nulls_last, is_str in parts:
            v = get(r)
            if v is None:
                # nulls group before or after all values, whatever the direction
                out.append((1 if nulls_last else -1, 0))
                continue
            if is_str:
                v = v.casefold()
            out.append((0, _Reversed(v) if desc else v))
        out.append(r.get(tie_breaker) or "")
        return tuple(out)

    return key


# ---------------------------------------------------------------------------
# Output


def format_value(f: Field, value: Any) -> Any:
    if value is None:
        return None
    if f.type == FieldType.DATETIME:
        return format_datetime(float(value))
    if f.type == FieldType.INT:
        return int(value)
    if f.type in (FieldType.DOUBLE, FieldType.CURRENCY, FieldType.PERCENT):
        return float(value)
    return value


def record_url(version: str, sobject: str, record_id: str) -> str:
    return f"/services/data/v{version}/sobjects/{sobject}/{record_id}"


def project(query: Query, record: Record, version: str, fields: Iterable[FieldRef] | None = None) -> dict[str, Any]:
    """The JSON shape of one result record: attributes, then the selected fields in order,
    parents as nested objects (or null when the reference is empty)."""
    sobject = query.sobject.name
    out: dict[str, Any] = {
        "attributes": {"type": sobject, "url": record_url(version, sobject, record["Id"])},
    }
    for ref in fields if fields is not None else query.select:
        if len(ref.path) == 1:
            out[ref.path[0]] = format_value(ref.field, record.get(ref.path[0]))
            continue
        src: Any = record
        dst = out
        for depth, rel in enumerate(ref.path[:-1]):
            src = src.get(rel) if src is not None else None
            if src is None:
                dst.setdefault(rel, None)
                break
            child = dst.get(rel)
            if child is None:
                parent_type = ref.objects[depth + 1]
                child = {"attributes": {"type": parent_type, "url": record_url(version, parent_type, src["Id"])}}
                dst[rel] = child
            dst = child
        else:
            dst[ref.path[-1]] = format_value(ref.field, src.get(ref.path[-1]))
    return out
