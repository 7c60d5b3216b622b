"""One set of rules for every list a business sends: the leads of a run (a JSON body, CSV or JSON
lines, the dashboard's upload) and the numbers of its do-not-call list.

A number is taken in E.164 form only (`service.phones`); a run holds each number once; a lead's
fields are those of `LeadIn`, and a run's leads together use at most `MAX_RUN_METADATA_KEYS`
metadata fields (each is a column of its calls.csv). Problems are collected, not raised one by one,
so a user fixes a list in one go: the first `MAX_LISTED_PROBLEMS` are listed and the rest counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from service.errors import LeadListInvalid, PhoneListInvalid, RowProblem, UploadUnreadable
from service.lead_files import Record
from service.phones import InvalidPhone, to_e164
from service.schemas import MAX_RUN_METADATA_KEYS, LeadIn

MAX_LISTED_PROBLEMS = 100
MAX_LEADS_PER_RUN = 1_000_000


@dataclass(frozen=True)
class Naming:
    """How a list's entries are named in its problems: by line of an upload (`line 7`, at
    `["body", "line", 7]`), or by index in a JSON array (`lead 0`, at `["body", "leads", 0, "phone"]`)."""

    word: str
    loc: tuple[str, ...]
    by_field: bool = False
    """Whether `loc` goes on to the field at fault, as pydantic's own errors do in a JSON body."""

    def problem(self, number: int, kind: str, message: str, value: Any, field: str = "phone") -> RowProblem:
        loc: tuple[str | int, ...] = (*self.loc, number, field) if self.by_field else (*self.loc, number)
        return RowProblem(loc=loc, place=f"{self.word} {number}", kind=kind, message=message, value=value)

    def mention(self, number: int) -> str:
        return f"on {self.word} {number}" if self.word == "line" else f"{self.word} {number}"


UPLOAD_LINES = Naming("line", ("body", "line"))
JSON_LEADS = Naming("lead", ("body", "leads"), by_field=True)
JSON_PHONES = Naming("phones", ("body", "phones"))


class Problems:
    """The problems of one list: the first few kept to list, all of them counted."""

    def __init__(self) -> None:
        self.listed: list[RowProblem] = []
        self.count = 0

    def add(self, problem: RowProblem) -> None:
        self.count += 1
        if len(self.listed) < MAX_LISTED_PROBLEMS:
            self.listed.append(problem)

    @property
    def unlisted(self) -> int:
        return self.count - len(self.listed)


class LeadList:
    """A run's leads, checked one at a time as they are read. `add` gives the row to store for a
    good lead; once any lead is bad, nothing more is given (nothing of the list will be stored) and
    the rest are only checked, so every problem is found in one pass."""

    def __init__(self, naming: Naming, max_leads: int = MAX_LEADS_PER_RUN) -> None:
        self.naming = naming
        self.max_leads = max_leads
        self.problems = Problems()
        self._first: dict[str, int] = {}
        self._metadata_keys: set[str] = set()

    @property
    def count(self) -> int:
        """Good leads so far."""
        return len(self._first)

    def add_record(self, record: Record) -> dict[str, Any] | None:
        """A lead read from an upload: its fields as `LeadIn` reads them, or why it is unreadable."""
        if record.fields is None:
            self._bad(record.line, "unreadable_lead", record.problem or "unreadable", None)
            return None
        try:
            lead = LeadIn.model_validate(record.fields)
        except ValidationError as error:
            for e in error.errors(include_url=False):
                where = ".".join(str(part) for part in e["loc"]) or "lead"
                self._bad(record.line, e["type"], f"{where}: {e['msg']}", e.get("input"))
            return None
        return self.add(record.line, lead)

    def add(self, number: int, lead: LeadIn) -> dict[str, Any] | None:
        """A lead whose fields are valid: the row to store (phone in E.164, name, timezone and
        metadata as `extra`), or None if it is bad or an earlier lead was."""
        try:
            phone = to_e164(lead.phone)
        except InvalidPhone as error:
            self._bad(number, "invalid_phone", str(error), lead.phone)
            return None
        if phone in self._first:
            message = f"{phone} is also {self.naming.mention(self._first[phone])}; each number once per run"
            self._bad(number, "duplicate_phone", message, lead.phone)
            return None
        new_keys = (lead.metadata or {}).keys() - self._metadata_keys
        if len(self._metadata_keys) + len(new_keys) > MAX_RUN_METADATA_KEYS:
            message = f"the run's leads use more than {MAX_RUN_METADATA_KEYS} different metadata fields"
            self._bad(number, "too_many_metadata_fields", message, sorted(new_keys), "metadata")
            return None
        if len(self._first) >= self.max_leads:
            raise UploadUnreadable(f"more than {self.max_leads} leads: split the list into several runs")
        self._metadata_keys |= new_keys
        self._first[phone] = number
        if self.problems.count:
            return None
        return {"phone": phone, "name": lead.name, "timezone": lead.timezone, "extra": lead.metadata}

    def finish(self) -> int:
        """The number of leads, once the whole list is read: `LeadListInvalid` naming the bad
        ones if any is bad, `UploadUnreadable` if there are none."""
        if self.problems.count:
            raise LeadListInvalid(self.problems.listed, self.problems.unlisted)
        if not self._first:
            raise UploadUnreadable("the list has no leads")
        return len(self._first)

    def _bad(self, number: int, kind: str, message: str, value: Any, field: str = "phone") -> None:
        self.problems.add(self.naming.problem(number, kind, message, value, field))


def phones_in_e164(numbered: list[tuple[int, str]], naming: Naming) -> list[str]:
    """Numbers for the do-not-call list in E.164, each named by its place in the list:
    `PhoneListInvalid` naming the bad ones if any is bad."""
    phones: list[str] = []
    problems = Problems()
    for number, raw in numbered:
        try:
            phones.append(to_e164(raw))
        except InvalidPhone as error:
            problems.add(naming.problem(number, "invalid_phone", str(error), raw))
    if problems.count:
        raise PhoneListInvalid(problems.listed, problems.unlisted)
    return phones
