"""Mistakes in what a client sends are 422s that name the field, row or line at fault, and start
nothing: misspelt fields are refused rather than ignored, and a CSV's bad or repeated numbers are
named by line as JSON lines' are."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from db.models import Business as BusinessRow
from outbound_dialer.settings import DEV_ADMIN_TOKEN
from support.drive import ALWAYS_OPEN, new_number
from support.stack import Stack


def _only_error(response: Any) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert len(errors) == 1, errors
    return dict(errors[0])


async def test_a_misspelt_field_is_refused_by_name_and_nothing_starts(stack: Stack) -> None:
    business = await stack.create_business()
    phone = new_number()
    options = {"calling_window": ALWAYS_OPEN}
    misspelt: list[tuple[dict[str, Any], list[str | int]]] = [
        ({"leads": [{"phone": phone}], "options": {**options, "max_attempt": 2}}, ["options", "max_attempt"]),
        ({"leads": [{"phone": phone, "nmae": "Ada"}], "options": options}, ["leads", 0, "nmae"]),
        ({"leads": [{"phone": phone}], "option": options}, ["option"]),
    ]
    for body, where in misspelt:
        error = _only_error(await stack.http.post("/v1/runs", json=body, headers=business.headers))
        assert error["loc"] == ["body", *where] and error["type"] == "extra_forbidden"

    error = _only_error(
        await stack.http.post(
            "/v1/runs/import",
            params={"options": json.dumps({**options, "max_attempt": 2})},
            content=f"phone\n{phone}\n",
            headers={**business.headers, "Content-Type": "text/csv"},
        )
    )
    assert error["loc"] == ["query", "options", "max_attempt"] and error["type"] == "extra_forbidden"

    error = _only_error(
        await stack.http.post(
            "/v1/runs",
            json={"leads": [{"phone": phone}], "options": {**options, "machine_detection": "yes"}},
            headers=business.headers,
        )
    )
    assert error["loc"] == ["body", "options", "machine_detection"]
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []
    assert await stack.sim_calls(business.caller_id) == []

    name = f"Misspelt {new_number()}"
    error = _only_error(
        await stack.http.post(
            "/v1/businesses",
            json={"name": name, "caller_id": new_number(), "max_concurrent_call": 5},
            headers={"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"},
        )
    )
    assert error["loc"] == ["body", "max_concurrent_call"] and error["type"] == "extra_forbidden"
    async with stack.sessions() as session:
        assert await session.scalar(select(BusinessRow).where(BusinessRow.name == name)) is None


async def test_a_csv_names_the_line_of_each_bad_or_repeated_number_and_nothing_starts(stack: Stack) -> None:
    business = await stack.create_business()
    good, other = new_number(), new_number()
    spaced = f"{good[:2]} {good[2:5]} {good[5:8]} {good[8:]}"  # the same number, written with spaces
    rows = [f"{good},Ada", "4155550100,Grace", f"{other},Edsger", f'"{spaced}",Ada again', "+1 999,Alan"]
    response = await stack.http.post(
        "/v1/runs/import",
        params={"options": json.dumps({"calling_window": ALWAYS_OPEN})},
        content="phone,name\n" + "\n".join(rows) + "\n",
        headers={**business.headers, "Content-Type": "text/csv"},
    )
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [(e["loc"], e["type"], e["input"]) for e in errors] == [
        (["body", "line", 3], "invalid_phone", "4155550100"),
        (["body", "line", 5], "duplicate_phone", spaced),
        (["body", "line", 6], "invalid_phone", "+1 999"),
    ]
    assert errors[0]["msg"].startswith("line 3: ") and "country code" in errors[0]["msg"]
    assert f"{good} is also on line 2" in errors[1]["msg"]
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []
    assert await stack.sim_calls(business.caller_id) == []


async def test_text_with_a_nul_character_is_refused_by_name_not_a_server_error(stack: Stack) -> None:
    """Found by the fuzzer: PostgreSQL cannot hold the NUL character in text, and a name, or a run id
    in the URL, with one was a 500."""
    business = await stack.create_business()
    options = {"calling_window": ALWAYS_OPEN}
    with_nul: list[tuple[dict[str, Any], list[str | int]]] = [
        ({"name": "spring\u0000promo", "leads": [{"phone": new_number()}], "options": options}, ["name"]),
        ({"leads": [{"phone": new_number(), "name": "Ada\u0000"}], "options": options}, ["leads", 0, "name"]),
    ]
    for body, where in with_nul:
        error = _only_error(await stack.http.post("/v1/runs", json=body, headers=business.headers))
        assert error["loc"] == ["body", *where] and "NUL character" in error["msg"]

    error = _only_error(
        await stack.http.post(
            "/v1/runs/import",
            params={"options": json.dumps(options)},
            content=f"phone,name\n{new_number()},Ada\n{new_number()},Gr\x00ace\n",
            headers={**business.headers, "Content-Type": "text/csv"},
        )
    )
    assert error["loc"] == ["body", "line", 3] and "NUL character" in error["msg"]

    for method, url in [
        ("GET", "/v1/runs/a%00b"),
        ("POST", "/v1/runs/a%00b/cancel"),
        ("GET", "/v1/runs?limit=1&name=a%00b"),
        ("POST", "/v1/runs/import?name=spring%00promo"),
        ("GET", "/ui/runs/a%00b"),
    ]:
        response = await stack.http.request(method, url, headers=business.headers)
        assert response.status_code == 400, (url, response.text)
        assert response.json() == {
            "detail": "the URL holds a NUL character (%00), which no path or parameter may"
        }
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []

    error = _only_error(
        await stack.http.post(
            "/v1/businesses",
            json={"name": "Acme\u0000", "caller_id": new_number()},
            headers={"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"},
        )
    )
    assert error["loc"] == ["body", "name"] and "NUL character" in error["msg"]


async def test_a_do_not_call_csv_names_the_line_it_cannot_read(stack: Stack) -> None:
    """Found by the fuzzer: a lone carriage return, a row without the phone column and a field past
    the csv module's limit were 500s. Lines end as the csv module ends them (a lone carriage return
    too), and a problem is named by its line, as in a lead list."""
    business = await stack.create_business()
    phone = new_number()
    upload = {**business.headers, "Content-Type": "text/csv"}
    short_row = await stack.http.post(
        "/v1/dnc/import", content=f"name,phone\rAda,{phone}\rGrace\r", headers=upload
    )
    error = _only_error(short_row)
    assert error["loc"] == ["body", "line", 3] and error["type"] == "invalid_phone"
    assert error["msg"].startswith("line 3: ") and error["input"] == ""
    too_long = await stack.http.post(
        "/v1/dnc/import", content="phone\n" + "9" * 200_000 + "\n", headers=upload
    )
    assert too_long.status_code == 422
    assert too_long.json()["detail"].startswith("line 2 is longer than")
    assert (await stack.http.get("/v1/dnc", headers=business.headers)).json() == []


async def test_true_or_false_is_not_a_number(stack: Stack) -> None:
    """JSON's `true` is not 1: a count, a number of days or seconds given as true or false is
    refused by name, and nothing is changed (found by the schema fuzzer on the recordings' days)."""
    business = await stack.create_business()
    refused = {
        "/v1/businesses/me/recordings": ("put", {"retention_days": True}, ["body", "retention_days"]),
        "/v1/businesses/me/api-key": ("post", {"overlap_seconds": False}, ["body", "overlap_seconds"]),
        "/v1/runs": (
            "post",
            {"leads": [{"phone": new_number()}], "options": {"max_attempts": True}},
            ["body", "options", "max_attempts"],
        ),
    }
    for path, (method, body, where) in refused.items():
        answer = await getattr(stack.http, method)(path, json=body, headers=business.headers)
        assert answer.status_code == 422, (path, answer.text)
        assert [e["loc"] for e in answer.json()["detail"]] == [where], answer.text
    runs = await stack.http.get("/v1/runs", headers=business.headers)
    assert runs.json() == [], runs.text  # no run was started
    admin = {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}
    created = await stack.http.post(
        "/v1/businesses",
        json={"name": "Cap of true", "caller_id": new_number(), "max_concurrent_calls": True},
        headers=admin,
    )
    assert created.status_code == 422 and created.json()["detail"][0]["loc"] == [
        "body",
        "max_concurrent_calls",
    ]
