"""The API's error bodies, and the OpenAPI description of the errors each route may answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Problem(BaseModel):
    """An error, said for a person to read."""

    detail: str


class FieldProblem(BaseModel):
    """One thing wrong with a request, and where: `["body", "line", 7]` is line 7 of an upload."""

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None


class Rejected(BaseModel):
    """A request refused as sent: each problem with where it is, or, when the body cannot be read
    at all, one sentence."""

    detail: list[FieldProblem] | str


_PROBLEMS = {
    400: "The request could not be read: a body that is not UTF-8 JSON, a broken form, or a NUL "
    "character (%00) in the URL.",
    401: "No API key (or admin token) was sent, or it is not valid.",
    403: "The request is not signed by Twilio.",
    404: "Not among the business's own runs or numbers (another business's runs are not found either).",
    409: "The run has already ended.",
    413: "The body is larger than the limit, which the detail names.",
    415: "The body's Content-Type is not one this endpoint reads.",
    429: "More requests than the business's share (BUSINESS_REQUESTS_PER_SECOND); Retry-After says when to try again.",
    503: "The run could not take the status now; Twilio sends it again.",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the errors a route may answer, each `{"detail": "..."}`."""
    return {code: {"model": Problem, "description": _PROBLEMS[code]} for code in codes}
