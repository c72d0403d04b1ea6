"""The leadscore command as an admin uses it: exit codes and one clear sentence, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.server import Sandbox
from tests.conftest import ROOT, free_port


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=300, seed=5) as sb:
        yield sb


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "SALESFORCE_", "LEADSCORE_"))}
    clean.pop("REDIS_URL", None)
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        env=clean, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
    )


def one_sentence(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def hubspot_env(sb: Sandbox, redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "HUBSPOT_BASE_URL": sb.hubspot_url, "HUBSPOT_ACCESS_TOKEN": sb.hubspot_token}


def test_an_unknown_option_is_one_sentence_and_exit_1() -> None:
    proc = run(["demo", "--contacts", "many"], {})
    assert proc.returncode == 1
    assert one_sentence(proc) == "leadscore: leadscore demo: argument --contacts: 'many' is not a whole number."


def test_check_without_any_crm_says_what_to_set(redis_url: str) -> None:
    proc = run(["check"], {"REDIS_URL": redis_url})
    assert proc.returncode == 1
    assert "FAIL no CRM is configured: set HUBSPOT_ACCESS_TOKEN, or SALESFORCE_INSTANCE_URL and " \
           "SALESFORCE_ACCESS_TOKEN." in proc.stdout


def test_a_broken_mapping_file_is_named_with_its_line_and_key(tmp_path: Path, redis_url: str) -> None:
    for f in (ROOT / "mappings").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    text = (tmp_path / "routing.yaml").read_text().replace("sla:\n", "sla:\n  minutess: 3\n", 1)
    (tmp_path / "routing.yaml").write_text(text)
    proc = run(["check"], {"REDIS_URL": redis_url, "LEADSCORE_MAPPINGS": str(tmp_path)})
    assert proc.returncode == 1
    line = next(x for x in proc.stdout.splitlines() if "routing.yaml" in x)
    assert line.startswith(f"FAIL {tmp_path / 'routing.yaml'}, line ")
    assert line.endswith("key 'sla.minutess': unknown key")


def test_check_names_missing_properties_until_setup_creates_them(sandbox: Sandbox, redis_url: str) -> None:
    env = hubspot_env(sandbox, redis_url)
    before = run(["check"], env)
    assert before.returncode == 1
    assert "leadscore setup" in before.stdout
    first = run(["setup"], env)
    assert first.returncode == 0, first.stdout + first.stderr
    second = run(["setup"], env)
    assert second.returncode == 0
    assert "nothing to do" in second.stdout
    after = run(["check"], env)
    assert after.returncode == 0, after.stdout
    assert "all checks passed." in after.stdout
    assert "schedule: hubspot: incremental sync every" in after.stdout


def test_a_bad_token_is_one_sentence(sandbox: Sandbox, redis_url: str) -> None:
    env = {**hubspot_env(sandbox, redis_url), "HUBSPOT_ACCESS_TOKEN": "not-a-token"}
    proc = run(["check"], env)
    assert proc.returncode == 1
    fails = [x for x in proc.stdout.splitlines() if x.startswith("FAIL hubspot:")]
    assert len(fails) == 1
    assert "not-a-token" not in proc.stdout + proc.stderr


def test_sync_with_no_reachable_redis_is_one_sentence(sandbox: Sandbox) -> None:
    env = hubspot_env(sandbox, f"redis://127.0.0.1:{free_port()}/0")
    proc = run(["sync", "--crm", "hubspot"], env)
    assert proc.returncode == 1
    assert one_sentence(proc).startswith("leadscore: Redis cannot be reached")


def test_explain_shows_one_record_point_by_point(sandbox: Sandbox, redis_url: str) -> None:
    proc = run(["explain", "--crm", "hubspot", "1"], hubspot_env(sandbox, redis_url))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("hubspot:contact:1\n")
    assert "score" in proc.stdout.lower()


def test_explain_an_unknown_record_says_so(sandbox: Sandbox, redis_url: str) -> None:
    proc = run(["explain", "--crm", "hubspot", "999999999"], hubspot_env(sandbox, redis_url))
    assert proc.returncode == 1
    assert one_sentence(proc) == "leadscore: no hubspot record has the id '999999999'."


def own_mappings(tmp_path: Path) -> Path:
    """A copy of mappings/ the test may change (reps away writes away.yaml there)."""
    target = tmp_path / "mappings"
    target.mkdir()
    for f in (ROOT / "mappings").glob("*.yaml"):
        (target / f.name).write_text(f.read_text())
    return target


def test_a_rep_marked_away_shows_as_away_until_marked_back(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> None:
    import redis
    import yaml

    from connector.mappings.routing import load_routing

    mdir = own_mappings(tmp_path)
    env = {**hubspot_env(sandbox, redis_url), "LEADSCORE_MAPPINGS": str(mdir)}
    email = "julia.hofer@sandbox-corp.example"
    away = run(["reps", "away", email, "--until", "2099-01-31"], env)
    assert away.returncode == 0, away.stderr
    # the mark is kept in mappings/away.yaml too, in routing.yaml's format: reps: EMAIL: away: [{from, until}]
    assert f"kept in {mdir / 'away.yaml'}" in away.stdout
    saved = yaml.safe_load((mdir / "away.yaml").read_text())
    assert [str(p["until"]) for p in saved["reps"][email]["away"]] == ["2099-01-31"]
    load_routing(mdir / "routing.yaml")  # what the command wrote is valid mapping input
    redis.Redis.from_url(redis_url).flushall()  # so it outlives a Redis that lost everything
    listed = run(["reps", "list"], env)
    assert any(email in line and "away" in line for line in listed.stdout.splitlines()), listed.stdout
    back = run(["reps", "back", email], env)
    assert back.returncode == 0
    assert email not in (yaml.safe_load((mdir / "away.yaml").read_text())["reps"] or {})
    listed = run(["reps", "list"], env)
    assert not any(email in line and "away" in line for line in listed.stdout.splitlines()), listed.stdout


def test_a_bad_away_date_is_one_sentence(sandbox: Sandbox, redis_url: str) -> None:
    proc = run(["reps", "away", "julia.hofer@sandbox-corp.example", "--until", "next week"],
               hubspot_env(sandbox, redis_url))
    assert proc.returncode == 1
    assert one_sentence(proc) == (
        "leadscore: --until must be a date like 2026-12-24 or 2026-12-24T17:00 (UTC), not 'next week'."
    )


def test_marking_an_unknown_rep_away_is_refused(sandbox: Sandbox, redis_url: str) -> None:
    proc = run(["reps", "away", "nobody@x.example", "--until", "2099-01-31"], hubspot_env(sandbox, redis_url))
    assert proc.returncode == 1
    assert one_sentence(proc) == (
        "leadscore: no rep has the e-mail or id 'nobody@x.example' in hubspot or mappings/routing.yaml."
    )


def test_sandbox_prints_one_json_line_with_what_to_put_in_the_environment() -> None:
    import json

    proc = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "sandbox", "--contacts", "20", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert set(info) == {"hubspot_url", "hubspot_token", "salesforce_url", "salesforce_token", "ca_cert"}
    assert info["salesforce_url"].startswith("https://")
    assert Path(info["ca_cert"]).name == "ca.pem"


def test_sandbox_options_are_checked_with_one_sentence() -> None:
    proc = run(["sandbox", "--faults", "429=2"], {})
    assert proc.returncode != 0
    assert one_sentence(proc) == "leadscore sandbox: --faults: fault '429' must be a share between 0 and 1, not 2"


def test_a_hubspot_base_url_over_plain_http_to_another_host_is_one_sentence_and_exit_1(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "HUBSPOT_BASE_URL": "http://api.hubapi.com", "HUBSPOT_ACCESS_TOKEN": "pat-x"}
    proc = run(["check"], env)
    assert proc.returncode == 1
    assert one_sentence(proc) == (
        "leadscore: HUBSPOT_BASE_URL must use https:// (plain http:// is allowed only for localhost, 127.0.0.1 "
        "or ::1), not 'http://api.hubapi.com'."
    )


def test_a_broken_away_file_is_named_by_check_with_its_line(tmp_path: Path, redis_url: str) -> None:
    mdir = own_mappings(tmp_path)
    (mdir / "away.yaml").write_text(
        "version: 1\nreps:\n  julia.hofer@sandbox-corp.example:\n    away:\n"
        "      - {from: 2026-12-01, untl: 2026-12-05}\n"
    )
    proc = run(["check"], {"REDIS_URL": redis_url, "LEADSCORE_MAPPINGS": str(mdir)})
    assert proc.returncode == 1
    line = next(x for x in proc.stdout.splitlines() if "away.yaml" in x)
    assert line.startswith(f"FAIL {mdir / 'away.yaml'}, line 5")
