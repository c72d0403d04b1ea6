"""The web process (`leadscore serve`): CRM webhooks in, health and metrics out.

Two listeners in one process:

The public one, 0.0.0.0:$PORT (what the CRMs reach; `build_app`)
    POST /webhooks/hubspot      HubSpot deliveries (signature v3 checked)
    POST /webhooks/salesforce   Salesforce Outbound Messages (answered with the ACK envelope); the
                                endpoint URL must carry ?token=SALESFORCE_WEBHOOK_SECRET
    GET  /healthz               the process is up (answers without touching Redis)

The operator's one, LEADSCORE_METRICS_ADDR (default 127.0.0.1:9464; `build_admin_app`)
    GET  /metrics               Prometheus text format, figures shared by all processes
    GET  /readyz                Redis and the Celery broker answer (503 otherwise)
    GET  /healthz               as above

Metrics and readiness say how busy the connector is and which CRMs it serves, and
each request costs Redis calls: they are not for the internet. Bind the operator's
listener to an address only the monitoring network reaches (or leave it on loopback
behind a local agent). A scrape reads two hashes and a few set sizes, no key scans.

A delivery is answered within milliseconds: it is checked, its events are
claimed and queued in Redis in one call, and at most one drain task per
(crm, stream) is scheduled (see connector/webhooks.py). The rescoring runs in
Celery workers.

HubSpot signs the URL it was configured with. Behind a proxy that terminates
TLS, let uvicorn trust the proxy's X-Forwarded-Proto (FORWARDED_ALLOW_IPS)
so the URL we check is the https one HubSpot signed.

The web process talks to Celery through a dispatcher (`schedule_drain`,
`purge`, `check`); `serve()` uses the Celery one in tasks/realtime.py, tests
may pass their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connector import webhooks
from connector.bootstrap import Runtime
from connector.domain import CrmName
from connector.errors import LeadscoreError
from connector.metrics import Metrics, RedisCollector
from connector.retry import RetrySet
from connector.status import Recorder
from connector.webhooks import Intake, PendingQueue, Rejected

log = logging.getLogger("leadscore.web")

SALESFORCE_UNCONFIGURED = (
    "SALESFORCE_WEBHOOK_SECRET is not set: give the token that ends the Outbound Message's endpoint URL."
)
SALESFORCE_UNCONFIGURED_LOG = (
    "SALESFORCE_WEBHOOK_SECRET is not set: Salesforce outbound messages will be refused (503) until it is."
)
DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - the web process serves the CRMs' webhooks: it must listen beyond loopback
STREAMS: dict[CrmName, tuple[str, ...]] = {"hubspot": ("contact",), "salesforce": ("Lead", "Contact")}


class Dispatcher(Protocol):
    def schedule_drain(self, crm: CrmName, stream: str, delay: float) -> None: ...

    def purge(self, lead_keys: Iterable[str]) -> None: ...

    def check(self) -> str | None: ...


class _State:
    """The runtime and dispatcher, built once on first use (or at start-up)."""

    def __init__(self, runtime_factory: Callable[[], Runtime], dispatcher: Dispatcher | None) -> None:
        self._factory = runtime_factory
        self._dispatcher = dispatcher
        self._lock = threading.Lock()
        self._rt: Runtime | None = None
        self._queue: PendingQueue | None = None
        self._metrics: Metrics | None = None
        self._score_props: frozenset[str] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector: Collector | None = None

    @property
    def rt(self) -> Runtime:
        if self._rt is None:
            with self._lock:
                if self._rt is None:
                    rt = self._factory()
                    self._queue = PendingQueue(rt.redis, rt.namespace)
                    self._metrics = Metrics(rt.redis, rt.namespace)
                    self._collector = _Collectors(RedisCollector(self._metrics), _PendingCollector(self._queue),
                                                  _RetryCollector(RetrySet(rt.redis, rt.namespace)))
                    self.registry.register(self._collector)
                    self._rt = rt
        return self._rt

    @property
    def queue(self) -> PendingQueue:
        _ = self.rt
        assert self._queue is not None
        return self._queue

    @property
    def metrics(self) -> Metrics:
        _ = self.rt
        assert self._metrics is not None
        return self._metrics

    @property
    def score_properties(self) -> frozenset[str]:
        if self._score_props is None:
            self._score_props = webhooks.score_properties(self.rt)
        return self._score_props

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            with self._lock:
                if self._dispatcher is None:
                    from tasks.realtime import CeleryDispatcher  # the web process's one link to Celery

                    self._dispatcher = CeleryDispatcher(self.rt.settings.redis_url)
        return self._dispatcher


class _Collectors(Collector):
    def __init__(self, *parts: Collector) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Any]:
        for part in self.parts:
            yield from part.collect()


class _PendingCollector(Collector):
    def __init__(self, queue: PendingQueue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "leadscore_realtime_pending", "Record ids waiting for a real-time rescore.", labels=["crm", "stream"]
        )
        for crm, streams in STREAMS.items():
            for stream in streams:
                family.add_metric([crm, stream], self.queue.pending(crm, stream))
        yield family


class _RetryCollector(Collector):
    """Per stream, records not written yet (connector/retry.py) and how long the oldest has waited."""

    def __init__(self, retries: RetrySet) -> None:
        self.retries = retries

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily(
            "leadscore_retry_waiting", "Records not written yet, kept to be written again, by stream.",
            labels=["crm", "stream"],
        )
        behind = GaugeMetricFamily(
            "leadscore_retry_behind_seconds",
            "How long the oldest record waiting to be written again has waited (0 when none waits), by stream.",
            labels=["crm", "stream"],
        )
        now = time.time()
        holding = set(self.retries.streams())  # one read while nothing waits; two more per stream that does
        for crm, streams in STREAMS.items():
            for stream in streams:
                b = self.retries.behind(crm, stream) if (crm, stream) in holding else None
                waiting.add_metric([crm, stream], b.waiting if b else 0)
                behind.add_metric([crm, stream], round(b.seconds(now), 1) if b else 0.0)
        yield waiting
        yield behind


def build_app(runtime_factory: Callable[[], Runtime], *, dispatcher: Dispatcher | None = None) -> Starlette:
    """The public web app (webhooks, /healthz). `runtime_factory` is called once, on start-up or the first request.

    `build_admin_app(app)` gives the operator's app (metrics, readiness) over the same state.
    """
    state = _State(runtime_factory, dispatcher)

    def reject(crm: CrmName, exc: Rejected) -> None:
        state.metrics.incr("webhook_deliveries", crm=crm, outcome="rejected")
        Recorder(state.rt.redis, state.rt.namespace).webhook(crm, "rejected", time.time())
        state.metrics.incr("webhook_rejections", crm=crm, reason=exc.reason)
        log.warning("webhook rejected", extra={"event": "webhook_rejected", "crm": crm, "reason": exc.reason})

    def enqueue(intake: Intake) -> dict[str, int]:
        """Claim and queue the events of an accepted delivery; schedule drains. Raises Rejected(503)."""
        crm = intake.crm
        items: list[tuple[str, str | None, str]] = [(e, s, r) for e, s, r in intake.rescores]
        items += [(e, None, key) for e, key in intake.purges]
        flags = state.queue.accept(crm, items, time.time())
        to_schedule = sorted({s for (_, s, _), f in zip(items, flags, strict=True) if f == 2 and s is not None})
        purges = [r for (_, s, r), f in zip(items, flags, strict=True) if f and s is None]
        try:
            for stream in to_schedule:
                state.dispatcher.schedule_drain(crm, stream, webhooks.SCHEDULE_DELAY_S)
            if purges:
                state.dispatcher.purge(purges)
        except Exception as exc:
            # Let the CRM's retry through: forget the claims of this delivery (the ids stay pending).
            state.queue.unclaim(crm, [items[i][0] for i, f in enumerate(flags) if f], to_schedule)
            log.exception("could not enqueue", extra={"event": "webhook_enqueue_failed", "crm": crm})
            raise Rejected(503, "broker", "the task queue is unreachable; try again later.") from exc
        accepted = sum(1 for f in flags if f)
        counts = {"accepted": accepted, "deduplicated": len(flags) - accepted, "ignored": intake.ignored}
        state.metrics.incr("webhook_deliveries", crm=crm, outcome="accepted")
        Recorder(state.rt.redis, state.rt.namespace).webhook(crm, "accepted", time.time())
        for outcome, n in counts.items():
            state.metrics.incr("webhook_events", n, crm=crm, outcome=outcome)
        return counts

    def hubspot_work(method: str, uri: str, body: bytes, headers: dict[str, str]) -> dict[str, int]:
        secret = state.rt.settings.hubspot_webhook_secret
        if not secret:
            raise Rejected(503, "unconfigured", "HUBSPOT_WEBHOOK_SECRET is not set: give the app's client secret.")
        webhooks.verify_hubspot_v3(
            secret, method, uri, body,
            headers.get(webhooks.HUBSPOT_TIMESTAMP_HEADER.lower()),
            headers.get(webhooks.HUBSPOT_SIGNATURE_HEADER.lower()),
            time.time(),
        )  # fmt: skip
        intake = webhooks.parse_hubspot_delivery(body, state.score_properties)
        return enqueue(intake)

    async def hubspot(request: Request) -> Response:
        body = await _body(request)
        try:
            if body is None:
                raise Rejected(413, "too_large", "the body is larger than a webhook delivery can be.")
            headers = {k.lower(): v for k, v in request.headers.items()}
            counts = await run_in_threadpool(hubspot_work, request.method, str(request.url), body, headers)
        except Rejected as exc:
            await run_in_threadpool(reject, "hubspot", exc)
            return JSONResponse({"status": "error", "message": exc.message}, status_code=exc.status)
        return JSONResponse({"status": "ok", **counts})

    def salesforce_work(body: bytes) -> dict[str, int]:
        message = webhooks.parse_outbound_message(body)
        expected = state.rt.settings.salesforce_org_id
        if expected and not webhooks.same_org(expected, message.organization_id):
            raise Rejected(403, "organization", "the message comes from another Salesforce org than SALESFORCE_ORG_ID.")
        return enqueue(webhooks.drop_echoes(state.rt, message.intake))

    def salesforce_token(given: str | None) -> None:
        """Outbound Messages carry no signature: the endpoint URL's token is the secret (compared in constant time)."""
        secret = state.rt.settings.salesforce_webhook_secret
        if not secret:
            raise Rejected(503, "unconfigured", SALESFORCE_UNCONFIGURED)
        if not given or not hmac.compare_digest(given.encode(), secret.encode()):
            raise Rejected(
                401, "token", "the endpoint URL lacks the right token (?token=SALESFORCE_WEBHOOK_SECRET)."
            )

    async def salesforce(request: Request) -> Response:
        try:
            # Checked before the body is read: nothing from a stranger is parsed.
            await run_in_threadpool(salesforce_token, request.query_params.get("token"))
            body = await _body(request)
            if body is None:
                raise Rejected(413, "too_large", "the body is larger than an outbound message can be.")
            await run_in_threadpool(salesforce_work, body)
        except Rejected as exc:
            await run_in_threadpool(reject, "salesforce", exc)
            code = "soapenv:Server" if exc.status >= 500 else "soapenv:Client"
            return Response(webhooks.soap_fault(exc.message, code), status_code=exc.status, media_type="text/xml")
        return Response(webhooks.ACK_SOAP, media_type="text/xml")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        await run_in_threadpool(lambda: state.rt)
        yield

    routes = [
        Route("/webhooks/hubspot", hubspot, methods=["POST"]),
        Route("/webhooks/salesforce", salesforce, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.leadscore = state
    return app


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_admin_app(public: Starlette) -> Starlette:
    """The operator's app: /metrics, /readyz and /healthz, over the public app's runtime and registry."""
    state: _State = public.state.leadscore

    def readiness() -> dict[str, str]:
        problems: dict[str, str] = {}
        try:
            state.rt.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            problems["redis"] = f"unreachable ({type(exc).__name__})"
        try:
            why = state.dispatcher.check()
        except Exception as exc:  # noqa: BLE001
            why = f"unreachable ({type(exc).__name__})"
        if why:
            problems["broker"] = why
        return problems

    async def readyz(request: Request) -> Response:
        problems = await run_in_threadpool(readiness)
        if problems:
            return JSONResponse({"status": "unavailable", **problems}, status_code=503)
        return JSONResponse({"status": "ok", "redis": "ok", "broker": "ok"})

    def scrape() -> bytes:
        _ = state.rt
        return generate_latest(state.registry)

    async def metrics(request: Request) -> Response:
        try:
            payload = await run_in_threadpool(scrape)
        except Exception as exc:  # noqa: BLE001 - a scrape without Redis answers 503, not a traceback
            log.warning("metrics unavailable", extra={"event": "metrics_failed", "why": type(exc).__name__})
            return Response(f"metrics unavailable: {type(exc).__name__}\n", status_code=503, media_type="text/plain")
        return Response(payload, media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.leadscore = state
    return app


async def _body(request: Request) -> bytes | None:
    """The raw body (signatures cover its exact bytes), or None when it is too large."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > webhooks.MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > webhooks.MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves signals to `_serve_all`, so one SIGTERM stops every listener."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_all(servers: list[tuple[_Listener, socket.socket]]) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server, _ in servers:
            server.force_exit = server.should_exit  # a second signal: do not wait for open connections
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop()  # one listener ended: end the others
    await asyncio.gather(*tasks)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def serve() -> int:
    """`leadscore serve`: webhooks on 0.0.0.0:$PORT (default 8000), metrics and readiness on
    LEADSCORE_METRICS_ADDR (default 127.0.0.1:9464), until stopped."""
    from connector.bootstrap import build_runtime
    from connector.config import load_settings
    from connector.logs import configure as configure_logs

    try:
        settings = load_settings()
        configure_logs(settings=settings)
        runtime = build_runtime(settings)
        runtime.redis.ping()
    except LeadscoreError as exc:
        sys.stderr.write(f"leadscore serve: {exc}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - one sentence for the operator, not a traceback
        sys.stderr.write(f"leadscore serve: cannot reach Redis at REDIS_URL ({type(exc).__name__}).\n")
        return 1
    if not settings.hubspot_webhook_secret:
        log.warning("HUBSPOT_WEBHOOK_SECRET is not set: HubSpot deliveries will be answered 503")
    if not settings.salesforce_webhook_secret:
        log.warning(SALESFORCE_UNCONFIGURED_LOG)
    app = build_app(lambda: runtime)
    admin_host, admin_port = settings.metrics_bind
    listeners: list[tuple[_Listener, socket.socket]] = []
    try:
        for what, host, port, asgi, extra in (
            ("webhooks", DEFAULT_HOST, settings.web_port, app, {"proxy_headers": True}),
            ("metrics", admin_host, admin_port, build_admin_app(app), {"lifespan": "off"}),
        ):
            try:
                sock = _bind(host, port)
            except OSError as exc:
                name = "PORT" if what == "webhooks" else "LEADSCORE_METRICS_ADDR"
                sys.stderr.write(
                    f"leadscore serve: cannot listen for {what} on {host}:{port} ({exc.strerror or exc}); "
                    f"set {name} to a free one.\n"
                )
                return 1
            config = uvicorn.Config(
                asgi, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=5,
                log_config=None,  # uvicorn's records go through our handler (connector/logs.py): JSON, redacted
                **extra,
            )
            listeners.append((_Listener(config), sock))
        log.info(
            f"listening for webhooks on {DEFAULT_HOST}:{settings.web_port}, for metrics and readiness on "
            f"{admin_host}:{admin_port}",
            extra={"event": "listening"},
        )
        asyncio.run(_serve_all(listeners))
    except SystemExit as exc:  # uvicorn exits this way when the app cannot start
        sys.stderr.write(f"leadscore serve: the web process could not start ({exc}).\n")
        return 1
    finally:
        for _, sock in listeners:
            sock.close()
        runtime.close()
    return 0


__all__ = ["Dispatcher", "build_admin_app", "build_app", "serve"]
