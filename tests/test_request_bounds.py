"""Every list and string a request carries has a bound: a body cannot make the API, or a run's
workflow, scan or store something of any size."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from service.schemas import AnswerIn, BusinessCreate, DncAdd, LeadIn, RunCreate, WebhookIn

LONG = "x" * 10_000
LEAD = {"phone": "+14155550100"}


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (RunCreate, {"leads": [LEAD], "options": {"calling_window": {"days": [0] * 8}}}),
        (RunCreate, {"leads": [LEAD], "options": {"calling_window": {"days": [0] * 600_000}}}),
        (RunCreate, {"leads": [LEAD], "options": {"retry_on": ["busy"] * 100}}),
        (BusinessCreate, {"name": "Acme", "caller_id": "+1" + "4" * 10_000}),
        (BusinessCreate, {"name": "Acme", "caller_id": "+14155550100", "timezone": LONG}),
        (LeadIn, {"phone": "+14155550100", "timezone": LONG}),
        (DncAdd, {"phones": ["+1" + "4" * 10_000]}),
        (WebhookIn, {"url": "https://example.com/" + LONG}),
        (AnswerIn, {"say": "Hi", "on_machine": "voicemail", "voicemail": {"play": "https://e.com/" + LONG}}),
    ],
)
def test_an_oversized_list_or_string_is_refused(model: type[BaseModel], body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(body)
    assert any(
        e["type"] in {"too_long", "string_too_long", "url_too_long"} for e in refused.value.errors()
    ), refused.value.errors()
