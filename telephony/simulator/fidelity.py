"""Requests checked against Twilio's own OpenAPI description of the API, so what passes here passes there.

The description is ``twilio_api_v2010.json`` from twilio/twilio-oai, found next to the project in
``shared/twilio/`` or wherever ``TWILIO_OPENAPI_SPEC`` points. It is 1.9 MB, so it is read once per
process and API, on the first request, and cut down to the operations the simulator serves: the Calls
operations, and apart from them (read only when a recording is asked for) the Recording ones.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from openapi_core import OpenAPI
from openapi_core.casting.schemas.exceptions import CastError
from openapi_core.contrib.starlette.requests import StarletteOpenAPIRequest
from openapi_core.templating.paths.exceptions import PathError
from openapi_core.validation.request.exceptions import ParameterValidationError, RequestBodyValidationError
from openapi_core.validation.schemas.exceptions import InvalidSchemaValue
from starlette.requests import Request

from telephony.simulator.calls import API_VERSION
from telephony.simulator.errors import TwilioApiError, invalid_parameter, missing_parameter, not_found

SPEC_ENV = "TWILIO_OPENAPI_SPEC"
DEFAULT_SPEC_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "twilio" / "twilio_api_v2010.json"
CALLS_PATHS = (
    f"/{API_VERSION}/Accounts/{{AccountSid}}/Calls.json",
    f"/{API_VERSION}/Accounts/{{AccountSid}}/Calls/{{Sid}}.json",
)
# Create and list, fetch and update; the simulator serves no delete of a call.
_METHODS = ("get", "post")
RECORDING_PATHS = (f"/{API_VERSION}/Accounts/{{AccountSid}}/Recordings/{{Sid}}.json",)
# Fetch and delete a recording.
_RECORDING_METHODS = ("get", "delete")
_FORM = "application/x-www-form-urlencoded"

# Allowed values the description gives only in prose ("Can be: `Enable` or `DetectMessageEnd`").
_PROSE_ENUMS: dict[tuple[str, str], list[str]] = {
    ("CreateCall", "MachineDetection"): ["Enable", "DetectMessageEnd"],
    ("CreateCall", "AsyncAmd"): ["true", "false"],
    ("CreateCall", "RecordingChannels"): ["mono", "dual"],
}
# The description types these filters as date-time, yet its own examples are dates like 2008-01-02 and
# Twilio documents YYYY-MM-DD; the list route parses them and answers 20001 itself.
_LOOSE_FORMATS: dict[str, set[str]] = {"ListCall": {"StartTime", "StartTime<", "StartTime>"}}


@runtime_checkable
class SchemaError(Protocol):
    """What openapi-core reports per schema violation (a jsonschema ``ValidationError``), as used here."""

    message: str
    path: Sequence[str | int]
    validator: str
    validator_value: Any
    instance: Any


@dataclass(frozen=True)
class CallsApi:
    """Twilio's description of some operations (the Calls ones, or the Recording ones), ready to
    check requests against."""

    openapi: OpenAPI
    form_types: dict[str, str]
    """The JSON type of every form field of a request body, to name the field a failed cast is about."""


def spec_path() -> Path:
    """Where Twilio's description is read from: ``TWILIO_OPENAPI_SPEC`` or the shared copy."""
    return Path(os.environ.get(SPEC_ENV) or DEFAULT_SPEC_PATH)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as file:
            full: dict[str, Any] = json.load(file)
    except FileNotFoundError as exc:
        raise RuntimeError(
            f"Twilio's OpenAPI description is not at {path}; set {SPEC_ENV} or turn validate_requests off"
        ) from exc
    return full


@cache
def calls_api(path: Path) -> CallsApi:
    """Read Twilio's description from ``path`` and prepare its Calls operations, once per process."""
    spec = calls_spec(_read(path))
    return CallsApi(OpenAPI.from_dict(spec), _form_types(spec))


@cache
def recordings_api(path: Path) -> CallsApi:
    """Read Twilio's description from ``path`` and prepare its Recording fetch and delete, once per
    process."""
    spec = _spec(_read(path), dict.fromkeys(RECORDING_PATHS, _RECORDING_METHODS))
    return CallsApi(OpenAPI.from_dict(spec), {})


def calls_spec(full: dict[str, Any]) -> dict[str, Any]:
    """A small OpenAPI document holding only the Calls operations of Twilio's full description.

    Each form body gets an ``encoding`` saying its array fields are repeated (``style: form, explode:
    true``), which is how the twilio SDK sends ``StatusCallbackEvent`` and which the description leaves
    unsaid. Authentication is left out (the simulator answers it with 20003 first), as are responses.
    """
    return _spec(full, dict.fromkeys(CALLS_PATHS, _METHODS))


def _spec(full: dict[str, Any], methods: dict[str, Sequence[str]]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, kept in methods.items():
        item = full["paths"][path]
        paths[path] = {method: _operation(full, item[method]) for method in kept}
    return {
        "openapi": full["openapi"],
        "info": full["info"],
        # The simulator answers on whatever host it is served from, not api.twilio.com.
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": _referenced_components(full, paths),
    }


def _operation(full: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
    operation_id = original["operationId"]
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "parameters": copy.deepcopy(original.get("parameters", [])),
        "responses": {"default": {"description": "Not checked"}},
    }
    for parameter in operation["parameters"]:
        if parameter["name"] in _LOOSE_FORMATS.get(operation_id, ()):
            parameter["schema"].pop("format", None)
    if "requestBody" in original:
        body = operation["requestBody"] = copy.deepcopy(_resolve(full, original["requestBody"]))
        for media_type, content in body["content"].items():
            if media_type != _FORM:
                continue
            properties = _resolve(full, content["schema"]).get("properties", {})
            encoding = content.setdefault("encoding", {})
            for name, schema in properties.items():
                if _resolve(full, schema).get("type") == "array":
                    encoding.setdefault(name, {"style": "form", "explode": True})
                if (values := _PROSE_ENUMS.get((operation_id, name))) is not None:
                    schema.setdefault("enum", list(values))
    return operation


def _resolve(full: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The object a local ``$ref`` points at, or the node itself."""
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node
    target: Any = full
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return _resolve(full, target)


def _referenced_components(full: dict[str, Any], paths: dict[str, Any]) -> dict[str, Any]:
    """The components the kept operations refer to, directly or through each other."""
    components: dict[str, dict[str, Any]] = {}
    pending: list[Any] = [paths]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/"):
                kind, name = ref.removeprefix("#/components/").split("/", 1)
                kept = components.setdefault(kind, {})
                if name not in kept:
                    kept[name] = full["components"][kind][name]
                    pending.append(kept[name])
            pending.extend(node.values())
    return components


def _form_types(spec: dict[str, Any]) -> dict[str, str]:
    types: dict[str, str] = {}
    for item in spec["paths"].values():
        for operation in item.values():
            content = operation.get("requestBody", {}).get("content", {}).get(_FORM, {})
            for name, schema in _resolve(spec, content.get("schema", {})).get("properties", {}).items():
                if isinstance(schema.get("type"), str):
                    types[name] = schema["type"]
    return types


async def check_request(request: Request) -> None:
    """Raise the error Twilio would answer if this request breaks Twilio's description; first error wins.

    Parameters the description does not name are ignored, as Twilio ignores them.
    """
    body = await request.body()
    api = recordings_api(spec_path()) if "/Recordings/" in request.url.path else calls_api(spec_path())
    error = next(iter(api.openapi.iter_request_errors(StarletteOpenAPIRequest(request, body))), None)
    if error is not None:
        raise _twilio_error(error, request, body, api)


def _twilio_error(error: Exception, request: Request, body: bytes, api: CallsApi) -> TwilioApiError:
    cause = error.__cause__
    if isinstance(error, PathError):
        raise RuntimeError(f"Twilio's description has no {request.method} {request.url.path}") from error
    if isinstance(error, ParameterValidationError):
        if error.location == "path":
            # A malformed SID names no resource, and Twilio answers it as an unknown one.
            return not_found(request.url.path)
        return invalid_parameter(error.name, _reason(cause))
    if isinstance(error, RequestBodyValidationError) and isinstance(cause, InvalidSchemaValue):
        schema_errors = [e for e in cause.schema_errors if isinstance(e, SchemaError)]
        for schema_error in schema_errors:
            if schema_error.validator == "required":
                # One error per absent property, each carrying the whole list: report the first absent.
                required, given = schema_error.validator_value, schema_error.instance
                return missing_parameter(next(str(name) for name in required if name not in given))
        if schema_errors:
            first = schema_errors[0]
            return invalid_parameter(str(first.path[0]) if first.path else "body", first.message)
    if isinstance(error, RequestBodyValidationError) and isinstance(cause, CastError):
        form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        names = [
            name for name, value in form if value == cause.value and api.form_types.get(name) == cause.type
        ]
        return invalid_parameter(names[0] if names else "body", _reason(cause))
    return TwilioApiError(400, 20001, f"Invalid request: {error}")


def _reason(cause: BaseException | None) -> str:
    if isinstance(cause, CastError):
        return f"{cause.value!r} is not a valid {cause.type}"
    if isinstance(cause, InvalidSchemaValue):
        messages = [e.message for e in cause.schema_errors if isinstance(e, SchemaError)]
        return "; ".join(messages) or str(cause)
    return str(cause)
