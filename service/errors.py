"""What the service refuses, and why, in words for the person who asked: the API maps each to its
HTTP status in one exception handler (`api.app`), and the dashboard shows the same words on its pages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# A bad value is echoed back cut to this: enough to find it, not a copy of a huge upload.
ECHOED_CHARS = 100


class ServiceError(Exception):
    """A request the service will not carry out as asked; the message says why."""


class RunNotFound(ServiceError):
    """No such run among the business's own (another business's runs are not found either)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} not found")
        self.run_id = run_id


class RunNotLive(ServiceError):
    """The run has ended: it takes no more cancel, pause or resume."""

    def __init__(self, run_id: str, status: str | None = None) -> None:
        said = f"is already {status}" if status else "is no longer running"
        super().__init__(f"run {run_id} {said}")
        self.run_id = run_id


class PhoneNotListed(ServiceError):
    """A number taken off a list (the do-not-call list, the agent numbers) that was not on it."""

    def __init__(self, phone: str, listed_in: str = "the do-not-call list") -> None:
        super().__init__(f"{phone} is not on {listed_in}")


class NumberNotRegistered(ServiceError):
    """An answer that connects calls to a number the business has not registered as an agent's."""

    def __init__(self, phone: str) -> None:
        super().__init__(
            f"{phone} is not one of the business's agent numbers: register it first "
            f"(PUT /v1/businesses/me/agent-numbers/{phone})"
        )


class VoiceAppUnsigned(ServiceError):
    """A run's voice app answer from a business that has no secret to sign its URLs with yet."""

    def __init__(self) -> None:
        super().__init__(
            "a voice app is signed with the business's own secret: set a voice app answer with "
            "PUT /v1/businesses/me/answer first (it makes the secret), then runs may use one"
        )


class UploadUnreadable(ServiceError):
    """The body cannot be read as a list at all: not a problem of one lead or number."""


@dataclass(frozen=True)
class RowProblem:
    """One thing wrong with one lead or number: where it is (`place` as a person reads it, "line 7";
    `loc` as the API's 422 detail gives it), what kind of problem, what was there."""

    loc: tuple[str | int, ...]
    place: str
    kind: str
    message: str
    value: Any = None

    @property
    def number(self) -> int | None:
        """The line or row number the problem is on, if it is on one."""
        return next((part for part in reversed(self.loc) if isinstance(part, int)), None)

    def as_detail(self) -> dict[str, Any]:
        """As one item of a 422's `detail`, in the shape FastAPI gives a request's own errors; a
        long value is echoed cut short."""
        where = f"{self.place}: " if self.place else ""
        value = self.value[:ECHOED_CHARS] if isinstance(self.value, str) else self.value
        return {"loc": list(self.loc), "type": self.kind, "msg": f"{where}{self.message}", "input": value}


class ListInvalid(ServiceError):
    """A list of leads or numbers with bad entries: nothing of it is stored. `rows` lists the first
    problems found; `unlisted` counts the ones past them."""

    def __init__(self, rows: Sequence[RowProblem], unlisted: int = 0) -> None:
        super().__init__(f"{len(rows) + unlisted} bad entries")
        self.rows = list(rows)
        self.unlisted = unlisted

    def as_detail(self) -> list[dict[str, Any]]:
        detail = [row.as_detail() for row in self.rows]
        if self.unlisted:
            more = f"{self.unlisted} more errors not listed"
            detail.append({"loc": ["body"], "type": "more_errors", "msg": more, "input": None})
        return detail


class LeadListInvalid(ListInvalid):
    """A lead list with bad leads: no run is stored or started."""


class PhoneListInvalid(ListInvalid):
    """A list of numbers for the do-not-call list with bad numbers: none is added."""


class NotNewestKey(ServiceError):
    """A key that a rotation has given an end (it may be the one that leaked) may not make keys."""

    def __init__(self) -> None:
        super().__init__("only the business's newest API key can make a new one")


class TooManySessions(ServiceError):
    """A sign-in past the most dashboard sessions a business has at once, when every one of them
    was opened with a newer key than the one signing in."""

    def __init__(self, most: int) -> None:
        super().__init__(
            f"{most} dashboard sessions are open with newer keys of this business; sign out of one first"
        )
