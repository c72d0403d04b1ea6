"""The Salesforce error table, exercised through simple-salesforce against `responses`.

Narrow client tests: each answer Salesforce can give is played once, and the test
checks which of the connector's errors comes out (retry later, skip the record, stop
and tell the admin, or a bug with the query).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import requests
import responses

from connector.crm.limits import RetryPolicy
from connector.crm.salesforce import SalesforceAdapter
from connector.crm.salesforce_http import (
    SESSION_EXPIRED,
    OAuthCredentials,
    Outcome,
    SalesforceQueryBug,
    outcome_for,
    parse_limit_info,
)
from connector.errors import RecordError, RetryLater, StopSync
from connector.mappings.salesforce import SalesforceMapping, load_salesforce_mapping

ROOT = Path(__file__).resolve().parents[2]
URL = "https://org.example.test"
API = f"{URL}/services/data/v59.0"
TOKEN_URL = f"{URL}/services/oauth2/token"
LEAD_ID = "00Q8d0000000001AAA"
LEAD_ID2 = "00Q8d0000000002AAA"
FAST = RetryPolicy(attempts=3, total_seconds=5, base=0.001, cap=0.01)


@pytest.fixture
def mapping() -> SalesforceMapping:
    return load_salesforce_mapping(ROOT / "mappings" / "salesforce.yaml")


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def make(
    mapping: SalesforceMapping,
    client: fakeredis.FakeRedis,
    *,
    oauth: OAuthCredentials | None = None,
    bearer: str = "t0",
) -> SalesforceAdapter:
    return SalesforceAdapter(
        instance_url=URL, token=bearer, mapping=mapping, redis=client, oauth=oauth, retry_policy=FAST, timeout=5
    )


def sf_error(status: int, code: str, message: str = "nope", **headers: str) -> dict[str, Any]:
    return {"status": status, "json": [{"message": message, "errorCode": code, "fields": []}], "headers": headers}


def query_ok(*ids: str, **headers: str) -> dict[str, Any]:
    records = [
        {"attributes": {"type": "Lead"}, "Id": i, "OwnerId": "0058d0000000001AAA", "Email": "a@b.test"} for i in ids
    ]
    return {"json": {"totalSize": len(records), "done": True, "records": records}, "headers": headers}


QUERY = f"{API}/query/"


@pytest.mark.parametrize(
    ("status", "code", "message", "outcome"),
    [
        (401, "INVALID_SESSION_ID", "Session expired or invalid", Outcome.REFRESH),
        (401, "INVALID_AUTH_HEADER", "", Outcome.STOP_AUTH),
        (403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", Outcome.STOP_DAILY),
        (403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.", Outcome.RETRY),
        (403, "INSUFFICIENT_ACCESS", "", Outcome.STOP_REFUSED),
        (400, "MALFORMED_QUERY", "", Outcome.BUG),
        (400, "INVALID_FIELD", "", Outcome.STOP_FIELD),
        (400, "INVALID_QUERY_LOCATOR", "", Outcome.STOP_LOCATOR),
        (400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", "", Outcome.RECORD),
        (404, "NOT_FOUND", "", Outcome.RECORD),
        (500, "UNKNOWN_EXCEPTION", "", Outcome.RETRY),
        (503, "SERVER_UNAVAILABLE", "", Outcome.RETRY),
        (502, None, "", Outcome.RETRY),
    ],
)
def test_the_error_table(status: int, code: str | None, message: str, outcome: Outcome) -> None:
    assert outcome_for(status, code, message) is outcome


def test_an_expired_session_is_refreshed_once_and_the_call_succeeds(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, **sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid"))
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "t1", "instance_url": URL, "token_type": "Bearer"})
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID))
    adapter = make(mapping, fake_redis, oauth=OAuthCredentials(client_id="cid", client_secret="cs", refresh_token="rt"))

    page = adapter.read_page("Lead", None, since=None)

    assert [lead.id for lead in page.leads] == [LEAD_ID]
    token_call = rsps.calls[1].request
    assert "grant_type=refresh_token" in str(token_call.body)
    assert rsps.calls[2].request.headers["Authorization"] == "Bearer t1"
    assert adapter.api_calls == 3


def test_a_refreshed_token_is_shared_with_other_workers_through_redis(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, **sf_error(401, "INVALID_SESSION_ID"))
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "t1"})
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID))
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID))
    oauth = OAuthCredentials(client_id="cid", client_secret="cs")
    make(mapping, fake_redis, oauth=oauth).read_page("Lead", None, since=None)

    other = make(mapping, fake_redis, oauth=oauth)  # started with the same configured token
    other.read_page("Lead", None, since=None)

    assert rsps.calls[3].request.headers["Authorization"] == "Bearer t1"
    assert sum(1 for c in rsps.calls if c.request.url == TOKEN_URL) == 1
    assert "client_credentials" in str(rsps.calls[1].request.body)


def _everything_in(client: fakeredis.FakeRedis) -> bytes:
    """Every key and every value in Redis, as one blob (strings and hashes are what the adapter writes)."""
    blob = b""
    for key in client.keys("*"):
        blob += key
        kind = client.type(key)
        if kind == b"string":
            blob += client.get(key) or b""
        elif kind == b"hash":
            blob += b"".join(k + v for k, v in client.hgetall(key).items())
    return blob


def test_a_refreshed_token_is_kept_in_redis_only_encrypted(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, **sf_error(401, "INVALID_SESSION_ID"))
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "00D-live-session-t1"})
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID))
    make(mapping, fake_redis, oauth=OAuthCredentials(client_id="cid", client_secret="cs")).read_page(
        "Lead", None, since=None
    )
    assert rsps.calls[2].request.headers["Authorization"] == "Bearer 00D-live-session-t1"
    stored = _everything_in(fake_redis)
    assert b"session" in stored  # the shared entry exists ...
    assert b"00D-live-session-t1" not in stored  # ... but not the token in clear text


def test_a_worker_without_the_same_credentials_cannot_use_the_shared_token(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, **sf_error(401, "INVALID_SESSION_ID"))
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "t1"})
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID))
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID))
    make(mapping, fake_redis, oauth=OAuthCredentials(client_id="cid", client_secret="cs")).read_page(
        "Lead", None, since=None
    )

    stranger = make(mapping, fake_redis, oauth=OAuthCredentials(client_id="cid", client_secret="another-secret"))
    stranger.read_page("Lead", None, since=None)

    assert rsps.calls[3].request.headers["Authorization"] == "Bearer t0"  # its own configured token, not t1


def test_a_token_stored_in_clear_text_by_an_older_version_is_dropped(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    import hashlib
    import json

    key = "leadscore:salesforce:default:session"
    fake_redis.set(key, json.dumps({"for": hashlib.sha256(b"t0").hexdigest()[:16], "token": "old-clear", "at": 1}))
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID))
    make(mapping, fake_redis, oauth=OAuthCredentials(client_id="cid", client_secret="cs")).read_page(
        "Lead", None, since=None
    )
    assert rsps.calls[0].request.headers["Authorization"] == "Bearer t0"
    assert b"old-clear" not in _everything_in(fake_redis)


def test_a_new_configured_token_wins_over_an_old_refreshed_one(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, **sf_error(401, "INVALID_SESSION_ID"))
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "t1"})
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID))
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID))
    oauth = OAuthCredentials(client_id="cid", client_secret="cs")
    make(mapping, fake_redis, oauth=oauth).read_page("Lead", None, since=None)

    make(mapping, fake_redis, oauth=oauth, bearer="fresh-from-admin").read_page("Lead", None, since=None)

    assert rsps.calls[3].request.headers["Authorization"] == "Bearer fresh-from-admin"


def test_an_expired_session_without_refresh_credentials_stops_the_sync(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, **sf_error(401, "INVALID_SESSION_ID"))
    with pytest.raises(StopSync) as info:
        make(mapping, fake_redis).read_page("Lead", None, since=None)
    assert str(info.value) == SESSION_EXPIRED


def test_a_refused_refresh_stops_the_sync_without_revealing_secrets(
    mapping: SalesforceMapping,
    fake_redis: fakeredis.FakeRedis,
    rsps: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    rsps.add(responses.GET, QUERY, **sf_error(401, "INVALID_SESSION_ID"))
    rsps.add(
        responses.POST,
        TOKEN_URL,
        status=400,
        json={"error": "invalid_grant", "error_description": "expired access/refresh token"},
    )
    oauth = OAuthCredentials(client_id="cid", client_secret="very-secret", refresh_token="refresh-secret")
    with pytest.raises(StopSync) as info:
        make(mapping, fake_redis, oauth=oauth, bearer="access-secret").read_page("Lead", None, since=None)
    message = str(info.value)
    assert message.startswith(SESSION_EXPIRED)
    assert "invalid_grant" in message
    for secret in ("very-secret", "refresh-secret", "access-secret"):
        assert secret not in message
        assert secret not in caplog.text
        assert secret not in repr(oauth)


def test_a_session_that_expires_again_after_the_refresh_stops_the_sync(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, **sf_error(401, "INVALID_SESSION_ID"))
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "t1"})
    rsps.add(responses.GET, QUERY, **sf_error(401, "INVALID_SESSION_ID"))
    with pytest.raises(StopSync, match="session expired"):
        make(mapping, fake_redis, oauth=OAuthCredentials(client_id="c", client_secret="s")).read_page(
            "Lead", None, since=None
        )


def test_the_daily_request_limit_stops_the_sync_and_says_when_to_retry(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(
        responses.GET,
        QUERY,
        **sf_error(
            403,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
            **{"Sforce-Limit-Info": "api-usage=15001/15000"},
        ),
    )
    with pytest.raises(StopSync) as info:
        make(mapping, fake_redis).read_page("Lead", None, since=None)
    assert "rolling 24 hours" in str(info.value)
    assert "api-usage 15001/15000" in str(info.value)
    assert info.value.resume_at is not None


@pytest.mark.parametrize(
    "failure",
    [
        sf_error(503, "SERVER_UNAVAILABLE", "Server unavailable"),
        sf_error(500, "UNKNOWN_EXCEPTION", "An unexpected error occurred"),
        sf_error(403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded."),
        {"body": requests.ConnectionError("connection reset")},
        {"body": requests.ReadTimeout("read timed out")},
    ],
)
def test_transient_failures_are_retried_to_the_same_result(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock, failure: dict[str, Any]
) -> None:
    rsps.add(responses.GET, QUERY, **failure)
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID, LEAD_ID2))
    adapter = make(mapping, fake_redis)
    page = adapter.read_page("Lead", None, since=None)
    assert [lead.id for lead in page.leads] == [LEAD_ID, LEAD_ID2]
    assert adapter.api_calls == 2


def test_transient_failures_that_persist_become_retry_later(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, body=requests.ConnectionError("Connection refused"))
    with pytest.raises(RetryLater, match=r"cannot reach Salesforce at org\.example\.test"):
        make(mapping, fake_redis).read_page("Lead", None, since=None)


def test_a_malformed_query_is_a_bug_reported_with_the_query(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, **sf_error(400, "MALFORMED_QUERY", "unexpected token: FROM"))
    with pytest.raises(SalesforceQueryBug) as info:
        make(mapping, fake_redis).read_page("Lead", None, since=1_767_225_600)
    text = str(info.value)
    assert "MALFORMED_QUERY: unexpected token: FROM" in text
    assert "FROM Lead WHERE IsConverted = false AND SystemModstamp >= 2026-01-01T00:00:00Z" in text


def test_a_missing_field_stops_the_sync_and_points_at_setup(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, **sf_error(400, "INVALID_FIELD", "No such column 'Lead_Score__c' on entity 'Lead'."))
    with pytest.raises(StopSync, match=r"Lead_Score__c.*leadscore setup"):
        make(mapping, fake_redis).read_page("Lead", None, since=None)


def test_one_refused_record_is_reported_while_the_others_are_written(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(
        responses.PATCH,
        f"{API}/composite/sobjects",
        json=[
            {"id": LEAD_ID, "success": True, "errors": []},
            {
                "success": False,
                "errors": [
                    {"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "Score too high", "fields": []}
                ],
            },
        ],
    )
    report = make(mapping, fake_redis).write_scores(
        "Lead", {LEAD_ID: {"score": "87", "band": "hot"}, LEAD_ID2: {"score": "999"}}
    )
    assert report.written == [LEAD_ID]
    assert report.failed == [(LEAD_ID2, "FIELD_CUSTOM_VALIDATION_EXCEPTION: Score too high")]
    body = rsps.calls[0].request.body
    assert b'"allOrNone": false' in body or b'"allOrNone":false' in body
    assert b'"Lead_Score__c": 87' in body or b'"Lead_Score__c":87' in body


def test_a_value_that_is_not_a_number_is_reported_and_not_sent(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.PATCH, f"{API}/composite/sobjects", json=[{"id": LEAD_ID, "success": True, "errors": []}])
    report = make(mapping, fake_redis).write_scores("Lead", {LEAD_ID: {"score": "87"}, LEAD_ID2: {"score": "high"}})
    assert report.written == [LEAD_ID]
    assert report.failed == [(LEAD_ID2, "score must be a number, not 'high'")]


def test_a_record_refused_by_a_single_call_is_a_record_error(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(responses.GET, QUERY, **query_ok(LEAD_ID))
    rsps.add(
        responses.PATCH,
        f"{API}/sobjects/Lead/{LEAD_ID}",
        **sf_error(400, "INACTIVE_OWNER_OR_USER", "operation performed with inactive user"),
    )
    with pytest.raises(RecordError) as info:
        make(mapping, fake_redis).set_owner("Lead", LEAD_ID, "0058d0000000009AAA", expected="0058d0000000001AAA")
    assert info.value.record_id == LEAD_ID
    assert "INACTIVE_OWNER_OR_USER" in info.value.message
    assert rsps.calls[1].request.headers["Sforce-Auto-Assign"] == "FALSE"


def test_the_api_floor_stops_the_sync_before_the_daily_limit(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis, rsps: responses.RequestsMock
) -> None:
    rsps.add(
        responses.GET,
        QUERY,
        json={"totalSize": 1, "done": False, "nextRecordsUrl": "/services/data/v59.0/query/01gX-2000", "records": []},
        headers={"Sforce-Limit-Info": "api-usage=9000/10000"},
    )
    adapter = make(mapping, fake_redis)
    page = adapter.read_page("Lead", None, since=None)
    assert page.next_cursor == "/services/data/v59.0/query/01gX-2000"
    with pytest.raises(StopSync) as info:
        adapter.read_page("Lead", page.next_cursor, since=None)
    assert "9,000 of the org's 10,000 calls" in str(info.value)
    assert "leave 10% for other integrations" in str(info.value)
    assert adapter.api_calls == 1
    # Another worker on the same org sees the same usage through Redis.
    with pytest.raises(StopSync):
        make(mapping, fake_redis).read_page("Lead", None, since=None)


def test_a_cursor_that_is_not_a_query_locator_is_refused(
    mapping: SalesforceMapping, fake_redis: fakeredis.FakeRedis
) -> None:
    with pytest.raises(ValueError, match="not a Salesforce query cursor"):
        make(mapping, fake_redis).read_page("Lead", "https://elsewhere.test/steal", since=None)


def test_limit_info_parsing() -> None:
    assert parse_limit_info("api-usage=18/5000") == (18, 5000)
    assert parse_limit_info("api-usage=25/5000; per-app-api-usage=17/250(appName=sample)") == (25, 5000)
    assert parse_limit_info(None) is None
    assert parse_limit_info("garbage") is None
