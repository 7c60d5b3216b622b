"""One set of rules for every list a business sends (`service.leads`), and the HTTP answer for each
refusal of the service (`api.app`)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import status

from api.app import REFUSALS
from service import errors
from service.errors import LeadListInvalid, PhoneListInvalid, ServiceError, UploadUnreadable
from service.lead_files import Record
from service.leads import JSON_LEADS, JSON_PHONES, MAX_LISTED_PROBLEMS, UPLOAD_LINES, LeadList, phones_in_e164
from service.schemas import MAX_RUN_METADATA_KEYS, LeadIn


def _kinds(refused: LeadListInvalid | PhoneListInvalid) -> list[tuple[int | None, str]]:
    return [(problem.number, problem.kind) for problem in refused.rows]


def test_a_json_array_and_an_upload_are_held_to_the_same_rules() -> None:
    """The same leads, bad in the same ways, are refused for the same reasons whether they come as
    a JSON array (named by index) or an upload (named by line)."""
    wide = [
        {"phone": f"+1415555{1000 + i}", "metadata": {f"f{i}_{j}": j for j in range(40)}} for i in range(6)
    ]
    assert len(wide) * 40 > MAX_RUN_METADATA_KEYS >= (len(wide) - 1) * 40
    leads: list[dict[str, Any]] = [
        {"phone": "+14155550100", "name": "Ada"},
        {"phone": "4155550100"},
        {"phone": "+1 415 555 0100"},
        *wide,
    ]

    as_json = LeadList(JSON_LEADS)
    for index, lead in enumerate(leads):
        as_json.add(index, LeadIn.model_validate(lead))
    as_upload = LeadList(UPLOAD_LINES)
    for line, lead in enumerate(leads, start=2):
        as_upload.add_record(Record(line, lead))

    with pytest.raises(LeadListInvalid) as from_json:
        as_json.finish()
    with pytest.raises(LeadListInvalid) as from_upload:
        as_upload.finish()
    expected = ["invalid_phone", "duplicate_phone", "too_many_metadata_fields"]
    assert [kind for _, kind in _kinds(from_json.value)] == expected
    assert [kind for _, kind in _kinds(from_upload.value)] == expected
    assert [number for number, _ in _kinds(from_json.value)] == [1, 2, 8]
    assert [number for number, _ in _kinds(from_upload.value)] == [3, 4, 10]
    duplicate_json, duplicate_upload = from_json.value.rows[1], from_upload.value.rows[1]
    assert duplicate_json.message.startswith("+14155550100 is also lead 0")
    assert duplicate_upload.message.startswith("+14155550100 is also on line 2")
    assert duplicate_json.loc == ("body", "leads", 2, "phone")
    assert duplicate_upload.loc == ("body", "line", 4)
    assert from_json.value.rows[2].loc[-1] == "metadata"


def test_a_page_shows_a_problem_in_its_own_words_not_by_rewording_the_api() -> None:
    """The dashboard lists the problem as the service words it; the API's detail prefixes where."""
    with pytest.raises(PhoneListInvalid) as refused:
        phones_in_e164([(0, "+14155550100"), (1, "4155550100")], JSON_PHONES)
    [problem] = refused.value.rows
    assert problem.number == 1 and "has no country code" in problem.message
    assert problem.as_detail()["msg"] == f"phones 1: {problem.message}"
    assert problem.as_detail()["loc"] == ["body", "phones", 1]


def test_a_list_of_many_bad_entries_lists_the_first_and_counts_the_rest() -> None:
    """Found in review: the do-not-call lists listed every bad number, about 530 bytes each (a
    20 MiB upload of bad lines was gigabytes of answer)."""
    bad = [(line, "x") for line in range(1, 1_001)]
    with pytest.raises(PhoneListInvalid) as refused:
        phones_in_e164(bad, UPLOAD_LINES)
    assert len(refused.value.rows) == MAX_LISTED_PROBLEMS and refused.value.unlisted == 900
    detail = refused.value.as_detail()
    assert len(detail) == MAX_LISTED_PROBLEMS + 1
    assert detail[-1] == {
        "loc": ["body"],
        "type": "more_errors",
        "msg": "900 more errors not listed",
        "input": None,
    }


def test_an_upload_past_the_lead_limit_is_refused_as_a_whole() -> None:
    leads = LeadList(UPLOAD_LINES, max_leads=2)
    leads.add_record(Record(2, {"phone": "+14155550100"}))
    leads.add_record(Record(3, {"phone": "+14155550101"}))
    with pytest.raises(UploadUnreadable, match="more than 2 leads"):
        leads.add_record(Record(4, {"phone": "+14155550102"}))


def test_every_refusal_of_the_service_has_an_http_answer() -> None:
    """A new kind of refusal without a status would be a 500."""

    def kinds(base: type[ServiceError]) -> set[type[ServiceError]]:
        return {base, *(kind for sub in base.__subclasses__() for kind in kinds(sub))}

    refusals = kinds(ServiceError) - {ServiceError}
    assert refusals >= {
        errors.RunNotFound,
        errors.RunNotLive,
        errors.LeadListInvalid,
        errors.UploadUnreadable,
    }
    for refusal in refusals:
        codes = [code for kind, code in REFUSALS if issubclass(refusal, kind)]
        assert codes and 400 <= codes[0] < 500, refusal
    assert dict(REFUSALS)[errors.RunNotLive] == status.HTTP_409_CONFLICT


def test_a_bad_value_is_echoed_cut_short() -> None:
    """Found in review: each listed problem echoed the whole value twice (a 6 MB upload of bad rows
    made a 66 MB answer)."""
    with pytest.raises(PhoneListInvalid) as refused:
        phones_in_e164([(2, "9" * 60_000)], UPLOAD_LINES)
    [detail] = refused.value.as_detail()
    assert len(detail["input"]) <= 100 and len(detail["msg"]) < 300
