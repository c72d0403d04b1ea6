"""The bound on a worker's pool processes' memory (tasks/app.py, _bound_pool), as Celery is given it."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
from billiard.compat import mem_rss

from tasks.app import POOL_GROWTH_MB, _bound_pool

APP_MODULE = importlib.import_module("tasks.app")  # `tasks.app` the attribute is the Celery app itself


@pytest.mark.parametrize(
    ("hubspot", "salesforce", "growth_mb"),
    [(True, False, POOL_GROWTH_MB["hubspot"]), (False, True, POOL_GROWTH_MB["salesforce"]),
     (True, True, max(POOL_GROWTH_MB.values()))],
    ids=["hubspot", "salesforce", "both"],
)  # fmt: skip
def test_a_worker_with_no_bound_of_its_own_is_bound_by_its_start_size_and_its_crms(
    monkeypatch: pytest.MonkeyPatch, hubspot: bool, salesforce: bool, growth_mb: int
) -> None:
    crms = [crm for crm, given in (("hubspot", hubspot), ("salesforce", salesforce)) if given]
    settings = SimpleNamespace(configured_crms=crms)
    monkeypatch.setattr(APP_MODULE, "_settings", settings)
    worker = SimpleNamespace(max_memory_per_child=None, pool_cls="prefork")  # nobody set a bound
    before = mem_rss()
    _bound_pool(sender=worker)
    assert before + growth_mb * 1024 <= worker.max_memory_per_child <= mem_rss() + growth_mb * 1024


@pytest.mark.parametrize("admins", [0, 250_000], ids=["turned off", "set"])
def test_an_admins_own_bound_is_left_as_it_is(admins: int) -> None:
    worker = SimpleNamespace(max_memory_per_child=admins, pool_cls="prefork")  # --max-memory-per-child
    _bound_pool(sender=worker)
    assert worker.max_memory_per_child == admins


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_a_worker_with_no_process_pool_is_not_bound(pool: str) -> None:
    worker = SimpleNamespace(max_memory_per_child=None, pool_cls=pool)  # the demo's worker runs threads
    _bound_pool(sender=worker)
    assert worker.max_memory_per_child is None
