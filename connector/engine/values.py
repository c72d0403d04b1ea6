"""Reading what CRMs put in a field: text, numbers, domains, and saying what could not be read.

Every reader returns a value (or None when the field is empty) and a problem
(or None). A problem never stops scoring: the field just counts as unread.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

# What people type when they have nothing to type. Read as "no value".
PLACEHOLDERS: frozenset[str] = frozenset(
    {"n/a", "na", "n.a.", "none", "null", "nil", "nan", "-", "--", "?", "unknown", "tbd", "not available"}
)

_MONEY = r"(?:€|\$|£|eur|usd|gbp|chf|sek|nok|dkk)"
_CURRENCY = re.compile(rf"^{_MONEY}\s*|\s*{_MONEY}$")
_PLAIN = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:[,' ]\d{3})+(?:\.\d+)?$")
_SUFFIX = {"k": 1e3, "m": 1e6, "mm": 1e6, "mio": 1e6, "b": 1e9, "bn": 1e9}
_WITH_SUFFIX = re.compile(r"^([+-]?\d+(?:\.\d+)?)\s*(k|mm|mio|m|bn|b)$")


def show(raw: Any, limit: int = 40) -> str:
    """A value as it appears in a problem: quoted, short, on one line."""
    text = repr(raw)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_text(raw: Any) -> tuple[str | None, str | None]:
    """(text with whitespace collapsed, problem); text is None when the field is empty."""
    kind = type(raw)
    if raw is None:
        return None, None
    if kind is str:
        text = " ".join(raw.split())
        if not text or text.casefold() in PLACEHOLDERS:
            return None, None
        return text, None
    if kind is bool:
        return ("true" if raw else "false"), None
    if kind is int:
        return str(raw), None
    if kind is float:
        if math.isfinite(raw):
            return fmt_number(raw, grouped=False), None
        return None, f"{show(raw)} is not a number"
    return None, f"{show(raw)} is not text"


def as_number(raw: Any) -> tuple[float | None, str | None]:
    """(number, problem). Reads 1200, '1,200', '1 200', '1200+', '€ 25M', '2.5k'."""
    kind = type(raw)
    if raw is None:
        return None, None
    if kind is int or kind is float:
        value = float(raw)
        if math.isfinite(value):
            return value, None
        return None, f"{show(raw)} is not a number"
    if kind is not str:
        return None, f"{show(raw)} is not a number"
    text = raw.strip().casefold()
    if not text:
        return None, None
    number = _parse(text)
    if number is None:
        return None, f"{show(raw)} is not a number"
    return number, None


def _parse(text: str) -> float | None:
    text = _CURRENCY.sub("", text)
    if text.endswith("+"):
        text = text[:-1].rstrip()
    text = text.replace("_", "")
    value: float
    if _PLAIN.match(text):
        value = float(text)
    elif _THOUSANDS.match(text):
        value = float(re.sub(r"[,' ]", "", text))
    else:
        m = _WITH_SUFFIX.match(text)
        if not m:
            return None
        value = float(m.group(1)) * _SUFFIX[m.group(2)]
    return value if math.isfinite(value) else None


def domain_of(text: str, field: str) -> tuple[str | None, str | None]:
    """The lower-case domain of an email address or a website."""
    if field == "email":
        local, at, domain = text.rpartition("@")
        domain = domain.strip().rstrip(".").casefold()
        if not at or not local or "." not in domain or " " in domain:
            return None, f"{show(text)} is not an email address"
        return domain, None
    host = text.casefold()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0].split("?", 1)[0].split(":", 1)[0].rstrip(".")
    if host.startswith("www."):
        host = host[4:]
    if "." not in host or " " in host:
        return None, f"{show(text)} is not a web address"
    return host, None


def fmt_number(value: float, grouped: bool = True) -> str:
    """420, 1,500, 25M, 1.2B: short numbers for a rep to read."""
    a = abs(value)
    if grouped and a >= 1e9:
        return f"{value / 1e9:.3g}B"
    if grouped and a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if value == int(value):
        return f"{int(value):,}" if grouped else str(int(value))
    return f"{value:g}"


def fmt_day(day: int) -> str:
    """The date of a UTC day number (days since 1970-01-01) as 2026-11-14.

    Reasons name dates, not ages ("2d ago"): an age changes every day, so every engaged lead's
    reasons would change daily and the lead be rewritten in the CRM with nothing new to say."""
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    except (OverflowError, OSError, ValueError):
        return "an unreadable date"


def fmt_age(age_s: float) -> str:
    """How long ago, in words a rep reads at a glance (not used in reasons: see fmt_day)."""
    days = int(age_s // 86400)
    if days <= 0:
        return "today"
    if days < 365:
        return f"{days}d ago"
    return f"{days // 365}y ago"
