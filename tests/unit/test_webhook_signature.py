"""HubSpot signature v3, delivery parsing and Salesforce outbound messages, without I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest

from connector.webhooks import (
    Rejected,
    parse_hubspot_delivery,
    parse_outbound_message,
    same_org,
    sign_hubspot_v3,
    signable_uri,
    verify_hubspot_v3,
)

SECRET = "a1b2c3d4-e5f6-7890-abcd-ef1234567890"
URI = "https://hooks.example.com/webhooks/hubspot"
NOW = 1_800_000_000.0
BODY = b'[{"eventId":1,"subscriptionType":"contact.creation","objectId":7}]'


def _signed(body: bytes = BODY, uri: str = URI, ts_ms: int = int(NOW * 1000)) -> tuple[str, str]:
    return str(ts_ms), sign_hubspot_v3(SECRET, "POST", uri, body, ts_ms)


def test_the_signature_is_base64_hmac_sha256_of_method_uri_body_and_timestamp() -> None:
    expected = base64.b64encode(
        hmac.new(SECRET.encode(), b"POST" + URI.encode() + BODY + b"1800000000000", hashlib.sha256).digest()
    ).decode()
    assert sign_hubspot_v3(SECRET, "POST", URI, BODY, 1_800_000_000_000) == expected


def test_a_correctly_signed_request_within_the_window_passes() -> None:
    ts, sig = _signed()
    verify_hubspot_v3(SECRET, "POST", URI, BODY, ts, sig, NOW)


@pytest.mark.parametrize("skew_s", [-299.0, 299.0])
def test_timestamps_up_to_five_minutes_away_pass(skew_s: float) -> None:
    ts, sig = _signed(ts_ms=int((NOW + skew_s) * 1000))
    verify_hubspot_v3(SECRET, "POST", URI, BODY, ts, sig, NOW)


@pytest.mark.parametrize("skew_s", [-301.0, 301.0, -86400.0, 86400.0])
def test_stale_and_future_timestamps_are_rejected_even_when_signed(skew_s: float) -> None:
    ts, sig = _signed(ts_ms=int((NOW + skew_s) * 1000))
    with pytest.raises(Rejected) as info:
        verify_hubspot_v3(SECRET, "POST", URI, BODY, ts, sig, NOW)
    assert (info.value.status, info.value.reason) == (401, "timestamp")


def test_a_body_altered_after_signing_is_rejected() -> None:
    ts, sig = _signed()
    altered = BODY.replace(b'"objectId":7', b'"objectId":8')
    with pytest.raises(Rejected) as info:
        verify_hubspot_v3(SECRET, "POST", URI, altered, ts, sig, NOW)
    assert info.value.reason == "signature"


def test_a_signature_made_with_another_secret_is_rejected() -> None:
    ts = str(int(NOW * 1000))
    forged = sign_hubspot_v3("not-the-secret", "POST", URI, BODY, ts)
    with pytest.raises(Rejected, match="does not match"):
        verify_hubspot_v3(SECRET, "POST", URI, BODY, ts, forged, NOW)


def test_a_timestamp_changed_after_signing_is_rejected() -> None:
    ts, sig = _signed()
    with pytest.raises(Rejected, match="does not match"):
        verify_hubspot_v3(SECRET, "POST", URI, BODY, str(int(ts) + 1), sig, NOW)


def test_another_url_is_rejected() -> None:
    ts, sig = _signed()
    with pytest.raises(Rejected, match="does not match"):
        verify_hubspot_v3(SECRET, "POST", "https://evil.example.com/webhooks/hubspot", BODY, ts, sig, NOW)


@pytest.mark.parametrize(
    ("timestamp", "signature"), [(None, "x"), ("123", None), ("", ""), ("soon", "x"), ("1" * 40, "x")]
)
def test_missing_or_malformed_headers_are_rejected(timestamp: str | None, signature: str | None) -> None:
    with pytest.raises(Rejected) as info:
        verify_hubspot_v3(SECRET, "POST", URI, BODY, timestamp, signature, NOW)
    assert info.value.status == 401


def test_the_signed_uri_has_hubspots_escapes_decoded() -> None:
    assert signable_uri("https://h.example.com/hook?a=b%3Ac%2Fd%40e%21%24%27%28%29%2A%2C%3B%3f") == (
        "https://h.example.com/hook?a=b:c/d@e!$'()*,;?"
    )
    assert signable_uri("https://h.example.com/hook?x=%20%2B") == "https://h.example.com/hook?x=%20%2B"
    ts, sig = _signed(uri="https://h.example.com/hook?portal=1:2")
    verify_hubspot_v3(SECRET, "POST", "https://h.example.com/hook?portal=1%3A2", BODY, ts, sig, NOW)


def test_contact_events_become_rescores_and_deletions_purges() -> None:
    events = [
        {"eventId": 1, "subscriptionType": "contact.creation", "objectId": 11},
        {"eventId": 2, "subscriptionType": "contact.propertyChange", "objectId": 12, "propertyName": "jobtitle"},
        {"eventId": 3, "subscriptionType": "contact.propertyChange", "objectId": 13, "propertyName": "lead_score"},
        {"eventId": 4, "subscriptionType": "contact.deletion", "objectId": 14},
        {"eventId": 5, "subscriptionType": "contact.privacyDeletion", "objectId": 15},
        {"eventId": 6, "subscriptionType": "contact.merge", "objectId": 16, "primaryObjectId": 16,
         "mergedObjectIds": [16, 17]},
        {"eventId": 7, "subscriptionType": "contact.associationChange", "fromObjectId": 18, "toObjectId": 99},
        {"eventId": 8, "subscriptionType": "deal.creation", "objectId": 19},
        {"subscriptionType": "contact.creation", "objectId": 20},
    ]  # fmt: skip
    intake = parse_hubspot_delivery(orjson.dumps(events), ignored_properties={"lead_score"})
    assert intake.rescores == [("1", "contact", "11"), ("2", "contact", "12"), ("6", "contact", "16"),
                               ("7", "contact", "18")]  # fmt: skip
    assert intake.purges == [("4", "hubspot:contact:14"), ("5", "hubspot:contact:15"),
                             ("6:merged:1", "hubspot:contact:17")]  # fmt: skip
    assert intake.ignored == 3


def test_a_new_engagement_comes_as_a_generic_object_creation_and_is_queued_for_its_contacts() -> None:
    events = [
        {"eventId": 21, "subscriptionType": "object.creation", "objectTypeId": "0-48", "objectId": 501},
        {"eventId": 22, "subscriptionType": "object.creation", "objectTypeId": "0-49", "objectId": 502},
        {"eventId": 23, "subscriptionType": "object.creation", "objectTypeId": "0-1", "objectId": 31},
        {"eventId": 24, "subscriptionType": "object.creation", "objectTypeId": "0-3", "objectId": 77},  # a deal
    ]  # fmt: skip
    intake = parse_hubspot_delivery(orjson.dumps(events))
    assert intake.rescores == [("21", "engagement", "calls:501"), ("22", "engagement", "emails:502"),
                               ("23", "contact", "31")]  # fmt: skip
    assert intake.ignored == 1


@pytest.mark.parametrize("body", [b"not json", b'{"eventId": 1}', b"{"])
def test_a_body_that_is_not_a_json_array_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(Rejected) as info:
        parse_hubspot_delivery(body)
    assert info.value.status == 400


def _outbound(org: str = "00D8d0000000001EAA", notes: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{org}</OrganizationId><ActionId>04k000000000001AAA</ActionId>"
        f"{notes}</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


def _note(note_id: str, kind: str, fields: str) -> str:
    return (
        f"<Notification><Id>{note_id}</Id>"
        f'<sObject xsi:type="sf:{kind}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{fields}</sObject>'
        "</Notification>"
    )


def test_outbound_messages_name_leads_contacts_and_the_people_of_new_activities() -> None:
    body = _outbound(notes="".join([
        _note("04l000000000001", "Lead", "<sf:Id>00Q000000000001AAA</sf:Id><sf:Title>CTO</sf:Title>"),
        _note("04l000000000002", "Contact", "<sf:Id>003000000000002AAA</sf:Id>"),
        _note("04l000000000003", "Task", "<sf:Id>00T000000000003AAA</sf:Id><sf:WhoId>003000000000009AAA</sf:WhoId>"),
        _note("04l000000000004", "Event", "<sf:Id>00U000000000004AAA</sf:Id><sf:WhoId>00Q000000000008AAA</sf:WhoId>"),
        _note("04l000000000005", "Task", "<sf:Id>00T000000000005AAA</sf:Id>"),
        _note("04l000000000006", "Opportunity", "<sf:Id>006000000000006AAA</sf:Id>"),
    ]))  # fmt: skip
    message = parse_outbound_message(body)
    assert message.organization_id == "00D8d0000000001EAA"
    assert message.intake.rescores == [
        ("04l000000000001", "Lead", "00Q000000000001AAA"),
        ("04l000000000002", "Contact", "003000000000002AAA"),
        ("04l000000000003", "Contact", "003000000000009AAA"),
        ("04l000000000004", "Lead", "00Q000000000008AAA"),
    ]
    assert message.intake.ignored == 2


def test_a_document_type_declaration_is_refused_before_parsing() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><lolz>&lol2;</lolz>'
    )
    with pytest.raises(Rejected, match="document type"):
        parse_outbound_message(bomb)


@pytest.mark.parametrize("body", [b"<not-closed>", b"<a/>", _outbound(org="")])
def test_what_is_not_an_outbound_message_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(Rejected) as info:
        parse_outbound_message(body)
    assert info.value.status == 400


def test_org_ids_match_in_their_15_and_18_character_forms() -> None:
    assert same_org("00D8d0000000001EAA", "00D8d0000000001EAA")
    assert same_org("00D8d0000000001", "00D8d0000000001EAA")
    assert not same_org("00D8d0000000001EAA", "00D8d0000000002EAA")
    assert not same_org("00D8d0000000001EAA", "00D8d0000000001XYZ")
