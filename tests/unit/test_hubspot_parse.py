"""The lean parse of v4 association batch reads (connector.crm.hubspot_http.parse_associations)."""

from __future__ import annotations

import orjson

from connector.crm.hubspot_http import parse_associations

# A v4 batch read answer as the spec shapes it (BatchResponsePublicAssociationMultiWithLabel): one
# input with a next page of its associations, one without, one error.
BODY = {
    "status": "COMPLETE",
    "results": [
        {
            "from": {"id": "101"},
            "to": [
                {
                    "toObjectId": "9001",
                    "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 198, "label": None}],
                },
                {
                    "toObjectId": 9002,
                    "associationTypes": [{"category": "USER_DEFINED", "typeId": 7, "label": "Champion"}],
                },
            ],
            "paging": {"next": {"after": "MTAw", "link": "?after=MTAw"}},
        },
        {"from": {"id": "102"}, "to": []},
    ],
    "numErrors": 1,
    "errors": [
        {"status": "error", "category": "OBJECT_NOT_FOUND", "message": "no such contact", "context": {"id": ["103"]}},
    ],
    "startedAt": "2026-12-05T10:00:00.000Z",
    "completedAt": "2026-12-05T10:00:00.100Z",
}


def test_each_association_is_read_as_its_id_and_the_rest_of_the_answer_as_it_is() -> None:
    body = parse_associations(orjson.dumps(BODY))
    assert [r["to"] for r in body["results"]] == [["9001", "9002"], []]
    assert [r["from"]["id"] for r in body["results"]] == ["101", "102"]
    assert body["results"][0]["paging"]["next"]["after"] == "MTAw"
    assert body["errors"] == BODY["errors"]
    assert body["numErrors"] == 1


def test_an_answer_that_is_not_json_becomes_a_message_like_any_other() -> None:
    assert parse_associations(b"<html>Bad gateway</html>") == {"message": "<html>Bad gateway</html>"}
    assert parse_associations(b"\xff\xfe") == {"message": "\ufffd\ufffd"}
    assert parse_associations(b"") == {}
