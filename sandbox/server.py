"""Runs the sandbox CRM: HubSpot over HTTP and Salesforce over HTTPS on 127.0.0.1.

In a test:

    with Sandbox.start(contacts=500, seed=1) as sb:
        client = HubSpot(access_token=sb.hubspot_token, host=sb.hubspot_url)

`Sandbox.start(..., in_thread=True)` serves both apps from one background thread's
event loop; `in_thread=False` starts `python -m sandbox.server` (what
`leadscore sandbox` runs) in its own process, reads its JSON start-up line and
stops it on `stop()`; benchmarks use that so the sandbox gets its own core.
`main(argv)` is the `leadscore sandbox` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import trustme
import uvicorn
from starlette.types import ASGIApp

from sandbox import hubspot, salesforce
from sandbox.common import FaultSpecError, index_router, parse_fault_spec
from sandbox.csv_import import CsvImportError, import_csv
from sandbox.data import Population, Store
from sandbox.webhooks import WebhookEmitter

SALESFORCE_ORG_ID = "00D8d0000000001EAA"
DEFAULT_CONTACTS = 1000
DEFAULT_SEED = 1
MAX_CONTACTS = 50_000_000


class SandboxError(RuntimeError):
    """The sandbox could not start; the message is one sentence for a user."""


@dataclass
class SandboxOptions:
    contacts: int = DEFAULT_CONTACTS
    seed: int = DEFAULT_SEED
    hubspot_rate: int = hubspot.DEFAULT_RATE
    hubspot_daily: int = hubspot.DEFAULT_DAILY
    search_rate: int = hubspot.DEFAULT_SEARCH_RATE
    port: int = 0
    anchor: float | None = None
    faults: Mapping[str, float] = field(default_factory=dict)
    timeout_s: float = 30.0
    salesforce_daily: int = 100_000
    hubspot_timezone: str = hubspot.DEFAULT_TIMEZONE  # the portal's zone: its daily limit resets at midnight there
    search_lag_s: float = hubspot.DEFAULT_SEARCH_LAG_S[1]  # a contact write shows up in search within this
    association_page_size: int = hubspot.ASSOC_PAGE_SIZE  # associations per input of a v4 batch read
    hubspot_tier: str = "enterprise"  # the portal's subscription tier: the events API needs enterprise
    import_file: str | None = None  # a CSV export: its rows are the HubSpot contacts instead of generated people

    def validate(self) -> None:
        if not 0 <= self.contacts <= MAX_CONTACTS:
            raise SandboxError(f"--contacts must be between 0 and {MAX_CONTACTS:,}, not {self.contacts}")
        if not 0 <= self.port <= 65534:
            raise SandboxError(f"--port must be between 0 and 65534 (Salesforce uses port + 1), not {self.port}")
        if self.hubspot_rate < 1:
            raise SandboxError(f"--hubspot-rate must be at least 1 request per 10 seconds, not {self.hubspot_rate}")
        if self.hubspot_daily < 1:
            raise SandboxError(f"the HubSpot daily budget must be at least 1, not {self.hubspot_daily}")
        if self.hubspot_tier not in hubspot.TIERS:
            raise SandboxError(f"--hubspot-tier must be one of {', '.join(hubspot.TIERS)}, not {self.hubspot_tier!r}")
        if self.association_page_size < 1:
            raise SandboxError(f"the association page size must be at least 1, not {self.association_page_size}")
        if not 0 <= self.search_lag_s <= 3600:
            raise SandboxError(f"--search-lag must be between 0 and 3600 seconds, not {self.search_lag_s}")
        try:
            ZoneInfo(self.hubspot_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SandboxError(
                f"--hubspot-timezone must be a time zone name like America/New_York, not {self.hubspot_timezone!r}"
            ) from None


def _tokens(seed: int) -> tuple[str, str]:
    return f"pat-sandbox-{seed:x}-0c3f9a52-7d1e", f"00D8d0000000001!sandbox.{seed:x}.9b7e4d21"


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise SandboxError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror})") from None
    # accepted sockets inherit this; without it Nagle + delayed ACKs add ~40 ms to every answer
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _bind_pair(port: int) -> tuple[socket.socket, socket.socket]:
    """HubSpot on `port`, Salesforce on `port + 1`; with port 0, any free pair (not necessarily adjacent)."""
    if port:
        first = _bind(port)
        try:
            return first, _bind(port + 1)
        except SandboxError:
            first.close()
            raise
    return _bind(0), _bind(0)


def _salesforce_app(
    population: Population, store: Store, token: str, opts: SandboxOptions, webhooks: WebhookEmitter | None = None
) -> ASGIApp:
    app = salesforce.build_app(
        population,
        store,
        token,
        org_id=SALESFORCE_ORG_ID,
        limits={"daily": opts.salesforce_daily},
        faults=opts.faults,
        timeout_s=opts.timeout_s,
        webhooks=webhooks,
    )
    index_router(app)
    return app


# --------------------------------------------------------------------------- serving


class _CoalescingTransport:
    """What an HTTP protocol writes in one event-loop step, sent with one write.

    uvicorn writes a response's head and its body separately; on loopback each write is a
    send() that wakes the client, so one answer cost two. The bytes are the same; everything
    but writing is the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def _flush(self) -> None:
        pending = self._pending
        if pending:
            self._pending = []
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(b) for b in self._pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (httptools when installed, else h11) writing through `_CoalescingTransport`."""
    base: type[Any]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class Protocol(base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    return Protocol


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _Servers:
    """Both uvicorn servers on one event loop, with the TLS material they need."""

    def __init__(self, opts: SandboxOptions) -> None:
        opts.validate()
        self.opts = opts
        # with --import, the CSV's rows are the only people (HubSpot contacts; Salesforce is empty)
        self.population = Population(0 if opts.import_file else opts.contacts, opts.seed, opts.anchor)
        self.hubspot_store = Store()
        self.salesforce_store = Store()
        self.hubspot_token, self.salesforce_token = _tokens(opts.seed)
        self.webhooks = WebhookEmitter(portal_id=hubspot.PORTAL_ID, org_id=SALESFORCE_ORG_ID)
        self.hubspot_app = hubspot.build_app(
            self.population,
            self.hubspot_store,
            self.hubspot_token,
            rate=opts.hubspot_rate,
            daily=opts.hubspot_daily,
            search_rate=opts.search_rate,
            faults=opts.faults,
            timeout_s=opts.timeout_s,
            webhooks=self.webhooks,
            portal=hubspot.Portal(time_zone=opts.hubspot_timezone, tier=opts.hubspot_tier),
            search_lag_s=(0.0, opts.search_lag_s),
            association_page_size=opts.association_page_size,
        )
        self.import_summary: str | None = None
        if opts.import_file:
            try:
                summary = import_csv(self.hubspot_app.state.crm, opts.import_file)
            except CsvImportError as exc:
                raise SandboxError(str(exc).rstrip(".")) from None
            self.import_summary = summary.line()
        self.salesforce_app = _salesforce_app(
            self.population, self.salesforce_store, self.salesforce_token, opts, self.webhooks
        )
        self.tmp = Path(tempfile.mkdtemp(prefix="leadscore-sandbox-"))
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_cert = str(self.tmp / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_cert)
        cert_file, key_file = self.tmp / "cert.pem", self.tmp / "key.pem"
        cert.private_key_pem.write_to_path(str(key_file))
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(str(cert_file), append=True)
        self.hs_sock, self.sf_sock = _bind_pair(opts.port)
        self.hubspot_url = f"http://127.0.0.1:{self.hs_sock.getsockname()[1]}"
        self.salesforce_url = f"https://127.0.0.1:{self.sf_sock.getsockname()[1]}"
        self.webhooks.salesforce_url = self.salesforce_url
        common = {
            "log_level": "warning",
            "lifespan": "off",
            "access_log": False,
            "timeout_graceful_shutdown": 1,
            "http": _http_protocol(),
            "proxy_headers": False,  # nothing stands in front of the sandbox
        }
        self.servers = [uvicorn.Server(uvicorn.Config(self.hubspot_app, **common))]  # type: ignore[arg-type]
        self.sockets = [self.hs_sock]
        self.servers.append(
            uvicorn.Server(
                uvicorn.Config(
                    self.salesforce_app,
                    ssl_certfile=str(cert_file),
                    ssl_keyfile=str(key_file),
                    # SOQL IN-lists make long URLs: let Salesforce's own 16 KB limit (414) be what answers
                    h11_max_incomplete_event_size=64 * 1024,
                    **common,  # type: ignore[arg-type]
                )
            )
        )
        self.sockets.append(self.sf_sock)
        for server in self.servers:
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]

    def info(self) -> dict[str, str]:
        return {
            "hubspot_url": self.hubspot_url,
            "hubspot_token": self.hubspot_token,
            "salesforce_url": self.salesforce_url,
            "salesforce_token": self.salesforce_token,
            "ca_cert": self.ca_cert,
        }

    async def serve(self, started: threading.Event | None = None) -> None:
        tasks = [
            asyncio.create_task(server.serve(sockets=[sock]))
            for server, sock in zip(self.servers, self.sockets, strict=True)
        ]
        while not all(s.started for s in self.servers):
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.01)
        if started is not None:
            started.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.webhooks.aclose()

    def request_exit(self) -> None:
        for server in self.servers:
            server.should_exit = True

    def close(self) -> None:
        for sock in (self.hs_sock, self.sf_sock):
            with contextlib.suppress(OSError):
                sock.close()
        shutil.rmtree(self.tmp, ignore_errors=True)



def admin_call(url: str, path: str, body: Any = None, ca: str | None = None, timeout: float = 60) -> Any:
    """One call to a sandbox server's /__sandbox__/ admin endpoints: POST with a body, else GET."""
    import ssl
    import urllib.request

    req = urllib.request.Request(  # noqa: S310 - the sandbox's own loopback URL
        url + path,
        data=orjson.dumps(body) if body is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    ctx = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310 - loopback sandbox only
        return orjson.loads(resp.read() or b"null")


class Sandbox:
    """A running sandbox: URLs, tokens and the CA file; `stop()` or use it as a context manager."""

    def __init__(self, info: Mapping[str, str]) -> None:
        self.hubspot_url = info["hubspot_url"]
        self.hubspot_token = info["hubspot_token"]
        self.salesforce_url = info["salesforce_url"]
        self.salesforce_token = info["salesforce_token"]
        self.ca_cert = info["ca_cert"]
        self._servers: _Servers | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # in-thread extras, for tests that look behind the API
    @property
    def population(self) -> Population:
        assert self._servers is not None, "only an in-thread sandbox exposes its population"
        return self._servers.population

    @property
    def hubspot_store(self) -> Store:
        assert self._servers is not None, "only an in-thread sandbox exposes its stores"
        return self._servers.hubspot_store

    @property
    def salesforce_store(self) -> Store:
        assert self._servers is not None, "only an in-thread sandbox exposes its stores"
        return self._servers.salesforce_store

    @property
    def import_summary(self) -> str | None:
        """The one-line summary of `--import` (None without it)."""
        assert self._servers is not None, "only an in-thread sandbox exposes its import summary"
        return self._servers.import_summary

    @classmethod
    def start(
        cls,
        contacts: int = DEFAULT_CONTACTS,
        seed: int = DEFAULT_SEED,
        hubspot_rate: int = hubspot.DEFAULT_RATE,
        hubspot_daily: int = hubspot.DEFAULT_DAILY,
        port: int = 0,
        anchor: float | None = None,
        in_thread: bool = True,
        *,
        search_rate: int = hubspot.DEFAULT_SEARCH_RATE,
        faults: Mapping[str, float] | str | None = None,
        timeout_s: float = 30.0,
        hubspot_timezone: str = hubspot.DEFAULT_TIMEZONE,
        search_lag_s: float = hubspot.DEFAULT_SEARCH_LAG_S[1],
        association_page_size: int = hubspot.ASSOC_PAGE_SIZE,
        hubspot_tier: str = "enterprise",
        import_file: str | Path | None = None,
    ) -> Sandbox:
        opts = SandboxOptions(
            import_file=str(import_file) if import_file is not None else None,
            hubspot_tier=hubspot_tier,
            association_page_size=association_page_size,
            hubspot_timezone=hubspot_timezone,
            search_lag_s=search_lag_s,
            contacts=contacts,
            seed=seed,
            hubspot_rate=hubspot_rate,
            hubspot_daily=hubspot_daily,
            search_rate=search_rate,
            port=port,
            anchor=anchor,
            faults=parse_fault_spec(faults or {}),
            timeout_s=timeout_s,
        )
        return cls._start_thread(opts) if in_thread else cls._start_process(opts)

    @classmethod
    def _start_thread(cls, opts: SandboxOptions) -> Sandbox:
        servers = _Servers(opts)
        loop = _new_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(servers.serve(started))
            finally:
                loop.close()

        thread = threading.Thread(target=run, name="leadscore-sandbox", daemon=True)
        thread.start()
        if not started.wait(15) or not all(s.started for s in servers.servers):
            servers.request_exit()
            thread.join(5)
            servers.close()
            raise SandboxError("the sandbox servers did not start")
        sandbox = cls(servers.info())
        sandbox._servers, sandbox._thread, sandbox._loop = servers, thread, loop
        return sandbox

    @classmethod
    def _start_process(cls, opts: SandboxOptions) -> Sandbox:
        argv = [
            sys.executable,
            "-m",
            "sandbox.server",
            "--port",
            str(opts.port),
            "--contacts",
            str(opts.contacts),
            "--seed",
            str(opts.seed),
            "--hubspot-rate",
            str(opts.hubspot_rate),
            "--hubspot-daily",
            str(opts.hubspot_daily),
            "--search-rate",
            str(opts.search_rate),
            "--timeout-s",
            str(opts.timeout_s),
            "--hubspot-timezone",
            opts.hubspot_timezone,
            "--search-lag",
            str(opts.search_lag_s),
            "--association-page-size",
            str(opts.association_page_size),
            "--hubspot-tier",
            opts.hubspot_tier,
        ]
        if opts.anchor is not None:
            argv += ["--anchor", repr(opts.anchor)]
        if opts.import_file:
            argv += ["--import", opts.import_file]
        if opts.faults:
            argv += ["--faults", orjson.dumps(dict(opts.faults)).decode()]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            proc.wait(5)
            raise SandboxError(f"the sandbox process exited before starting: {err or proc.returncode}")
        sandbox = cls(orjson.loads(line))
        sandbox._proc = proc
        return sandbox

    def stop(self) -> None:
        if self._servers is not None:
            servers = self._servers
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(servers.request_exit)
            if self._thread is not None:
                self._thread.join(10)
            servers.close()
            self._servers = None
        if self._proc is not None:
            proc = self._proc
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            self._proc = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- the command


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one sentence, no usage dump
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="leadscore sandbox", description="Run the sandbox CRM (HubSpot and Salesforce APIs).")
    p.add_argument("--port", type=int, default=0, help="HubSpot on P, Salesforce on P+1 (0: any free ports)")
    p.add_argument("--contacts", type=int, default=DEFAULT_CONTACTS, help="people in each CRM")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the same seed gives the same data")
    p.add_argument("--hubspot-rate", type=int, default=hubspot.DEFAULT_RATE, help="requests per 10 s per token")
    p.add_argument("--hubspot-daily", type=int, default=hubspot.DEFAULT_DAILY, help="requests per day per token")
    p.add_argument("--search-rate", type=int, default=hubspot.DEFAULT_SEARCH_RATE, help="searches per second")
    p.add_argument("--faults", default="", help='e.g. 429=0.2,500=0.05 or {"429": 0.2, "seed": 1}')
    p.add_argument("--timeout-s", type=float, default=30.0, help="how long a 'timeout' fault hangs")
    p.add_argument("--hubspot-timezone", default=hubspot.DEFAULT_TIMEZONE,
                   help="the portal's time zone: its daily API limit resets at midnight there")  # fmt: skip
    p.add_argument("--hubspot-tier", default="enterprise", choices=hubspot.TIERS,
                   help="the portal's subscription tier (the events API answers only on enterprise)")  # fmt: skip
    p.add_argument("--search-lag", type=float, default=hubspot.DEFAULT_SEARCH_LAG_S[1],
                   help="seconds within which a contact write shows up in search (each write: 0 to this)")  # fmt: skip
    p.add_argument("--import", dest="import_file", metavar="FILE.csv", default=None,
                   help="the HubSpot contacts of a CSV export (one row a contact, one column a property) "
                        "instead of generated people")  # fmt: skip
    p.add_argument("--anchor", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--association-page-size", type=int, default=hubspot.ASSOC_PAGE_SIZE, help=argparse.SUPPRESS)
    return p


def options_from_argv(argv: list[str]) -> SandboxOptions:
    """Parse `leadscore sandbox` arguments; raises SandboxError with one sentence on bad input."""
    try:
        ns = _parser().parse_args(argv)
    except _UsageError as exc:
        raise SandboxError(str(exc)) from None
    try:
        faults = parse_fault_spec(ns.faults)
    except FaultSpecError as exc:
        raise SandboxError(f"--faults: {exc}") from None
    opts = SandboxOptions(
        contacts=ns.contacts,
        seed=ns.seed,
        hubspot_rate=ns.hubspot_rate,
        hubspot_daily=ns.hubspot_daily,
        search_rate=ns.search_rate,
        port=ns.port,
        anchor=ns.anchor,
        faults=faults,
        timeout_s=ns.timeout_s,
        hubspot_timezone=ns.hubspot_timezone,
        search_lag_s=ns.search_lag,
        association_page_size=ns.association_page_size,
        hubspot_tier=ns.hubspot_tier,
        import_file=ns.import_file,
    )
    opts.validate()
    return opts


def main(argv: list[str] | None = None) -> int:
    """`leadscore sandbox [--port P] [--contacts N] [--seed S] [--hubspot-rate N] [--faults SPEC]
    [--import FILE.csv]`."""
    try:
        opts = options_from_argv(sys.argv[1:] if argv is None else argv)
        servers = _Servers(opts)
    except SandboxError as exc:
        sys.stderr.write(f"leadscore sandbox: {exc}\n")
        return 2
    loop = _new_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, servers.request_exit)
    started = threading.Event()

    async def announce() -> None:
        while not started.is_set():
            await asyncio.sleep(0.01)
        if not all(s.started for s in servers.servers):
            return
        sys.stdout.write(orjson.dumps(servers.info()).decode() + "\n")
        sys.stdout.flush()
        if servers.import_summary:
            sys.stderr.write(f"leadscore sandbox: {servers.import_summary}\n")
            sys.stderr.flush()

    async def run() -> None:
        announcer = asyncio.create_task(announce())
        await servers.serve(started)
        await announcer

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
        servers.close()
    if not all(s.started for s in servers.servers):
        sys.stderr.write("leadscore sandbox: the servers did not start\n")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
