"""backtest, suggest and preview as an admin runs them, on the generated sandbox over real HTTP:
figures from the CRM's outcomes, a valid suggested file that beats the shipped model held out, a preview
that writes nothing, and one clear sentence for every user error."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from connector.engine import load_scoring
from connector.learn.dataset import read_dataset
from connector.learn.eval_commands import run_backtest, weekly_backtest
from connector.learn.history import BacktestHistory
from connector.status import collect_status
from sandbox.server import Sandbox
from tests.conftest import ROOT
from tests.integration.test_cli import hubspot_env, one_sentence, run
from tests.integration.test_dataset import runtime

N = 1000
HTTP = urllib3.PoolManager()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=N, seed=31, hubspot_rate=100_000) as sb:
        yield sb


@pytest.fixture(scope="module")
def mappings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped mappings, with a client-side rate fit for a test (the sandbox allows it)."""
    mdir = tmp_path_factory.mktemp("mappings")
    for f in (ROOT / "mappings").glob("*.yaml"):
        (mdir / f.name).write_text(f.read_text())
    hub = mdir / "hubspot.yaml"
    hub.write_text(hub.read_text().replace("  # requests_per_10s: 150", "  requests_per_10s: 10000", 1))
    return mdir


def env(sb: Sandbox, redis_url: str, mappings: Path) -> dict[str, str]:
    return {**hubspot_env(sb, redis_url), "LEADSCORE_MAPPINGS": str(mappings)}


def writes(sb: Sandbox) -> dict[str, int]:
    stats = json.loads(HTTP.request("GET", sb.hubspot_url + "/__sandbox__/stats").data)
    return {k: v for k, v in stats["calls"].items()
            if not (k.startswith("GET ") or k.endswith(("/search", "/batch/read")) or "/__sandbox__" in k)}


def test_backtest_json_has_the_figures_of_the_crms_outcomes(sandbox: Sandbox, redis_url: str, mappings: Path,
                                                            tmp_path: Path) -> None:
    HTTP.request("POST", sandbox.hubspot_url + "/__sandbox__/stats/reset")
    report = tmp_path / "report.html"
    proc = run(["backtest", "--json", "--html", str(report)], env(sandbox, redis_url, mappings), timeout=300)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["leads"] == d["won"] + d["lost"] > 100
    assert d["won"] > 20
    assert d["lost"] > 20
    assert d["undated"] > 0  # UNQUALIFIED lead statuses carry no date
    assert sum(b["leads"] for b in d["bands"].values()) == d["leads"]
    for band in d["bands"].values():
        assert band["rate"] == pytest.approx(band["won"] / band["leads"])
    assert d["bands"]["hot"]["rate"] > d["bands"]["cold"]["rate"]
    assert 0.55 < d["auc"] < 0.95
    assert "<img" in report.read_text()
    assert proc.stderr.strip() == f"report written to {report}"
    assert writes(sandbox) == {}
    # the same figures as the library computes from the same CRM data
    rt = runtime(sandbox, redis_url, mappings)
    bt = run_backtest(read_dataset(rt, "hubspot"), rt.model)
    assert (bt.leads, bt.won, bt.undated) == (d["leads"], d["won"], d["undated"])
    assert bt.auc == pytest.approx(d["auc"])
    rt.close()


def test_suggest_writes_a_valid_model_that_beats_the_shipped_one_held_out(
    sandbox: Sandbox, redis_url: str, mappings: Path, tmp_path: Path
) -> None:
    out = tmp_path / "suggested.yaml"
    proc = run(["suggest", "--out", str(out), "--target", "top:10%"], env(sandbox, redis_url, mappings), timeout=300)
    assert proc.returncode == 0, proc.stderr
    model = load_scoring(out)
    lines = proc.stdout.splitlines()
    auc_line = next(line for line in lines if line.strip().startswith("AUC (5-fold CV"))
    current, suggested = (float(m) for m in re.findall(r"(\d\.\d{3}) ± ", auc_line))
    assert suggested > current + 0.03, auc_line
    assert f"suggested {model.version}" in proc.stdout
    assert f"AUC {current:.3f} today, {suggested:.3f} with these points" in out.read_text()
    assert writes(sandbox) == {}


def test_preview_compares_both_models_on_the_current_leads_and_writes_nothing(
    sandbox: Sandbox, redis_url: str, mappings: Path, tmp_path: Path
) -> None:
    out = tmp_path / "suggested.yaml"
    proc = run(["suggest", "--out", str(out), "--json"], env(sandbox, redis_url, mappings), timeout=300)
    assert proc.returncode == 0, proc.stderr
    HTTP.request("POST", sandbox.hubspot_url + "/__sandbox__/stats/reset")
    proc = run(["preview", str(out), "--json"], env(sandbox, redis_url, mappings), timeout=300)
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    assert p["leads"] == N
    assert sum(sum(row.values()) for row in p["moves"].values()) == N
    assert p["proposed_model"] == load_scoring(out).version
    assert p["new_hot"] == sum(r["new_hot"] for r in p["regions"].values())
    routed = [r for r in p["regions"].values() if r["to_route"]]
    assert routed
    for r in routed:
        assert sum(r["per_rep"].values()) + r["unrouted"] == r["to_route"]
    assert writes(sandbox) == {}
    text = run(["preview", str(out)], env(sandbox, redis_url, mappings), timeout=300)
    assert text.returncode == 0
    assert "band moves (rows: today, columns: proposed)" in text.stdout
    assert "new hot leads for routing" in text.stdout


@pytest.mark.parametrize(("args", "sentence"), [
    (["backtest", "--since", "last week"],
     "leadscore: --since must be a date like 2026-06-01 or a date and time with its zone, not 'last week'."),
    (["suggest", "--out", "x.yaml", "--target", "hot"],
     "leadscore: --target must be top:N% (hot = the best N% of the leads, 0 < N < 100) or precision:P (hot from "
     "the lowest score where a share P of the leads converted, 0 < P < 1), not 'hot'."),
    (["preview", "/nonexistent/scoring.yaml"], "leadscore: /nonexistent/scoring.yaml: the file does not exist"),
    (["suggest"], "leadscore: leadscore suggest: missing option '--out'."),
])
def test_bad_input_is_one_sentence_and_exit_1(args: list[str], sentence: str, sandbox: Sandbox, redis_url: str,
                                              mappings: Path) -> None:
    proc = run(args, env(sandbox, redis_url, mappings))
    assert proc.returncode == 1
    assert one_sentence(proc) == sentence


def test_without_outcomes_configured_backtest_says_so(sandbox: Sandbox, redis_url: str, mappings: Path,
                                                      tmp_path: Path) -> None:
    for f in mappings.glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    hub = tmp_path / "hubspot.yaml"
    hub.write_text(hub.read_text().split("\noutcomes:")[0] + "\n")
    proc = run(["backtest"], env(sandbox, redis_url, tmp_path))
    assert proc.returncode == 1
    assert "outcomes" in one_sentence(proc)


def test_the_weekly_backtest_keeps_its_figures_for_status(sandbox: Sandbox, redis_url: str, mappings: Path) -> None:
    rt = runtime(sandbox, redis_url, mappings)
    now = time.time()
    figures = weekly_backtest(rt, "hubspot", now)
    assert BacktestHistory(rt.redis, rt.namespace).latest("hubspot") == json.loads(json.dumps(figures))
    status = collect_status(rt, now, rep_names=False)
    shown = status["crms"]["hubspot"]["backtest"]
    assert shown["auc"] == figures["auc"]
    assert shown["model"] == rt.model.version
    # the task beat starts, on the same runtime
    from tasks.learn import backtest as backtest_task
    from tasks.runtime import set_runtime

    set_runtime(rt)
    try:
        again = backtest_task.apply(args=("hubspot",)).get()
    finally:
        set_runtime(None)
    assert again["auc"] == figures["auc"]
    assert len(BacktestHistory(rt.redis, rt.namespace).history("hubspot")) == 2
    rt.close()
    proc = run(["status"], env(sandbox, redis_url, mappings))
    assert proc.returncode == 0, proc.stderr
    assert f"weekly backtest, hubspot: AUC {figures['auc']:.3f} on {figures['leads']:,} outcomes" in proc.stdout
