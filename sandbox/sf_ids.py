"""Salesforce-style record ids for the sandbox, derived from indexes.

A real id is 15 case-sensitive characters (a 3-character key prefix naming the
object, 2 for the instance, 1 reserved, 9 for the record) plus a 3-character
suffix that encodes which of the first 15 are upper case, so that the 18-character
form survives case-insensitive systems. The sandbox builds the record part from a
number in base 62 with a fixed width; the digits are in ASCII order, so ids of
one object sort the same way their numbers do.
"""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGIT = {c: i for i, c in enumerate(ALPHABET)}
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_POD = "8d0"  # instance (2) + reserved (1)
_WIDTH = 9
MAX_NUMBER = 62**_WIDTH - 1

LEAD = "00Q"
CONTACT = "003"
ACCOUNT = "001"
TASK = "00T"
EVENT = "00U"
CAMPAIGN_MEMBER = "00v"
CAMPAIGN = "701"
USER = "005"
GROUP = "00G"  # a Group; Queues are Groups of Type Queue
ASSIGNMENT_RULE = "01Q"
OPPORTUNITY = "006"
OPPORTUNITY_CONTACT_ROLE = "00K"
ORG = "00D"
BULK_JOB = "750"


_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]  # two base-62 digits at a time


def _suffix(id15: str) -> str:
    out = []
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        bits = 0
        for pos, ch in enumerate(chunk):
            if ch in _UPPER:
                bits |= 1 << pos
        out.append(_SUFFIX[bits])
    return "".join(out)


def make_id(prefix: str, number: int) -> str:
    """The 18-character id of record `number` of the object with key `prefix`."""
    if not 0 <= number <= MAX_NUMBER:
        raise ValueError(f"record number out of range: {number}")
    rest, d4 = divmod(number, 3844)
    rest, d3 = divmod(rest, 3844)
    rest, d2 = divmod(rest, 3844)
    d0, d1 = divmod(rest, 3844)
    id15 = prefix + _POD + ALPHABET[d0] + _PAIRS[d1] + _PAIRS[d2] + _PAIRS[d3] + _PAIRS[d4]
    return id15 + _suffix(id15)


def normalize(value: str) -> str | None:
    """The 18-character form of a 15- or 18-character id; None when it is not one."""
    if len(value) == 15:
        if not all(c in _DIGIT for c in value):
            return None
        return value + _suffix(value)
    if len(value) == 18:
        head = value[:15]
        if not all(c in _DIGIT for c in head) or _suffix(head) != value[15:].upper():
            return None
        return head + _suffix(head)
    return None


def parse(value: str) -> tuple[str, int] | None:
    """(key prefix, record number) of a sandbox id, or None when it is not one."""
    full = normalize(value)
    if full is None or full[3:6] != _POD:
        return None
    number = 0
    for ch in full[6:15]:
        number = number * 62 + _DIGIT[ch]
    return full[:3], number
