"""A large JSON body read off the event loop. A lead list of 100,000 leads is about 20 MiB of JSON
and a second of CPU to parse and validate; FastAPI does that on the event loop, where it would hold
up every business's requests and Twilio's callbacks. A route that takes such a body reads it with
`json_body_in_thread(Model)` and declares it with `json_body_openapi(Model)`; the app adds the
model's schemas to the OpenAPI document (`add_thread_parsed_schemas`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_MODELS: dict[str, type[BaseModel]] = {}
REF = "#/components/schemas/{model}"


def json_body_in_thread(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency giving the request's body as `model`, parsed and validated in a thread; a body
    that is not one is a 422 as FastAPI words it (each error's `loc` starts with "body")."""

    async def parse(request: Request) -> M:
        raw = await request.body()
        try:
            return await asyncio.to_thread(model.model_validate_json, raw)
        except ValidationError as error:
            raise RequestValidationError([_located(e) for e in error.errors(include_url=False)]) from None

    return parse


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
            "422": {"description": "Validation Error", "content": {"application/json": {"schema": invalid}}}
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
