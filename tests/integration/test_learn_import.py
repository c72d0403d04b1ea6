"""backtest and suggest end to end on an admin's own export: a CSV made here, imported with
`leadscore sandbox --import`, synced through the real pipeline (scores written back), outcomes read
from its Lifecycle Stage / Became a Customer Date / Lead Status columns."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.engine import load_scoring
from sandbox.server import Sandbox
from tests.conftest import ROOT
from tests.inprocess import run_in_process
from tests.integration.test_cli import hubspot_env, run
from tests.integration.test_dataset import runtime

ROWS = 400


def make_export(path: Path) -> dict[str, int]:
    """Contacts whose outcome depends on seniority, country and a demo request, not as the shipped points say."""
    r = random.Random(17)
    rows = []
    counts = {"won": 0, "lost": 0}
    for i in range(1, ROWS + 1):
        title = r.choice(["CEO", "Head of Test", "Test Engineer", "Student", "Purchasing", "Marketing Manager"])
        country = r.choice(["Germany", "Austria", "Sweden", "United Kingdom", "France", "United States"])
        freemail = r.random() < 0.25
        chance = 0.08 + 0.35 * (country in ("Germany", "Austria")) + 0.25 * (title == "Purchasing") \
            - 0.05 * freemail + 0.2 * (title == "Head of Test")
        roll = r.random()
        outcome = "won" if roll < chance else "lost" if roll < chance + 0.4 else None
        if outcome:
            counts[outcome] += 1
        rows.append({
            "Record ID": str(100 + i),
            "Email": f"c{i}@{'gmail.com' if freemail else f'firm{i % 50}.example'}",
            "Job Title": title,
            "Industry": r.choice(["automotive", "energy", "retail", "software"]),
            "Number of Employees": str(r.choice([8, 120, 600, 4000])),
            "Country/Region": country,
            "Lifecycle Stage": "customer" if outcome == "won" else "lead",
            "Became a Customer Date": f"2026-{r.randint(3, 10):02d}-{r.randint(1, 28):02d}" if outcome == "won" else "",
            "Lead Status": "UNQUALIFIED" if outcome == "lost" else "OPEN",
            "Budget": r.choice(["approved", "unknown"]),
        })  # fmt: skip
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return counts


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("export") / "contacts.csv"
    return path, make_export(path)


@pytest.fixture(scope="module")
def sandbox(export: tuple[Path, dict[str, int]]) -> Iterator[Sandbox]:
    with Sandbox.start(import_file=export[0], hubspot_rate=100_000) as sb:
        yield sb


@pytest.fixture(scope="module")
def mappings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mdir = tmp_path_factory.mktemp("mappings")
    for f in (ROOT / "mappings").glob("*.yaml"):
        (mdir / f.name).write_text(f.read_text())
    hub = mdir / "hubspot.yaml"
    hub.write_text(hub.read_text().replace("  # requests_per_10s: 150", "  requests_per_10s: 10000", 1))
    return mdir


def test_backtest_and_suggest_run_on_an_imported_export_after_a_sync(
    sandbox: Sandbox, export: tuple[Path, dict[str, int]], redis_url: str, mappings: Path, tmp_path: Path
) -> None:
    counts = export[1]
    rt = runtime(sandbox, redis_url, mappings)
    rt.adapter("hubspot").setup()
    view = run_in_process(rt, "hubspot")
    assert view.count("read") == ROWS
    assert view.count("written") == ROWS  # every contact scored and written back
    rt.close()
    env = {**hubspot_env(sandbox, redis_url), "LEADSCORE_MAPPINGS": str(mappings)}

    proc = run(["backtest", "--json"], env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert (d["won"], d["lost"], d["open"]) == (counts["won"], counts["lost"], ROWS - counts["won"] - counts["lost"])
    assert d["undated"] == counts["lost"]  # a lead status carries no date
    assert sum(b["leads"] for b in d["bands"].values()) == d["leads"]
    assert 0.0 <= d["auc"] <= 1.0

    out = tmp_path / "suggested.yaml"
    proc = run(["suggest", "--out", str(out), "--target", "precision:0.5", "--json"], env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["model"] == load_scoring(out).version
    assert (s["won"], s["lost"]) == (counts["won"], counts["lost"])
    assert s["cv"]["suggested"]["auc"] > s["cv"]["current"]["auc"]
    assert "from hubspot data read at" in out.read_text()
