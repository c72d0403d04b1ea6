"""Counters and histograms kept in Redis, so every process adds to the same figures.

Workers run in other processes (and on other machines) than the web process
that serves `/metrics`, so the figures live in Redis: `Metrics.incr` and
`Metrics.observe` add to two hashes, and `RedisCollector` (a prometheus_client
custom collector) reads them back when Prometheus scrapes the web process.

Names are given without the `leadscore_` prefix and without `_total`; the
collector adds both. A name keeps one set of label names (the collector fills
a missing one with ""). The names the connector uses are listed in `KNOWN`
with their help text; others are exported too, with a generic help line.

Recording never raises: a metric that cannot be written is logged and
dropped, because no sync or webhook may fail over a counter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import redis
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from connector.redisutil import text as _text

log = logging.getLogger("leadscore.metrics")

PREFIX = "leadscore_"

# Upper bounds in seconds; the last bucket (+Inf) is implicit.
BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

# name -> (type, help). Counters are exported as leadscore_<name>_total.
KNOWN: dict[str, tuple[str, str]] = {
    "syncs": ("counter", "Sync runs finished, by CRM and status (done, failed, skipped)."),
    "pages": (
        "counter",
        "Sync pages processed, by CRM, stream and outcome (ok, failed, deferred: its records went to the retry set).",
    ),
    "records_scored": ("counter", "Records scored, by CRM and path (sync, realtime)."),
    "records_written": ("counter", "Records whose scores were written back, by CRM and path (sync, realtime)."),
    "api_calls": ("counter", "HTTP calls made to a CRM API (retries included), by CRM."),
    "api_rate_limited": ("counter", "Answers 429 (rate limited) received from a CRM API, by CRM."),
    "assignments": ("counter", "Hot leads assigned to a rep, by CRM and region."),
    "webhook_deliveries": ("counter", "Webhook deliveries received, by CRM and outcome (accepted, rejected)."),
    "webhook_rejections": ("counter", "Webhook deliveries rejected, by CRM and reason."),
    "webhook_events": (
        "counter",
        "Events in accepted deliveries, by CRM and outcome (accepted, deduplicated, ignored).",
    ),
    "realtime_rescored": ("counter", "Records rescored by the real-time path, by CRM."),
    "realtime_requeued": ("counter", "Record ids put back for a later rescore after a failed drain, by CRM."),
    "realtime_dropped": ("counter", "Record ids given up after repeated unexpected failures, by CRM."),
    "purges": ("counter", "Records whose stored data was purged after a deletion webhook, by CRM."),
    "task_seconds": ("histogram", "Time Celery tasks took to run, by task name."),
    "realtime_lag_seconds": (
        "histogram",
        "Time from a webhook's acceptance to the record's rescore being done, by CRM.",
    ),
}

_SEP = "\x1f"


def _field(name: str, labels: Mapping[str, Any]) -> str:
    return name + _SEP + orjson.dumps({k: str(v) for k, v in labels.items()}, option=orjson.OPT_SORT_KEYS).decode()


def _split(field: str) -> tuple[str, dict[str, str]]:
    name, _, raw = field.partition(_SEP)
    labels: dict[str, str] = orjson.loads(raw) if raw else {}
    return name, labels


class Metrics:
    """Add to the shared figures: `incr("records_written", 12, crm="hubspot")`."""

    def __init__(self, client: redis.Redis, namespace: str = "leadscore") -> None:
        self.r = client
        self.counters_key = f"{namespace}:metrics:counters"
        self.histograms_key = f"{namespace}:metrics:histograms"

    def incr(self, name: str, n: int = 1, **labels: Any) -> None:
        if n == 0:
            return
        try:
            self.r.hincrby(self.counters_key, _field(name, labels), int(n))
        except redis.RedisError as exc:
            log.warning("metric not recorded", extra={"event": "metric_lost", "metric": name, "why": str(exc)})

    def observe(self, name: str, seconds: float, **labels: Any) -> None:
        if not math.isfinite(seconds):
            return
        seconds = max(0.0, seconds)
        bucket = next((i for i, le in enumerate(BUCKETS) if seconds <= le), len(BUCKETS))
        base = _field(name, labels)
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(self.histograms_key, f"{base}{_SEP}{bucket}", 1)
            pipe.hincrbyfloat(self.histograms_key, f"{base}{_SEP}sum", seconds)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("metric not recorded", extra={"event": "metric_lost", "metric": name, "why": str(exc)})

    def counters(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
        """Every counter as {(name, sorted labels): value}; for tests and the collector."""
        raw: dict[Any, Any] = self.r.hgetall(self.counters_key)  # type: ignore[assignment]
        out: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        for field, value in raw.items():
            name, labels = _split(_text(field))
            out[(name, tuple(sorted(labels.items())))] = int(_text(value))
        return out

    def value(self, name: str, **labels: Any) -> int:
        """One counter's value (0 when never incremented)."""
        raw = self.r.hget(self.counters_key, _field(name, labels))
        return int(_text(raw)) if raw is not None else 0

    def histograms(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], tuple[list[int], float]]:
        """Every histogram as {(name, sorted labels): (count per bucket incl. +Inf, sum)}."""
        raw: dict[Any, Any] = self.r.hgetall(self.histograms_key)  # type: ignore[assignment]
        out: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[list[int], float]] = {}
        for field, value in raw.items():
            base, _, part = _text(field).rpartition(_SEP)
            name, labels = _split(base)
            key = (name, tuple(sorted(labels.items())))
            counts, total = out.get(key, ([0] * (len(BUCKETS) + 1), 0.0))
            if part == "sum":
                total = float(_text(value))
            elif part.isdigit() and int(part) <= len(BUCKETS):
                counts[int(part)] = int(_text(value))
            out[key] = (counts, total)
        return out


class RedisCollector(Collector):
    """Exports the shared figures in Prometheus's text format (register it on a CollectorRegistry)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        by_name: dict[str, list[tuple[dict[str, str], int]]] = {}
        for (name, pairs), value in sorted(self.metrics.counters().items()):
            by_name.setdefault(name, []).append((dict(pairs), value))
        for name, series in by_name.items():
            names = sorted({k for labels, _ in series for k in labels})
            family = CounterMetricFamily(PREFIX + name, _help(name), labels=names)
            for labels, value in series:
                family.add_metric([labels.get(k, "") for k in names], value)
            yield family
        hist_by_name: dict[str, list[tuple[dict[str, str], list[int], float]]] = {}
        for (name, pairs), (counts, total) in sorted(self.metrics.histograms().items()):
            hist_by_name.setdefault(name, []).append((dict(pairs), counts, total))
        for name, hseries in hist_by_name.items():
            names = sorted({k for labels, _, _ in hseries for k in labels})
            hfamily = HistogramMetricFamily(PREFIX + name, _help(name), labels=names)
            for labels, counts, total in hseries:
                cumulative: list[tuple[str, float]] = []
                running = 0
                for le, count in zip((*BUCKETS, math.inf), counts, strict=True):
                    running += count
                    cumulative.append(("+Inf" if le == math.inf else repr(le), running))
                hfamily.add_metric([labels.get(k, "") for k in names], cumulative, total)
            yield hfamily


def _help(name: str) -> str:
    known = KNOWN.get(name)
    return known[1] if known else f"{name} (recorded by the connector)."




__all__ = ["BUCKETS", "KNOWN", "Metrics", "RedisCollector"]
