"""The sandbox's fault specification: what an admin or a test may ask for, and the sentence for a mistake."""

from __future__ import annotations

import pytest

from sandbox.common import Faults, FaultSpecError, parse_fault_spec


def test_the_text_form_names_routes_with_bars_and_a_maximum() -> None:
    spec = parse_fault_spec("drop=1,only=POST /crm/v3/objects/tasks|GET  /x,max=2,timeout_s=0")
    assert spec == {"drop": 1.0, "only": ["POST /crm/v3/objects/tasks", "GET /x"], "max": 2.0, "timeout_s": 0.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"drop": 2}, "fault 'drop' must be a share between 0 and 1, not 2"),
        ({"max": 1.5}, "max must be a whole number of faults, not 1.5"),
        ({"only": []}, "'only' must name routes such as \"POST /crm/v3/objects/tasks\""),
        ({"lost": 1},
         "unknown fault 'lost': use 429, 500, timeout, drop, record, records, seed, timeout_s, only or max"),
    ],
)
def test_a_bad_specification_is_one_sentence(spec: dict[str, object], message: str) -> None:
    with pytest.raises(FaultSpecError) as err:
        parse_fault_spec(spec)
    assert str(err.value) == message


def test_only_the_named_routes_draw_faults_and_no_more_than_max() -> None:
    faults = Faults(parse_fault_spec({"drop": 1.0, "only": "POST /crm/v3/objects/tasks", "max": 2}))
    drawn = [
        faults.draw("GET /crm/v3/objects/{object_type}", "GET /crm/v3/objects/contacts"),
        faults.draw("POST /crm/v3/objects/{object_type}", "POST /crm/v3/objects/tasks"),
        faults.draw("POST /crm/v3/objects/{object_type}", "POST /crm/v3/objects/tasks"),
        faults.draw("POST /crm/v3/objects/{object_type}", "POST /crm/v3/objects/tasks"),
    ]
    assert drawn == [None, "drop", "drop", None]
    assert faults.as_dict() == {"drop": 1.0, "only": ["POST /crm/v3/objects/tasks"], "max": 2, "injected": 2}


def test_per_record_faults_name_ids_or_a_share_and_keep_to_only_and_max() -> None:
    spec = parse_fault_spec("records=7|00Q000000000001AAA,only=POST /crm/v3/objects/contacts/batch/update,max=2")
    assert spec == {"records": ["7", "00Q000000000001AAA"], "only": ["POST /crm/v3/objects/contacts/batch/update"],
                    "max": 2.0}  # fmt: skip
    faults = Faults(spec)
    update = ("POST /crm/v3/objects/{object_type}/batch/update", "POST /crm/v3/objects/contacts/batch/update")
    assert faults.draw(*update) is None  # no request-level fault: the batch itself succeeds
    assert faults.draw_record("7", "PATCH /x", "PATCH /x") is False  # another route
    assert [faults.draw_record(i, *update) for i in ("6", "7", "7", "7")] == [False, True, True, False]  # max 2
    everyone = Faults(parse_fault_spec({"record": 1.0}))
    assert everyone.draw_record("1") is True
    assert everyone.as_dict() == {"record": 1.0}
    with pytest.raises(FaultSpecError):
        parse_fault_spec({"records": []})
