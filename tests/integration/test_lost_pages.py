"""Lost pages and dead holders: claims and locks that run out within seconds of their worker's death.

A real process takes the claims and is killed with -9; the others work on a
real Redis (connector/leases.py, connector/runs.py "Lost pages").
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pytest
import redis

from connector import leases
from connector.console import wait_for_runs
from connector.runs import LostPage, PageResult, RunStore, page_key
from tests.conftest import ROOT

_HOLDER = """
import sys, time
import redis
from connector import leases
from connector.runs import RunStore

url, run_id = sys.argv[1:]
client = redis.Redis.from_url(url)
runs = RunStore(client, "t")
assert runs.claim_page(run_id, "contact", "c-2", holder="doomed") is not None
assert leases.acquire(client, "t:routing:lock:hubspot:contact:7", "doomed-token") is not None
print("holding", flush=True)
time.sleep(600)
"""


def start_holder(redis_url: str, run_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, redis_url, run_id], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_live_workers_page_and_lock_are_never_taken_and_a_killed_ones_are_taken_once_within_the_lease(
    redis_client: redis.Redis, redis_url: str
) -> None:
    runs = RunStore(redis_client, "t")
    run = runs.new_run("hubspot", "full", ("contact",))
    runs.add_page(run, "contact", "c-2", since=123.0)
    holder = start_holder(redis_url, run)
    lock = "t:routing:lock:hubspot:contact:7"
    try:
        # Alive well past a lease: it renews both, so nobody takes them.
        deadline = time.monotonic() + leases.LEASE_S + 2 * leases.RENEW_S
        while time.monotonic() < deadline:
            assert runs.resend_lost(run) == []
            assert runs.claim_page(run, "contact", "c-2", holder="other") is None
            assert leases.acquire(redis_client, lock, "other") is None
            time.sleep(0.5)

        holder.kill()  # kill -9
        killed_at = time.monotonic()
    finally:
        holder.kill()
        holder.wait(10)

    # Eight workers look for lost pages at once: the page goes to exactly one of them.
    got: list[LostPage] = []
    stop = threading.Event()

    def watch() -> None:
        store = RunStore(redis.Redis(connection_pool=redis_client.connection_pool), "t")
        while not stop.is_set():
            got.extend(store.resend_lost(run))
            time.sleep(0.05)

    watchers = [threading.Thread(target=watch) for _ in range(8)]
    for w in watchers:
        w.start()
    try:
        while not got and time.monotonic() - killed_at < leases.LEASE_S + 5:
            time.sleep(0.05)
        resent_after = time.monotonic() - killed_at
        time.sleep(1.0)  # any second hand-out would come now
    finally:
        stop.set()
        for w in watchers:
            w.join()

    assert got == [LostPage("contact", "c-2", 123.0)]
    assert resent_after <= leases.LEASE_S + 1
    view = runs.get(run)
    assert view is not None
    assert view.count("pages_resent") == 1
    # the dead worker's routing lock is free as well
    taken = leases.acquire(redis_client, lock, "taker")
    assert taken is not None
    leases.release(taken)


def test_a_duplicate_message_of_a_page_held_or_done_does_nothing(redis_client: redis.Redis) -> None:
    runs = RunStore(redis_client, "t")
    run = runs.new_run("hubspot", "full", ("contact",))
    runs.add_page(run, "contact", None)
    first = runs.claim_page(run, "contact", None, holder="w1")
    assert first is not None
    assert runs.claim_page(run, "contact", None, holder="w2") is None, "a live worker holds it"

    assert runs.finish_page(run, "contact", None, PageResult()) == 0
    runs.release_page(first)

    assert runs.claim_page(run, "contact", None, holder="w2") is None, "it is done"
    assert runs.resend_lost(run) == []
    assert runs.stalled(run) == []


def test_a_holder_whose_lease_ran_out_learns_it_and_never_extends_or_frees_the_takers(
    redis_client: redis.Redis,
) -> None:
    key = "t:lease"
    frozen = leases.acquire(redis_client, key, "frozen", ttl_s=0.3)  # runs out between renewals (every RENEW_S)
    assert frozen is not None
    # The process's renewer ticks every RENEW_S at a phase of its own: a tick inside the first 0.3 s renews
    # the lease once more, so wait for the key to run out rather than for a fixed 0.5 s.
    deadline = time.monotonic() + 2 * leases.RENEW_S
    while redis_client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    taker = leases.acquire(redis_client, key, "taker")
    assert taker is not None

    assert not frozen.held()
    leases.release(frozen)  # what the frozen holder does when it wakes up
    time.sleep(leases.RENEW_S + 0.5)

    assert redis_client.get(key) == "taker"
    assert taker.held()
    leases.release(taker)
    assert redis_client.get(key) is None


def test_a_retrying_page_keeps_its_claim_through_its_countdown(redis_client: redis.Redis) -> None:
    runs = RunStore(redis_client, "t")
    run = runs.new_run("hubspot", "full", ("contact",))
    runs.add_page(run, "contact", "c-3")
    lease = runs.claim_page(run, "contact", "c-3", holder="w1")
    assert lease is not None
    runs.wait_page(run, "contact", "c-3", 40.0)  # the task retries in 40 s
    runs.release_page(lease)

    ttl = redis_client.pttl(f"t:run:{run}:claim:{page_key('contact', 'c-3')}") / 1000
    assert 40.0 < ttl <= 40.0 + 30.0
    assert runs.resend_lost(run) == []
    again = runs.claim_page(run, "contact", "c-3", holder="w2")  # the retry itself, on any worker
    assert again is not None
    runs.release_page(again)


def test_sync_wait_says_which_stream_waits_for_a_lost_page_and_for_how_long(
    redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = RunStore(redis_client, "t")
    run = runs.new_run("hubspot", "full", ("contact",))
    runs.set(run, status="running")
    runs.add_page(run, "contact", "c-2")
    holder = start_holder(redis_url, run)
    holder.kill()
    holder.wait(10)

    def the_watch_and_then_a_worker() -> None:
        deadline = time.monotonic() + leases.LEASE_S + 5
        while not runs.resend_lost(run) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # the page sent again is being worked on
        runs.finish_page(run, "contact", "c-2", PageResult())
        runs.set(run, status="done")

    t = threading.Thread(target=the_watch_and_then_a_worker)
    t.start()
    try:
        views = wait_for_runs(runs, [run], timeout=60)
    finally:
        t.join()

    assert views[0].status == "done"
    said = capsys.readouterr()
    err = said.err
    assert re.search(r"1 page\(s\) lost with their worker were sent to another worker; waited 1\d s", said.out)
    assert re.search(r"contact: waiting \d+ s for a page whose worker stopped answering", err), err
    assert re.search(r"contact: waiting 1\d s for a page lost with its worker, sent to another", err), err
