"""A large JSON body read off the event loop. A lead list of 100,000 leads is about 20 MiB of JSON
and a second of CPU to parse and validate; FastAPI does that on the event loop, where it would hold
up every business's requests and Twilio's callbacks. A route that takes such a body reads it with
`json_body_in_thread(Model)` and declares it with `json_body_openapi(Model)`; the app adds the
model's schemas to the OpenAPI document (`add_thread_parsed_schemas`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, get_args

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import from_json

from service.leads import MAX_LISTED_PROBLEMS

M = TypeVar("M", bound=BaseModel)

_MODELS: dict[str, type[BaseModel]] = {}
REF = "#/components/schemas/{model}"
# Entries of a listed field validated at once.
CHUNK = 1_000
# The most fields a JSON object of a body may have: more than any model's fields, or any lead's
# metadata (50).
MAX_OBJECT_FIELDS = 256


def json_body_in_thread(model: type[M], listed: str | None = None) -> Callable[[Request], Awaitable[M]]:
    """A dependency giving the request's body as `model`, parsed and validated in a thread. A body
    that is not one is a 422 as FastAPI words it (each error's `loc` starts with "body"), listing
    the first MAX_LISTED_PROBLEMS errors and counting the rest; a body that is not JSON is a 415.
    The list field `listed` (a lead list) is validated a chunk at a time, so a list of thousands
    of bad entries never holds all their errors at once."""

    async def parse(request: Request) -> M:
        media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise HTTPException(
                415, f"send the body as application/json, not {media_type or 'an unnamed type'}"
            )
        raw = await request.body()
        parsed, problems = await asyncio.to_thread(_parsed, model, raw, listed)
        if parsed is None:
            raise RequestValidationError(problems)
        return parsed

    return parse


def _parsed(model: type[M], raw: bytes, listed: str | None) -> tuple[M | None, list[dict[str, Any]]]:
    """The body as `model`, or the problems with it."""
    try:
        data = from_json(raw)
    except ValueError as error:  # not JSON
        return None, [_located({"type": "json_invalid", "loc": (), "msg": str(error)})]
    crowded = _crowded(data)
    if crowded is not None:
        more = f"an object with more than {MAX_OBJECT_FIELDS} fields, more than any object here has"
        return None, [{"type": "too_many_fields", "loc": ("body", *crowded), "msg": more, "input": None}]
    try:
        if listed is not None and isinstance(data, dict) and isinstance(data.get(listed), list):
            data[listed] = _items(model, listed, data[listed])
        return model.model_validate(data), []
    except _ListInvalid as invalid:
        return None, invalid.problems
    except ValidationError as error:
        return None, _listed(error.errors(include_url=False), error.error_count())


def _crowded(data: Any) -> tuple[str | int, ...] | None:
    """Where the body has an object of more than MAX_OBJECT_FIELDS fields, if anywhere: each field
    no model has would be an error of its own, all of them held at once."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)] if isinstance(data, dict | list) else []
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            if len(node) > MAX_OBJECT_FIELDS:
                return where
            children: Iterable[tuple[str | int, Any]] = node.items()
        else:
            children = enumerate(node)
        stack.extend(((*where, at), child) for at, child in children if isinstance(child, dict | list))
    return None


class _ListInvalid(Exception):
    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems


def _items(model: type[BaseModel], listed: str, items: list[Any]) -> list[Any]:
    """The list's items validated CHUNK at a time (the list's own bounds are the model's to check);
    `_ListInvalid` with the first problems, and how many more, if any is bad."""
    field = model.model_fields[listed]
    adapter: TypeAdapter[list[Any]] = TypeAdapter(list[get_args(field.annotation)[0]])  # type: ignore[arg-type,misc]
    most = next((m.max_length for m in field.metadata if hasattr(m, "max_length")), None)
    if most is not None and len(items) > most:
        return items  # the model refuses the list's length, once
    valid: list[Any] = []
    problems: list[dict[str, Any]] = []
    count = 0
    for start in range(0, len(items), CHUNK):
        try:
            valid += adapter.validate_python(items[start : start + CHUNK])
        except ValidationError as error:
            count += error.error_count()
            if len(problems) < MAX_LISTED_PROBLEMS:
                problems += [
                    {**e, "loc": (listed, start + int(e["loc"][0]), *e["loc"][1:])}
                    for e in error.errors(include_url=False)[: MAX_LISTED_PROBLEMS - len(problems)]
                ]
    if count:
        raise _ListInvalid(_listed(problems, count))
    return valid


def _listed(errors: list[Any], count: int) -> list[dict[str, Any]]:
    """The first MAX_LISTED_PROBLEMS errors, located in the body, and a last one counting the rest."""
    problems = [_located(e) for e in errors[:MAX_LISTED_PROBLEMS]]
    if count > MAX_LISTED_PROBLEMS:
        more = f"{count - MAX_LISTED_PROBLEMS} more errors not listed"
        problems.append({"loc": ("body",), "type": "more_errors", "msg": more, "input": None})
    return problems


def _located(error: Any) -> dict[str, Any]:
    """A validation error as FastAPI words one about a body; a body that is not JSON at all is not
    echoed back (it may not even be text)."""
    if error["type"] == "json_invalid":
        return {
            "type": "json_invalid",
            "loc": ("body",),
            "msg": f"JSON decode error: {error['msg']}",
            "input": {},
        }
    return {**error, "loc": ("body", *error["loc"])}


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """The route's `openapi_extra`: its required JSON body is `model`, and a body that is not one
    is a 422 as FastAPI answers it."""
    _MODELS[model.__name__] = model
    schema = {"$ref": REF.format(model=model.__name__)}
    invalid = {"$ref": REF.format(model="HTTPValidationError")}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": {
            "415": {
                "description": "The body is not sent as application/json.",
                "content": {"application/json": {"schema": {"$ref": REF.format(model="Problem")}}},
            },
            "422": {"description": "Validation Error", "content": {"application/json": {"schema": invalid}}},
        },
    }


def add_thread_parsed_schemas(app: FastAPI) -> None:
    """Make the app's OpenAPI document hold the schemas of the bodies its routes parse in threads
    (FastAPI adds only those of the bodies it parses itself)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for name, model in _MODELS.items():
            schema = model.model_json_schema(ref_template=REF, mode="validation")
            for nested, definition in schema.pop("$defs", {}).items():
                components.setdefault(nested, definition)
            components.setdefault(name, schema)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
