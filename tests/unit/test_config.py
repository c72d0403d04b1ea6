"""Settings come from the environment; a malformed value is one sentence naming the variable."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from connector.bootstrap import routing_clock
from connector.config import load_settings
from connector.errors import ConfigError


def test_defaults_need_no_environment() -> None:
    s = load_settings({})
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.hubspot_base_url == "https://api.hubapi.com"
    assert s.mappings_dir == Path("mappings")
    assert not s.hubspot_configured
    assert not s.salesforce_configured


def test_tokens_never_appear_in_the_settings_repr() -> None:
    s = load_settings({"HUBSPOT_ACCESS_TOKEN": "secret-token-value", "SALESFORCE_ACCESS_TOKEN": "sf-secret"})
    assert "secret-token-value" not in repr(s)
    assert "sf-secret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must be a URL such as https://host:port, not 'localhost:6379'."),
        ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL must start with redis://, rediss:// or unix://"),
        ({"HUBSPOT_BASE_URL": "api.hubapi.com"}, "HUBSPOT_BASE_URL must be a URL"),
        ({"SALESFORCE_CA_BUNDLE": "/nonexistent/ca.pem"}, "SALESFORCE_CA_BUNDLE points at /nonexistent/ca.pem"),
        ({"LEADSCORE_ROUTING_AT": "monday 10:00"},
         "LEADSCORE_ROUTING_AT must be a date and time with its zone, such as 2026-11-23T10:00:00+01:00, not "
         "'monday 10:00'."),
        ({"LEADSCORE_ROUTING_AT": "2026-11-23T10:00"}, "LEADSCORE_ROUTING_AT must be a date and time with its zone"),
    ],
)
def test_a_malformed_setting_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value).startswith(message)


def test_salesforce_needs_both_url_and_token() -> None:
    s = load_settings({"SALESFORCE_INSTANCE_URL": "https://example.my.salesforce.com"})
    with pytest.raises(ConfigError, match=r"^SALESFORCE_ACCESS_TOKEN is not set\.$"):
        s.require_salesforce()


def test_the_log_format_and_level_come_from_the_environment() -> None:
    s = load_settings({"LEADSCORE_LOG_FORMAT": "JSON", "LEADSCORE_LOG_LEVEL": "warning"})
    assert (s.log_format, s.log_level) == ("json", "WARNING")
    with pytest.raises(ConfigError, match=r"^LEADSCORE_LOG_FORMAT must be json, console or auto, not 'xml'\.$"):
        load_settings({"LEADSCORE_LOG_FORMAT": "xml"})


def test_settings_built_in_code_read_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.config import Settings

    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:1/0")
    assert Settings().redis_url == "redis://localhost:6379/0"
    assert load_settings().redis_url == "redis://elsewhere:1/0"
    assert load_settings().redis_url_given


def test_routing_decides_by_the_real_clock_unless_a_moment_is_stated() -> None:
    assert load_settings({}).routing_at is None
    assert routing_clock(None) is time.time
    stated = load_settings({"LEADSCORE_ROUTING_AT": "2026-11-23T10:00:00+01:00"}).routing_at
    assert stated == dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC).timestamp()
    assert routing_clock(stated)() == stated


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:9000", "http://[::1]:8080", "http://127.5.6.7", "https://x.test"]
)
def test_hubspot_base_url_may_be_plain_http_only_on_loopback(url: str) -> None:
    assert load_settings({"HUBSPOT_BASE_URL": url}).hubspot_base_url == url


@pytest.mark.parametrize(
    "url", ["http://api.hubapi.com", "http://10.0.0.5:8080", "http://localhost.evil.example", "ftp://api.hubapi.com"]
)
def test_hubspot_base_url_over_plain_http_elsewhere_is_refused_in_one_sentence(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"HUBSPOT_BASE_URL": url})
    message = str(info.value)
    assert message.startswith("HUBSPOT_BASE_URL must use https://")
    assert message.count(". ") == 0
    assert message.endswith(".")
