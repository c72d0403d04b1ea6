"""Run bookkeeping in Redis: each page counted once, the run finished once, cursors saved only on success."""

from __future__ import annotations

import threading

import redis

from connector.runs import PageResult, RunStore


def _page(read: int, high: float | None = None, failures: list[str] | None = None) -> PageResult:
    result = PageResult(high_water=high)
    result.add("read", read)
    result.failures.extend(failures or [])
    return result


def test_a_page_delivered_twice_is_counted_once(redis_client: redis.Redis) -> None:
    runs = RunStore(redis_client, "t")
    run = runs.new_run("hubspot", "full", ("contact",))
    runs.add_page(run, "contact", None)
    assert runs.finish_page(run, "contact", None, _page(100)) == 0
    assert runs.finish_page(run, "contact", None, _page(100)) is None
    view = runs.get(run)
    assert view is not None
    assert view.count("read") == 100
    assert view.count("pages_done") == 1


def test_the_next_page_is_counted_pending_once_however_often_it_is_announced(redis_client: redis.Redis) -> None:
    runs = RunStore(redis_client, "t")
    run = runs.new_run("hubspot", "full", ("contact",))
    assert runs.add_page(run, "contact", None)
    assert runs.add_page(run, "contact", "cursor-2")
    assert not runs.add_page(run, "contact", "cursor-2")
    view = runs.get(run)
    assert view is not None
    assert view.count("pending") == 2
    assert view.count("pages_total") == 2


def test_pending_reaches_zero_exactly_once_when_many_workers_finish_pages(redis_client: redis.Redis) -> None:
    runs = RunStore(redis_client, "t")
    run = runs.new_run("salesforce", "full", ("Lead",))
    cursors = [f"c{i}" for i in range(200)]
    for c in cursors:
        runs.add_page(run, "Lead", c)
    zeros: list[str] = []

    def finish(cs: list[str]) -> None:
        store = RunStore(redis.Redis(connection_pool=redis_client.connection_pool), "t")
        for c in cs:
            for _ in range(2):  # every page delivered twice
                if store.finish_page(run, "Lead", c, _page(1)) == 0:
                    zeros.append(c)

    threads = [threading.Thread(target=finish, args=(cursors[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(zeros) == 1
    view = runs.get(run)
    assert view is not None
    assert view.count("read") == 200


def test_failures_and_high_water_marks_are_kept_per_run(redis_client: redis.Redis) -> None:
    runs = RunStore(redis_client, "t")
    run = runs.new_run("hubspot", "incremental", ("contact",))
    runs.add_page(run, "contact", None)
    runs.add_page(run, "contact", "2")
    runs.finish_page(run, "contact", None, _page(2, high=100.0, failures=["hubspot:contact:7: bad value"]))
    runs.finish_page(run, "contact", "2", _page(2, high=50.0))
    assert runs.high_waters(run) == {"contact": 100.0}
    view = runs.get(run)
    assert view is not None
    assert view.failures == ["hubspot:contact:7: bad value"]


def test_a_second_sync_of_the_same_account_sees_who_holds_the_lock(redis_client: redis.Redis) -> None:
    runs = RunStore(redis_client, "t")
    assert runs.try_lock("hubspot", "run-1") is None
    assert runs.try_lock("hubspot", "run-2") == "run-1"
    runs.release_lock("hubspot", "run-2")  # not the holder: nothing happens
    assert runs.lock_holder("hubspot") == "run-1"
    runs.release_lock("hubspot", "run-1")
    assert runs.try_lock("hubspot", "run-2") is None


def test_waiting_on_a_run_whose_state_is_gone_says_to_run_it_again(redis_client: redis.Redis) -> None:
    import pytest

    from connector.console import wait_for_runs
    from connector.errors import UserError

    runs = RunStore(redis_client, "t")
    run = runs.new_run("hubspot", "full", ("contact",))
    redis_client.flushall()  # what a Redis restart without persistence does
    gone = r"^the state of sync .* is gone \(Redis was restarted or flushed\); run the sync again"
    with pytest.raises(UserError, match=gone):
        wait_for_runs(runs, [run], quiet=True)


def test_the_last_page_of_a_stopped_run_finishes_it_and_frees_the_account(redis_client: redis.Redis) -> None:
    from connector.bootstrap import build_runtime
    from connector.config import Settings
    from connector.sync import run_page

    rt = build_runtime(Settings(hubspot_access_token="unused"), redis_client=redis_client, namespace="t")
    runs = rt.runs
    run = runs.new_run("hubspot", "full", ("contact",))
    runs.try_lock("hubspot", run)
    runs.add_page(run, "contact", None)
    runs.set(run, status="failed", message="stopped by another page")

    assert run_page(rt, run, "hubspot", "contact", None, None, enqueue_next=lambda _c: None) == 0

    view = runs.get(run)
    assert view is not None
    assert view.fields["finished"]
    assert runs.lock_holder("hubspot") is None
