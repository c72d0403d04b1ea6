"""The SOQL subset: what parses, what Salesforce would refuse and with which code, and what matches."""

# Building SOQL text from values is what these tests exercise.
# ruff: noqa: S608

from __future__ import annotations

import pytest

from sandbox import sf_ids, soql
from sandbox.salesforce import build_catalog
from sandbox.soql import SObjectType


class Catalog:
    def __init__(self) -> None:
        self.objects = build_catalog()

    def sobject(self, name: str) -> SObjectType | None:
        return next((o for k, o in self.objects.items() if k.lower() == name.lower()), None)


CATALOG = Catalog()
LEAD_ID = sf_ids.make_id(sf_ids.LEAD, 7)


def parse(text: str) -> soql.Query:
    return soql.parse(text, CATALOG)


@pytest.mark.parametrize(
    "text",
    [
        "SELECT Id FROM Lead",
        "select id, name from lead",
        "SELECT Id, Email FROM Lead WHERE IsConverted = false",
        "SELECT Id FROM Lead WHERE SystemModstamp > 2026-01-01T00:00:00Z ORDER BY SystemModstamp",
        "SELECT Id FROM Lead WHERE SystemModstamp >= 2026-01-01T00:00:00+00:00",
        "SELECT Id FROM Lead WHERE SystemModstamp < 2026-01-01T00:00:00.000Z",
        "SELECT Id FROM Lead WHERE SystemModstamp > 2026-01-01T02:00:00+0200",
        "SELECT Id FROM Task WHERE ActivityDate >= 2026-01-01",
        f"SELECT Id, WhoId FROM Task WHERE WhoId IN ('{LEAD_ID}', '{LEAD_ID[:15]}')",
        "SELECT Id FROM Lead WHERE Country NOT IN ('Germany', 'Austria')",
        "SELECT Id FROM Lead WHERE Email LIKE '%@gmail.com'",
        "SELECT Id FROM Lead WHERE (Country = 'Germany' OR Country = 'Austria') AND NumberOfEmployees > 50",
        "SELECT Id FROM Lead WHERE NOT Country = 'Germany'",
        "SELECT Id FROM Lead WHERE Country = 'Germany' AND (NOT Rating = null)",
        "SELECT Id FROM Lead WHERE AnnualRevenue >= 1000000.50 AND Industry != null",
        "SELECT Id FROM Lead WHERE LastName = 'O\\'Brien'",
        "SELECT COUNT() FROM Contact WHERE IsDeleted = false",
        "SELECT Id, Account.Name, Account.Owner.Email FROM Contact ORDER BY Account.Name DESC NULLS LAST",
        "SELECT Id, Campaign.Name, Campaign.Type FROM CampaignMember WHERE HasResponded = true",
        "SELECT Id, Name, Division FROM User WHERE IsActive = true ORDER BY Name LIMIT 10 OFFSET 5",
        "SELECT Id FROM Lead WHERE Status <> 'Closed - Not Converted'",
    ],
)
def test_valid_queries_parse(text: str) -> None:
    assert parse(text).sobject.name in {"Lead", "Contact", "Task", "CampaignMember", "User"}


@pytest.mark.parametrize(
    ("text", "code", "detail"),
    [
        ("SELECT FROM Lead", "MALFORMED_QUERY", "unexpected token: 'FROM'"),
        ("SELECT Id Lead", "MALFORMED_QUERY", "unexpected token: 'Lead'"),
        ("SELECT Id FROM Lead WHERE", "MALFORMED_QUERY", "unexpected token: '<EOF>'"),
        ("SELECT Id FROM Lead WHERE Country = 'A' AND City = 'B' OR State = 'C'", "MALFORMED_QUERY", "'OR'"),
        ("SELECT Id FROM Lead WHERE Country = 'A' AND NOT City = 'B'", "MALFORMED_QUERY", "'NOT'"),
        ("SELECT Id FROM Lead WHERE Country = 'unterminated", "MALFORMED_QUERY", ""),
        ("SELECT Id FROM Lead WHERE Country = 'A' LIMIT x", "MALFORMED_QUERY", "'x'"),
        ("SELECT Id FROM Lead ORDER Id", "MALFORMED_QUERY", "'Id'"),
        ("SELECT Id, Id FROM Lead", "MALFORMED_QUERY", "duplicate field selected: Id"),
        ("", "MALFORMED_QUERY", ""),
        ("SELECT Id FROM Leads", "INVALID_TYPE", "sObject type 'Leads' is not supported."),
        ("SELECT Score FROM Lead", "INVALID_FIELD", "No such column 'Score' on entity 'Lead'."),
        ("SELECT Lead_Score__c FROM Lead", "INVALID_FIELD", "No such column 'Lead_Score__c'"),
        ("SELECT Owner.Nope FROM Lead", "INVALID_FIELD", "No such column 'Nope' on entity 'User'."),
        ("SELECT Acount.Name FROM Contact", "INVALID_FIELD", "Didn't understand relationship 'Acount'"),
        (
            "SELECT Id FROM Lead WHERE SystemModstamp > '2026-01-01T00:00:00Z'",
            "INVALID_FIELD",
            "must be of type dateTime and should not be enclosed in quotes",
        ),
        ("SELECT Id FROM Lead WHERE IsConverted = 'false'", "INVALID_FIELD", "must be of type boolean"),
        ("SELECT Id FROM Lead WHERE Country = Germany", "MALFORMED_QUERY", "unexpected token: 'Germany'"),
        ("SELECT Id FROM Lead WHERE NumberOfEmployees > '50'", "INVALID_FIELD", "must be of type integer"),
        ("SELECT Id FROM Lead WHERE Country = 5", "INVALID_FIELD", "must be of type string and should be enclosed"),
        ("SELECT Id FROM Task WHERE ActivityDate > 2026-01-01T00:00:00Z", "INVALID_FIELD", "must be of type date"),
        ("SELECT Id FROM Lead WHERE SystemModstamp > 2026-01-01T00:00:00", "MALFORMED_QUERY", ""),
        ("SELECT Id FROM Lead WHERE Id = 'abc'", "INVALID_QUERY_FILTER_OPERATOR", "invalid ID field: abc"),
        ("SELECT Id FROM Lead WHERE IsConverted > false", "INVALID_FIELD", "invalid operator on boolean field"),
        ("SELECT Id FROM Lead WHERE NumberOfEmployees LIKE '5%'", "INVALID_FIELD", "invalid operator"),
        ("SELECT Id FROM Lead WHERE Country = 'a\\qb'", "MALFORMED_QUERY", "illegal escape sequence"),
        ("SELECT Id FROM Lead OFFSET 2001", "NUMBER_OUTSIDE_VALID_RANGE", "Maximum SOQL offset allowed is 2000"),
    ],
)
def test_invalid_queries_fail_with_salesforces_error_code(text: str, code: str, detail: str) -> None:
    with pytest.raises(soql.SoqlError) as err:
        parse(text)
    assert err.value.error_code == code
    assert detail in err.value.message


def test_error_messages_point_at_the_offending_token() -> None:
    with pytest.raises(soql.SoqlError) as err:
        parse("SELECT Id, Bogus FROM Lead")
    lines = err.value.message.split("\n")
    assert lines[1] == "SELECT Id, Bogus FROM Lead"
    assert lines[2] == "           ^"
    assert lines[3] == "ERROR at Row:1:Column:12"


LEADS = [
    {"Id": sf_ids.make_id(sf_ids.LEAD, 1), "Country": "Germany", "LastName": "O'Brien", "Email": "a@gmail.com",
     "NumberOfEmployees": 10, "SystemModstamp": soql.parse_datetime("2026-01-01T00:00:00Z"), "IsConverted": False,
     "Rating": None},
    {"Id": sf_ids.make_id(sf_ids.LEAD, 2), "Country": "austria", "LastName": "Weber", "Email": "b@corp.example",
     "NumberOfEmployees": 500, "SystemModstamp": soql.parse_datetime("2026-03-01T12:00:00Z"), "IsConverted": False,
     "Rating": "Hot"},
    {"Id": sf_ids.make_id(sf_ids.LEAD, 3), "Country": None, "LastName": "Smith_x", "Email": None,
     "NumberOfEmployees": None, "SystemModstamp": soql.parse_datetime("2026-06-01T00:00:00Z"), "IsConverted": False,
     "Rating": "Cold"},
]  # fmt: skip


@pytest.mark.parametrize(
    ("where", "matches"),
    [
        ("Country = 'GERMANY'", [1]),
        ("Country IN ('germany', 'Austria')", [1, 2]),
        ("Country NOT IN ('Germany')", [2, 3]),
        ("Country != 'Germany'", [2, 3]),
        ("Country = null", [3]),
        ("Country != null", [1, 2]),
        ("Email LIKE '%@GMAIL.com'", [1]),
        ("LastName LIKE 'Smith\\_%'", [3]),
        ("LastName LIKE 'Smith_'", []),
        ("LastName = 'O\\'Brien'", [1]),
        ("NumberOfEmployees > 10", [2]),
        ("NumberOfEmployees >= 10 AND NumberOfEmployees <= 500", [1, 2]),
        ("SystemModstamp > 2026-01-01T00:00:00Z", [2, 3]),
        ("SystemModstamp >= 2026-01-01T01:00:00+01:00", [1, 2, 3]),
        ("SystemModstamp < 2026-03-01T12:00:00.000Z", [1]),
        ("(Country = 'Germany' OR Rating = 'Cold') AND IsConverted = false", [1, 3]),
        ("NOT (Country = 'Germany' OR Rating = 'Cold')", [2]),
        (f"Id = '{sf_ids.make_id(sf_ids.LEAD, 2)[:15]}'", [2]),
    ],
)
def test_conditions_match_like_salesforce(where: str, matches: list[int]) -> None:
    q = parse(f"SELECT Id FROM Lead WHERE {where}")
    pred = soql.compile_predicate(q.where)
    assert [k + 1 for k, rec in enumerate(LEADS) if pred(rec)] == matches


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("NumberOfEmployees", [3, 1, 2]),
        ("NumberOfEmployees DESC", [2, 1, 3]),
        ("NumberOfEmployees ASC NULLS LAST", [1, 2, 3]),
        ("Country", [3, 2, 1]),
        ("Rating DESC NULLS FIRST", [1, 2, 3]),
    ],
)
def test_order_by_places_nulls_and_ignores_case(order: str, expected: list[int]) -> None:
    q = parse(f"SELECT Id FROM Lead ORDER BY {order}")
    ranked = sorted(LEADS, key=soql.sort_key(q.order_by))
    assert [LEADS.index(r) + 1 for r in ranked] == expected


def test_constant_conditions_fold_away() -> None:
    q = parse("SELECT Id FROM Lead WHERE IsConverted = false AND Country = 'Germany'")
    folded = soql.simplify(q.where, {"IsConverted": False})
    assert isinstance(folded, soql.Compare)
    assert folded.ref.path == ("Country",)
    assert soql.simplify(parse("SELECT Id FROM Lead WHERE IsConverted = false").where, {"IsConverted": False}) is None
    never = soql.simplify(parse("SELECT Id FROM Lead WHERE IsConverted = true").where, {"IsConverted": False})
    assert never == soql.Const(False)


def test_projection_nests_parents_and_formats_datetimes() -> None:
    q = parse("SELECT Id, SystemModstamp, Account.Name FROM Contact")
    rec = {
        "Id": sf_ids.make_id(sf_ids.CONTACT, 4),
        "SystemModstamp": soql.parse_datetime("2026-01-02T03:04:05.678Z"),
        "Account": {"Id": sf_ids.make_id(sf_ids.ACCOUNT, 9), "Name": "Atlas Motors GmbH"},
    }
    out = soql.project(q, rec, "59.0")
    assert out["attributes"] == {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{rec['Id']}"}
    assert out["SystemModstamp"] == "2026-01-02T03:04:05.678+0000"
    assert out["Account"]["Name"] == "Atlas Motors GmbH"
    assert out["Account"]["attributes"]["type"] == "Account"
    assert soql.project(q, {**rec, "Account": None}, "59.0")["Account"] is None


@pytest.mark.parametrize("number", [0, 1, 61, 62, 4_500_000, 999_999_999, sf_ids.MAX_NUMBER])
def test_ids_round_trip_and_accept_the_15_character_form(number: int) -> None:
    rid = sf_ids.make_id(sf_ids.TASK, number)
    assert len(rid) == 18
    assert sf_ids.parse(rid) == (sf_ids.TASK, number)
    assert sf_ids.normalize(rid[:15]) == rid
    assert sf_ids.normalize(rid[:15] + "AAA") is None or rid.endswith("AAA")


def test_ids_of_one_object_sort_like_their_numbers() -> None:
    ids = [sf_ids.make_id(sf_ids.LEAD, n) for n in (0, 9, 10, 61, 62, 3843, 3844, 10**6)]
    assert sorted(ids) == ids
