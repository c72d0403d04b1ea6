"""`leadscore sandbox --import FILE.csv`: an admin's own export as the sandbox HubSpot, synced end to end.

The CSV is made here: known columns by label, outcome columns (Lifecycle Stage, Became a Customer
Date, Lead Status) and columns HubSpot does not have. Assertions read the contacts back through
HubSpot's API with the official client, run a full sync through the real pipeline and read the
outcomes with read_dataset.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hubspot import HubSpot

from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.learn.dataset import read_dataset
from connector.mappings.hubspot import Account
from sandbox.server import Sandbox
from tests.conftest import ROOT
from tests.inprocess import run_in_process

ROWS = 120


def make_csv(path: Path, rows: int = ROWS, seed: int = 5) -> list[dict[str, str]]:
    """A CRM export of `rows` contacts whose outcomes follow their title and industry, with noise."""
    r = random.Random(seed)
    out = []
    for i in range(1, rows + 1):
        title = r.choice(["Test Engineer", "CEO", "Student", "Head of Test", "Buyer", "Marketing Manager"])
        industry = r.choice(["automotive", "aerospace", "retail", "software"])
        good = (title in ("Test Engineer", "Head of Test", "Buyer")) + (industry in ("automotive", "aerospace"))
        won = r.random() < 0.1 + 0.3 * good
        lost = not won and r.random() < 0.5
        out.append({
            "Record ID": str(5000 + 7 * i), "Email": f"p{i}@firm{i % 40}.example", "First Name": f"P{i}",
            "Last Name": "Example", "Job Title": title, "Company Name": f"Firm {i % 40}", "Industry": industry,
            "Number of Employees": str(r.choice([5, 80, 400, 3000])),
            "Country/Region": r.choice(["Germany", "Sweden", "United States"]),
            "Lifecycle Stage": "customer" if won else ("salesqualifiedlead" if lost else "lead"),
            "Became a Customer Date": f"2026-{r.randint(6, 10):02d}-{r.randint(1, 28):02d}" if won else "",
            "Lead Status": "UNQUALIFIED" if lost else "OPEN",
            "Budget": r.choice(["approved", "none", "unknown"]),
            "Trial User": r.choice(["yes", "no"]),
            "Webinar Visits": str(r.randint(0, 5)),
            "Signed Up": f"2026-0{r.randint(1, 9)}-1{r.randint(0, 9)}",
        })  # fmt: skip
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    path = tmp_path_factory.mktemp("export") / "contacts.csv"
    return path, make_csv(path)


@pytest.fixture(scope="module")
def sandbox(export: tuple[Path, list[dict[str, str]]]) -> Iterator[Sandbox]:
    with Sandbox.start(import_file=export[0], hubspot_rate=100_000) as sb:
        yield sb


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str) -> Iterator[Runtime]:
    settings = Settings(redis_url=redis_url, redis_url_given=True, hubspot_base_url=sandbox.hubspot_url,
                        hubspot_access_token=sandbox.hubspot_token, mappings_dir=ROOT / "mappings")  # fmt: skip
    runtime = build_runtime(settings, redis_client=redis.Redis.from_url(redis_url), namespace="import",
                            overrides={"hubspot": {"account": Account(requests_per_10s=10_000, daily=0)}})  # fmt: skip
    yield runtime
    runtime.close()


def client(sb: Sandbox) -> HubSpot:
    return HubSpot(access_token=sb.hubspot_token, host=sb.hubspot_url)


def test_each_row_is_a_contact_and_unknown_columns_are_typed_custom_properties(
    sandbox: Sandbox, export: tuple[Path, list[dict[str, str]]]
) -> None:
    path, rows = export
    assert sandbox.import_summary == (
        f"imported {ROWS} contacts from {path}; 4 columns became custom properties: budget (enumeration), "
        "trial_user (bool), webinar_visits (number), signed_up (datetime)"
    )
    api = client(sandbox)
    props = {p.name: p for p in api.crm.properties.core_api.get_all("contacts").results}
    assert (props["budget"].type, sorted(o.value for o in props["budget"].options)) == (
        "enumeration", ["approved", "none", "unknown"])  # fmt: skip
    assert props["trial_user"].type == "bool"
    assert props["webinar_visits"].type == "number"
    assert props["signed_up"].type == "datetime"
    contacts = api.crm.contacts.get_all(properties=["email", "jobtitle", "lifecyclestage", "trial_user",
                                                    "hs_lifecyclestage_customer_date"])  # fmt: skip
    by_id = {c.id: c.properties for c in contacts}
    assert set(by_id) == {row["Record ID"] for row in rows}  # the export's ids
    first = rows[0]
    got = by_id[first["Record ID"]]
    assert (got["email"], got["jobtitle"], got["lifecyclestage"]) == (
        first["Email"], first["Job Title"], first["Lifecycle Stage"])  # fmt: skip
    assert got["trial_user"] == ("true" if first["Trial User"] == "yes" else "false")
    won = next(row for row in rows if row["Became a Customer Date"])
    stamp = by_id[won["Record ID"]]["hs_lifecyclestage_customer_date"]
    assert stamp.startswith(won["Became a Customer Date"])


def test_a_sync_scores_every_imported_contact_and_the_outcomes_are_read(
    sandbox: Sandbox, rt: Runtime, export: tuple[Path, list[dict[str, str]]]
) -> None:
    rows = export[1]
    rt.adapter("hubspot").setup()
    run = run_in_process(rt, "hubspot")
    assert run.count("read") == ROWS
    assert run.count("failed") == 0
    scored = client(sandbox).crm.contacts.get_all(properties=["lead_score", "lead_band", "lead_grade"])
    assert len(scored) == ROWS
    assert all(c.properties["lead_score"] not in (None, "") for c in scored)
    assert all(c.properties["lead_band"] in ("cold", "warm", "hot") for c in scored)

    ds = read_dataset(rt, "hubspot")
    expected = {"won": sum(r["Lifecycle Stage"] == "customer" for r in rows),
                "lost": sum(r["Lead Status"] == "UNQUALIFIED" for r in rows)}  # fmt: skip
    assert ds.counts() == {**expected, "open": ROWS - expected["won"] - expected["lost"]}
    won = {e.lead.id: e.outcome_at for e in ds.examples if e.outcome == "won"}
    for row in rows:
        if row["Became a Customer Date"]:
            day = dt.datetime.fromisoformat(row["Became a Customer Date"]).replace(tzinfo=dt.UTC)
            assert won[row["Record ID"]] == day.timestamp()
    assert ds.undated() == expected["lost"]


def run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "SALESFORCE_", "LEADSCORE_"))}
    return subprocess.run([sys.executable, "-m", "connector.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=False)  # fmt: skip


BAD_FILES: list[tuple[str, Any, str]] = [
    ("missing.csv", None, "does not exist or is not a file"),
    ("empty.csv", "", "is empty: it needs a header row and one row per contact"),
    ("header-only.csv", "Email,Job Title\n", "has a header row but no contacts"),
    ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00", "is not UTF-8 text: export it as CSV (UTF-8) and try again"),
    ("ragged.csv", "Email,Job Title\na@b.example,CEO,extra\n", "row 2 has 3 values but the header names 2 columns"),
    ("dupe.csv", "Email,email\na@b.example,c@d.example\n", "the header names the column 'Email' more than once"),
    ("ids.csv", "id,Email\n7,a@b.example\nx,c@d.example\n", "row 3 has the id 'x'; ids must be positive whole numbers"),
    ("badstage.csv", "Email,Lifecycle Stage\na@b.example,customr\n",
     "no row could be imported (row 2: lifecyclestage: customr was not one of the allowed options: "),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "sentence"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_one_sentence_and_a_non_zero_exit(tmp_path: Path, name: str, content: Any, sentence: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    proc = run_cli(["sandbox", "--import", str(path)])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"leadscore sandbox: {path}")
    assert sentence in lines[0]
    assert proc.stdout == ""


def test_a_row_that_does_not_fit_is_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("Email,Lifecycle Stage\na@b.example,customer\nc@d.example,customr\ne@f.example,lead\n")
    with Sandbox.start(import_file=path) as sb:
        assert sb.import_summary == (
            f"imported 2 contacts from {path}; every column is a known property; skipped 1 row (row 3: "
            "lifecyclestage: customr was not one of the allowed options: [customer, evangelist, lead, "
            "marketingqualifiedlead, opportunity, other, salesqualifiedlead, subscriber])"
        )
        emails = sorted(c.properties["email"] for c in client(sb).crm.contacts.get_all(properties=["email"]))
    assert emails == ["a@b.example", "e@f.example"]
