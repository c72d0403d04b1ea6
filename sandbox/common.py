"""Machinery both sandbox CRM servers share: limits, stats, faults and the gate in front of the API.

`SandboxMiddleware(app, guard=..., stats=..., faults=...)` wraps a Starlette app
(pure ASGI, outermost). For every request outside `/__sandbox__/` it
1. finds the route template ("GET /crm/v3/objects/contacts/{id}") and counts it in `Stats`,
2. draws a fault from `Faults` (an injected 429 or 500 answered in the CRM's own shape
   by `guard.fault`, or a "timeout": the request hangs for `Faults.timeout_s` and then
   gets a 504, which a client with a shorter timeout experiences as a read timeout, or a
   "drop": the request is carried out, then its answer is thrown away and replaced by the
   same hang and 504, so the CRM stored what the client believes failed),
3. asks `guard.admit(...)` (authentication, scopes, rate limits), which either refuses
   with a response or admits with headers added to the answer (rate-limit headers),
4. calls the app.
Each CRM app supplies its own `Guard` (HubSpot's error bodies are not Salesforce's).

`/__sandbox__/stats` (GET), `/__sandbox__/stats/reset` (POST) and
`/__sandbox__/faults` (POST) are answered by the middleware itself; any other
`/__sandbox__/...` path goes to the app, exempt from auth, limits and faults.

`RollingWindow` and `DailyBudget` are the counters behind HubSpot-style limits, `RollingBudget`
Salesforce's rolling 24-hour API allocation, `Clock` the time they go by:
`RollingWindow(max_requests, window_s)` per key (a token, or an account), with
`try_acquire(key) -> (allowed, remaining)`.

`RouteIndex(routes)` finds the route a request matches without trying every route's
regex (a trie over literal path segments picks the few candidates, which are then tried
in their original order, so the answer is the one a full scan gives);
`index_router(app)` makes a Starlette app's router dispatch through one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SANDBOX_PREFIX = "/__sandbox__/"
FAULT_KINDS = ("429", "500", "timeout", "drop")
ROUTE_KEY = "sandbox.route"  # the scope entry holding "METHOD /route/template" for the app
RECORD_FAULT = "record"  # a share of the records in a batch write, failing alone with a temporary error


class JsonResponse(Response):
    """A JSON answer serialised with orjson (what both sandbox apps use)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


# --------------------------------------------------------------------------- limits


class RollingWindow:
    """At most `max_requests` per key in any `window_s` seconds (a sliding log)."""

    def __init__(self, max_requests: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_requests = max_requests
        self.window_s = window_s
        self._clock = clock
        self._log: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def try_acquire(self, key: str) -> tuple[bool, int]:
        """Counts one request when allowed; returns (allowed, remaining after it)."""
        now = self._clock()
        with self._lock:
            log = self._log.get(key)
            if log is None:
                log = self._log[key] = deque()
            edge = now - self.window_s
            while log and log[0] <= edge:
                log.popleft()
            if len(log) >= self.max_requests:
                return False, 0
            log.append(now)
            return True, self.max_requests - len(log)

    def remaining(self, key: str) -> int:
        now = self._clock()
        with self._lock:
            log = self._log.get(key)
            if not log:
                return self.max_requests
            return self.max_requests - sum(1 for t in log if t > now - self.window_s)

    def reset(self) -> None:
        with self._lock:
            self._log.clear()


class Clock:
    """The time a sandbox server's limits and cursors go by: the wall clock plus an offset.

    `advance(seconds)` moves it forward (`POST /__sandbox__/salesforce/clock`, and tests),
    so a rolling 24-hour window or a two-day cursor lifetime can be watched running out
    without waiting. Record timestamps keep the wall clock.
    """

    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self._base = base
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._base() + self._offset

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._offset += max(0.0, float(seconds))
            return self._offset


class RollingBudget:
    """At most `max_requests` per key in any rolling `window_s` (default 24 h).

    Salesforce's daily API allocation is counted this way, not per calendar day: "calls
    are blocked until usage for the preceding 24 hours drops below the limit" (Salesforce
    Help, "System Overview: API Usage"; "API Request Limits and Allocations"). Requests are
    counted in `bucket_s` buckets (a minute by default), so a request leaves the
    window within a minute of its 24th hour: memory stays at most 1,440 counters
    a key whatever the allowance.
    """

    def __init__(
        self,
        max_requests: int,
        window_s: float = 86_400.0,
        *,
        bucket_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_requests = max_requests
        self.window_s = window_s
        self.bucket_s = bucket_s
        self._clock = clock
        self._buckets: dict[str, deque[list[float]]] = {}  # key -> [[bucket start, count], ...] oldest first
        self._totals: dict[str, int] = {}
        self._lock = threading.Lock()

    def _trim(self, key: str, now: float) -> deque[list[float]]:
        buckets = self._buckets.get(key)
        if buckets is None:
            buckets = self._buckets[key] = deque()
            self._totals[key] = 0
        edge = now - self.window_s
        while buckets and buckets[0][0] + self.bucket_s <= edge:
            self._totals[key] -= int(buckets.popleft()[1])
        return buckets

    def _add(self, key: str, now: float, n: int) -> None:
        buckets = self._trim(key, now)
        start = now - now % self.bucket_s
        if buckets and buckets[-1][0] == start:
            buckets[-1][1] += n
        else:
            buckets.append([start, float(n)])
        self._totals[key] += n

    def record(self, key: str, n: int = 1) -> None:
        """Count `n` requests now, allowed or not (an admin setting the usage)."""
        with self._lock:
            self._add(key, self._clock(), n)

    def try_acquire(self, key: str) -> tuple[bool, int]:
        with self._lock:
            now = self._clock()
            self._trim(key, now)
            if self._totals[key] >= self.max_requests:
                return False, 0
            self._add(key, now, 1)
            return True, max(0, self.max_requests - self._totals[key])

    def used(self, key: str) -> int:
        with self._lock:
            self._trim(key, self._clock())
            return self._totals[key]

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._totals.clear()


class DailyBudget:
    """At most `max_requests` per key per calendar day in `zone` (UTC unless given).

    HubSpot's daily limit resets at midnight in the portal's own time zone (the account
    details' `timeZone`), so the sandbox portal's day follows its configured zone.
    """

    def __init__(
        self, max_requests: int, clock: Callable[[], float] = time.time, zone: dt.tzinfo = dt.UTC
    ) -> None:
        self.max_requests = max_requests
        self.zone = zone
        self._clock = clock
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()
        self._day = self._today()
        self._set_bounds(self._day)

    def _today(self, now: float | None = None) -> dt.date:
        return dt.datetime.fromtimestamp(self._clock() if now is None else now, self.zone).date()

    def _set_bounds(self, day: dt.date) -> None:
        start = dt.datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp()
        nxt = day + dt.timedelta(days=1)
        self._day_start = start
        self._day_end = dt.datetime(nxt.year, nxt.month, nxt.day, tzinfo=self.zone).timestamp()

    def _roll(self, now: float) -> None:
        if not self._day_start <= now < self._day_end:
            today = self._today(now)
            self._set_bounds(today)
            if today != self._day:
                self._day = today
                self._used.clear()

    def try_acquire(self, key: str) -> tuple[bool, int]:
        with self._lock:
            self._roll(self._clock())
            used = self._used.get(key, 0)
            if used >= self.max_requests:
                return False, 0
            self._used[key] = used + 1
            return True, self.max_requests - used - 1

    def used(self, key: str) -> int:
        with self._lock:
            self._roll(self._clock())
            return self._used.get(key, 0)

    def resets_at(self) -> float:
        """When the current day ends (epoch seconds): the next midnight in the zone."""
        with self._lock:
            self._roll(self._clock())
            return self._day_end

    def reset(self) -> None:
        with self._lock:
            self._used.clear()


# --------------------------------------------------------------------------- stats and faults


class Stats:
    """Calls by "METHOD /route/template", the total and how many were answered 429."""

    def __init__(self) -> None:
        self._calls: dict[str, int] = {}
        self.total = 0
        self.rate_limited = 0
        self._lock = threading.Lock()

    def count(self, key: str) -> None:
        with self._lock:
            self._calls[key] = self._calls.get(key, 0) + 1
            self.total += 1

    def count_rate_limited(self) -> None:
        with self._lock:
            self.rate_limited += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"total": self.total, "rate_limited": self.rate_limited, "calls": dict(self._calls)}

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self.total = 0
            self.rate_limited = 0


class FaultSpecError(ValueError):
    """A fault specification that cannot be used; the message is one sentence for a user."""


def parse_fault_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """Parse `{"429": 0.2, "500": 0.05, "timeout": 0.02, "seed": 1}` (a mapping, a JSON text, or
    `429=0.2,500=0.05`) into a validated dict; `{}` or "" means no faults.

    Besides the shares of each kind (429, 500, timeout, drop) and `seed` / `timeout_s`:
    `only` limits faults to the requests of these routes (a path such as "POST
    /crm/v3/objects/tasks" or a route template as `/__sandbox__/stats` counts it, or a list
    of them; in the text form separated by `|`), and `max` stops injecting after that many.

    Per-record faults, inside an answer that otherwise succeeds: `record` is the share of
    records in a batch write that fail with the CRM's own temporary per-record error, and
    `records` names record ids that fail so every time (a list; in the text form separated by
    `|`). Each CRM shapes them as its API does (see `Faults.draw_record`'s callers).
    """
    raw: Mapping[str, Any]
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            return {}
        if text.startswith("{"):
            try:
                loaded = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise FaultSpecError(f"the fault specification is not valid JSON ({exc})") from None
            if not isinstance(loaded, dict):
                raise FaultSpecError("the fault specification must be a JSON object")
            raw = loaded
        else:
            pairs: dict[str, Any] = {}
            for part in text.split(","):
                name, sep, value = part.partition("=")
                if not sep or not name.strip():
                    raise FaultSpecError(f"fault '{part.strip()}' should look like 429=0.2")
                pairs[name.strip()] = value.strip().split("|") if name.strip() in ("only", "records") else value.strip()
            raw = pairs
    else:
        raw = spec
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "records":
            ids = [value] if isinstance(value, str | int) else value
            if not isinstance(ids, list | tuple) or not ids or not all(
                isinstance(i, str | int) and str(i).strip() for i in ids
            ):
                raise FaultSpecError("'records' must name record ids such as [\"101\", \"00Q000000000001AAA\"]")
            out[name] = [str(i).strip() for i in ids]
            continue
        if name == "only":
            routes = [value] if isinstance(value, str) else value
            if not isinstance(routes, list | tuple) or not routes or not all(
                isinstance(r, str) and r.strip() for r in routes
            ):
                raise FaultSpecError("'only' must name routes such as \"POST /crm/v3/objects/tasks\"")
            out[name] = [" ".join(r.split()) for r in routes]
            continue
        if name not in (*FAULT_KINDS, RECORD_FAULT, "seed", "timeout_s", "max"):
            raise FaultSpecError(
                f"unknown fault '{name}': use 429, 500, timeout, drop, record, records, seed, timeout_s, only or max"
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FaultSpecError(f"fault '{name}' needs a number, not {value!r}") from None
        if name in (*FAULT_KINDS, RECORD_FAULT) and not 0.0 <= number <= 1.0:
            raise FaultSpecError(f"fault '{name}' must be a share between 0 and 1, not {value}")
        if name == "timeout_s" and number < 0:
            raise FaultSpecError("timeout_s must not be negative")
        if name == "max" and (number < 0 or not number.is_integer()):
            raise FaultSpecError(f"max must be a whole number of faults, not {value}")
        out[name] = number
    if sum(out.get(k, 0.0) for k in FAULT_KINDS) > 1.0 + 1e-9:
        raise FaultSpecError("the fault shares add up to more than 1")
    return out


class Faults:
    """Seeded fault injection: each request draws "429", "500", "timeout", "drop" or None.

    `only` ("METHOD /path" or "METHOD /template") limits the draw to those requests; `max`
    caps the number of faults injected since the last configuration.
    """

    def __init__(self, spec: Mapping[str, Any] | None = None, *, timeout_s: float = 30.0) -> None:
        self.default_timeout_s = timeout_s
        self._lock = threading.Lock()
        self.configure(spec or {})

    def configure(self, spec: Mapping[str, Any]) -> None:
        with self._lock:
            self.shares = {k: float(spec[k]) for k in FAULT_KINDS if spec.get(k)}
            self.timeout_s = float(spec.get("timeout_s", self.default_timeout_s))
            self._rng = random.Random(int(spec.get("seed", 0)))
            only = spec.get("only")
            self.only: frozenset[str] | None = frozenset(only) if only else None
            self.max: int | None = int(spec["max"]) if spec.get("max") is not None else None
            self.record_share = float(spec.get(RECORD_FAULT) or 0.0)
            self.records: frozenset[str] = frozenset(str(i) for i in spec.get("records") or ())
            self.injected = 0

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self.shares)
            if self.record_share:
                out[RECORD_FAULT] = self.record_share
            if self.records:
                out["records"] = sorted(self.records)
            if self.only is not None:
                out["only"] = sorted(self.only)
            if self.max is not None:
                out["max"] = self.max
                out["injected"] = self.injected
            return out

    def draw(self, key: str | None = None, concrete: str | None = None) -> str | None:
        """The fault for one request (`key` "METHOD /template", `concrete` "METHOD /path"), or None."""
        with self._lock:
            if not self.shares:
                return None
            if self.only is not None and key not in self.only and concrete not in self.only:
                return None
            if self.max is not None and self.injected >= self.max:
                return None
            x = self._rng.random()
            edge = 0.0  # request-level kinds only: per-record faults are drawn by draw_record
            for kind, share in self.shares.items():
                edge += share
                if x < edge:
                    self.injected += 1
                    return kind
            return None


    @property
    def per_record(self) -> bool:
        """Whether any per-record fault is configured (a batch handler asks before drawing per record)."""
        return bool(self.record_share or self.records)

    def draw_record(self, record_id: str, key: str | None = None, concrete: str | None = None) -> bool:
        """Whether this record of a batch write fails with a temporary error of its own.

        `key` / `concrete` are the write's route as for `draw`, so `only` and `max` apply too.
        """
        with self._lock:
            if not (self.record_share or self.records):
                return False
            if self.only is not None and key not in self.only and concrete not in self.only:
                return False
            if self.max is not None and self.injected >= self.max:
                return False
            if str(record_id) in self.records or (self.record_share and self._rng.random() < self.record_share):
                self.injected += 1
                return True
            return False


def record_fault(faults: Faults | None, request: Request, record_id: str) -> bool:
    """Whether a record of the batch write `request` fails with a temporary error (see Faults.draw_record)."""
    if faults is None or not faults.per_record:
        return False
    key = request.scope.get(ROUTE_KEY)
    return faults.draw_record(record_id, key, f"{request.method} {request.url.path}")


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True, slots=True)
class Admission:
    """A guard's verdict: a refusal (`response` set) or an admission with extra headers."""

    response: Response | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    rate_limited: bool = False


class Guard(Protocol):
    def admit(self, method: str, template: str, headers: Headers) -> Admission: ...

    def fault(self, kind: str) -> Response:
        """The CRM's own answer for an injected fault: kind is "429", "500" or "timeout" (a 504)."""
        ...


def route_template(routes: Iterable[BaseRoute], scope: Scope) -> str | None:
    """The path template of the route that fully matches (None when no route does)."""
    partial: str | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "?"))
        if match == Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", "?"))
    return partial


class _Node:
    __slots__ = ("here", "literal", "param")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.here: list[int] = []


_NO_MATCH: tuple[Match, BaseRoute | None, Scope] = (Match.NONE, None, {})


class RouteIndex:
    """The routes a request path can match, found through a trie over literal path segments.

    `match(scope)` gives what trying every route in order gives (the first full match, else
    the first partial one: a path that matches with another method), as
    (Match, route or None, child scope), but runs the regexes of the few candidate routes only.
    A segment holding a parameter ("{id}", "v{version}") matches any non-empty segment;
    routes the trie cannot describe (a `path` convertor, mounts, hosts) are tried for every path."""

    def __init__(self, routes: Iterable[BaseRoute]) -> None:
        self.routes = list(routes)
        self._root = _Node()
        self._always: list[int] = []
        for i, route in enumerate(self.routes):
            segments = self._segments(route)
            if segments is None:
                self._always.append(i)
                continue
            node = self._root
            for seg in segments:
                if seg is None:
                    if node.param is None:
                        node.param = _Node()
                    node = node.param
                else:
                    node = node.literal.setdefault(seg, _Node())
            node.here.append(i)

    @staticmethod
    def _segments(route: BaseRoute) -> list[str | None] | None:
        if type(route) is not Route:
            return None
        path = route.path
        if not path.startswith("/") or ":path}" in path:
            return None
        return [None if "{" in seg else seg for seg in path.split("/")]

    def _collect(self, node: _Node, segs: list[str], k: int, out: list[int]) -> None:
        if k == len(segs):
            out.extend(node.here)
            return
        seg = segs[k]
        child = node.literal.get(seg)
        if child is not None:
            self._collect(child, segs, k + 1, out)
        if node.param is not None and seg:
            self._collect(node.param, segs, k + 1, out)

    def candidates(self, scope: Scope) -> list[int]:
        """Indexes (in route order) of the routes that may match; all of them when unsure."""
        if scope.get("root_path"):
            return list(range(len(self.routes)))
        out: list[int] = []
        self._collect(self._root, scope["path"].split("/"), 0, out)
        if self._always:
            out.extend(self._always)
        if len(out) > 1:
            out.sort()
        return out

    def match(self, scope: Scope) -> tuple[Match, BaseRoute | None, Scope]:
        partial: tuple[Match, BaseRoute | None, Scope] | None = None
        routes = self.routes
        for i in self.candidates(scope):
            route = routes[i]
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return match, route, child_scope
            if match is Match.PARTIAL and partial is None:
                partial = (match, route, child_scope)
        return partial or _NO_MATCH

    def template(self, scope: Scope) -> str | None:
        """What `route_template(routes, scope)` answers."""
        _, route, _ = self.match(scope)
        return None if route is None else str(getattr(route, "path", "?"))


def index_router(app: Starlette) -> None:
    """Let `app`'s router find routes through a `RouteIndex` (same routes, order and answers;
    requests no route matches still go through the router's own code: 404s, slash redirects).
    Build the index after the last route is added; a router with its own middleware is left alone."""
    router = app.router
    plain = router.app
    if getattr(router, "middleware_stack", None) != plain:
        return
    index = RouteIndex(router.routes)

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or len(router.routes) != len(index.routes):
            await plain(scope, receive, send)
            return
        _, route, child_scope = index.match(scope)
        if route is None:
            await plain(scope, receive, send)
            return
        if "router" not in scope:
            scope["router"] = router
        scope["route"] = route
        scope.update(child_scope)
        await route.handle(scope, receive, send)

    router.middleware_stack = dispatch


class SandboxMiddleware:
    """Stats, faults, auth and limits in front of a sandbox CRM app; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Iterable[BaseRoute],
        guard: Guard,
        stats: Stats | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.app = app
        self.routes = list(routes)
        self.index = RouteIndex(self.routes)
        self.guard = guard
        self.stats = stats or Stats()
        self.faults = faults or Faults()
        self.on_reset: list[Callable[[], None]] = []
        self._keys: dict[tuple[str, str], str] = {}  # (method, template) -> stats key
        self._names: dict[str, bytes] = {}  # header name -> lower-case latin-1 bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(SANDBOX_PREFIX):
            handled = await self._admin(scope, receive, send)
            if not handled:
                await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        template = self.index.template(scope) or path
        key = self._keys.get((method, template))
        if key is None:
            key = f"{method} {template}"
            if len(self._keys) < 10_000:  # unmatched paths are their own template: keep it bounded
                self._keys[method, template] = key
        self.stats.count(key)
        scope[ROUTE_KEY] = key  # for the app's per-record faults (`record_fault`)
        fault = self.faults.draw(key, f"{method} {path}") if self.faults.shares else None
        if fault == "drop":
            # The CRM does the work; the client never hears of it.
            await self._pass(scope, receive, _discard, method, template)
            await asyncio.sleep(self.faults.timeout_s)
            await self.guard.fault("timeout")(scope, receive, send)
            return
        if fault is not None:
            if fault == "429":
                self.stats.count_rate_limited()
            elif fault == "timeout":
                await asyncio.sleep(self.faults.timeout_s)
            await self.guard.fault(fault)(scope, receive, send)
            return
        await self._pass(scope, receive, send, method, template)

    async def _pass(self, scope: Scope, receive: Receive, send: Send, method: str, template: str) -> None:
        """Through the guard (auth, limits) to the app."""
        admission = self.guard.admit(method, template, Headers(scope=scope))
        if admission.rate_limited:
            self.stats.count_rate_limited()
        if admission.response is not None:
            for name, value in admission.headers.items():
                admission.response.headers[name] = value
            await admission.response(scope, receive, send)
            return
        if not admission.headers:
            await self.app(scope, receive, send)
            return
        names = self._names
        extra: list[tuple[bytes, bytes]] = []
        for k, v in admission.headers.items():
            raw = names.get(k)
            if raw is None:
                raw = names[k] = k.lower().encode("latin-1")
            extra.append((raw, v.encode("latin-1")))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> bool:
        path: str = scope["path"].rstrip("/")
        method: str = scope["method"]
        response: Response
        if path == "/__sandbox__/stats" and method == "GET":
            response = JsonResponse(self.stats.snapshot())
        elif path == "/__sandbox__/stats/reset" and method == "POST":
            self.stats.reset()
            for hook in self.on_reset:
                hook()
            response = JsonResponse(self.stats.snapshot())
        elif path == "/__sandbox__/faults" and method == "POST":
            body = await Request(scope, receive).body()
            try:
                spec = parse_fault_spec(body.decode() if body.strip() else "{}")
            except (FaultSpecError, UnicodeDecodeError) as exc:
                response = JsonResponse({"error": str(exc)}, status_code=400)
            else:
                self.faults.configure(spec)
                response = JsonResponse({"faults": self.faults.as_dict(), "timeout_s": self.faults.timeout_s})
        elif path == "/__sandbox__/faults" and method == "GET":
            response = JsonResponse({"faults": self.faults.as_dict(), "timeout_s": self.faults.timeout_s})
        else:
            return False
        await response(scope, receive, send)
        return True


async def _discard(message: Message) -> None:
    """A `send` that throws the answer away (the "drop" fault)."""


def bearer_token(headers: Headers) -> str | None:
    """The token of an `Authorization: Bearer ...` header (None when absent or malformed)."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


Handler = Callable[[Request], Awaitable[Response]]
