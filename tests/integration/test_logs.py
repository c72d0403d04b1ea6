"""Logs: JSON lines in production, readable on a terminal, and never a name, an e-mail address or a token."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import structlog

from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.logs import configure
from sandbox.server import Sandbox
from tests.conftest import ROOT
from tests.inprocess import run_in_process

PEOPLE = 120


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=PEOPLE, seed=11, hubspot_rate=5000, faults={"500": 0.05, "seed": 3}) as sb:
        yield sb


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    stream = io.StringIO()
    yield stream
    root.handlers[:], _ = before
    root.setLevel(before[1])


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    mdir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mdir)
    settings = Settings(
        mappings_dir=mdir,
        hubspot_base_url=sandbox.hubspot_url, hubspot_access_token=sandbox.hubspot_token,
        salesforce_instance_url=sandbox.salesforce_url, salesforce_access_token=sandbox.salesforce_token,
        salesforce_ca_bundle=Path(sandbox.ca_cert), hubspot_webhook_secret="whsec-0123456789",
    )
    runtime = build_runtime(settings, redis_client=redis.Redis.from_url(redis_url), namespace="logs")
    runtime.overrides["hubspot"] = lambda m: {"account": m.account.model_copy(update={"requests_per_10s": 4900})}
    yield runtime
    runtime.close()


def full_sync(rt: Runtime, crm: str) -> None:
    """A whole run, page after page, in this thread (what the workers do, retries of a page included:
    with injected 500s a task creation, which is not retried inside the adapter, asks for one)."""
    rt.adapter(crm).setup()  # `leadscore setup`: Salesforce's fields through the Tooling API  # type: ignore[arg-type]
    run_in_process(rt, crm, page_retries=4)  # type: ignore[arg-type]


def test_a_sync_logs_json_lines_with_ids_and_counts_and_no_personal_data_or_tokens(
    sandbox: Sandbox, rt: Runtime, log_stream: io.StringIO
) -> None:
    configure(settings=rt.settings, stream=log_stream, fmt="json", level="DEBUG")
    for crm in ("hubspot", "salesforce"):
        full_sync(rt, crm)
    text = log_stream.getvalue()

    lines = [json.loads(line) for line in text.splitlines()]
    pages = [x for x in lines if x.get("event") == "page"]
    assert pages, "a sync logs each page"
    assert {x["crm"] for x in pages} == {"hubspot", "salesforce"}
    assert sum(x["read"] for x in pages) >= 2 * PEOPLE * 0.9
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    people = [sandbox.population.person(i) for i in range(PEOPLE)]
    reps = sandbox.population.reps()
    forbidden = {p.email for p in people} | {f"{p.first_name} {p.last_name}" for p in people}
    forbidden |= {r.email for r in reps} | {f"{r.first_name} {r.last_name}" for r in reps}
    forbidden |= {sandbox.hubspot_token, sandbox.salesforce_token, "whsec-0123456789"}
    leaked = sorted(s for s in forbidden if s in text)
    assert leaked == []
    assert "@" not in text


def test_personal_data_and_secrets_given_to_a_log_call_are_redacted(log_stream: io.StringIO) -> None:
    settings = Settings(hubspot_access_token="pat-na1-secret-token-0001")
    configure(settings=settings, stream=log_stream, fmt="json", level="INFO")
    log = logging.getLogger("leadscore.test")
    log.info("owner lookup for anna.berger@example.com", extra={"event": "lookup", "email": "anna.berger@example.com",
                                                                 "full_name": "Anna Berger", "record": "hubspot:7"})
    structlog.get_logger("leadscore.test").info("rep_notified", name="Anna Berger", rep="42", token="x" * 12)
    try:
        raise RuntimeError("HubSpot said 401 for Bearer pat-na1-secret-token-0001 (anna.berger@example.com)")
    except RuntimeError:
        log.exception("call failed", extra={"event": "call_failed"})
    first, native, second = (json.loads(x) for x in log_stream.getvalue().splitlines())

    assert first["event"] == "lookup"
    assert first["record"] == "hubspot:7"
    assert first["email"] == first["full_name"] == "[redacted]"
    assert first["msg"] == "owner lookup for [e-mail]"
    assert native["event"] == "rep_notified"
    assert native["rep"] == "42"
    assert native["name"] == native["token"] == "[redacted]"
    assert "pat-na1-secret-token-0001" not in second["exception"]
    assert "anna.berger" not in second["exception"]
    assert "RuntimeError" in second["exception"]


def test_on_a_terminal_the_lines_are_readable_not_json(log_stream: io.StringIO) -> None:
    configure(settings=Settings(), stream=log_stream, fmt="console", level="INFO")
    logging.getLogger("leadscore.sync").info("page done", extra={"event": "page", "crm": "hubspot", "read": 100})
    line = log_stream.getvalue().strip()

    assert not line.startswith("{")
    assert "page done" in line
    assert "crm=hubspot" in line
    assert "read=100" in line
