"""`leadscore check` says whether the Redis it uses keeps routing's state through a restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from connector.persistence import redis_persistence
from tests.integration.test_cli import run


@pytest.fixture
def server(redis_url: str) -> Iterator[redis.Redis]:
    """The private test server (no persistence); settings changed by a test are put back."""
    client = redis.Redis.from_url(redis_url)
    saved = {name: client.config_get(name)[name] for name in ("appendonly", "save")}
    yield client
    for name, value in saved.items():
        client.config_set(name, value)
    client.acl_deluser("limited")
    client.close()


def test_a_redis_without_persistence_is_named(server: redis.Redis) -> None:
    found = redis_persistence(server)
    assert found.level == "warn"
    assert found.sentence.startswith("Redis keeps nothing through a restart (appendonly no, no snapshots)")
    assert found.sentence.endswith("set appendonly yes.")


def test_snapshots_alone_are_not_enough(server: redis.Redis) -> None:
    server.config_set("save", "3600 1")
    found = redis_persistence(server)
    assert found.level == "warn"
    assert found.sentence.startswith("Redis saves only snapshots (save 3600 1), not every write")


def test_append_only_persistence_passes(server: redis.Redis) -> None:
    server.config_set("appendonly", "yes")
    assert redis_persistence(server).level == "ok"


def test_where_config_is_not_allowed_we_say_we_could_not_tell(server: redis.Redis, redis_url: str) -> None:
    server.acl_setuser("limited", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"],
                       commands=["+@all", "-config"])  # fmt: skip
    limited = redis.Redis.from_url(redis_url.replace("redis://", "redis://limited:s3cret@"))
    found = redis_persistence(limited)
    limited.close()
    assert found.level == "warn"
    assert found.sentence.startswith("could not tell whether Redis keeps its data through a restart")


def test_check_warns_but_does_not_fail_over_persistence(redis_url: str) -> None:
    proc = run(["check"], {"REDIS_URL": redis_url})
    assert "WARN Redis keeps nothing through a restart" in proc.stdout
    assert "FAIL Redis" not in proc.stdout
