"""The simulator's HTTP face: a subset of Twilio's REST API v2010 plus ``/_sim/`` control routes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import phonenumbers
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.types import ASGIApp, Receive, Scope, Send

from telephony.simulator.calls import API_VERSION, Call, TimeFilter, parse_time
from telephony.simulator.config import SimulatorConfig
from telephony.simulator.detection import DEFAULT_TIMEOUT_SECONDS, DETECT_MESSAGE_END, ENABLE
from telephony.simulator.engine import CallRequest, Simulator
from telephony.simulator.errors import (
    TwilioApiError,
    account_refusal,
    internal_error,
    invalid_parameter,
    missing_parameter,
    not_found,
)
from telephony.simulator.fidelity import check_request
from telephony.simulator.recordings import Recording

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_CALLBACK_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})
# CreateCall `RecordingStatusCallbackEvent`: "Can be: `in-progress`, `completed` and `absent`."
_RECORDING_EVENTS = frozenset({"in-progress", "completed", "absent"})
_PAGE_PARAMS = frozenset({"Page", "PageSize", "PageToken"})
_ACCOUNT_PATH = f"/{API_VERSION}/Accounts/{{account_sid}}"


def create_app(config: SimulatorConfig) -> FastAPI:
    """A FastAPI app that behaves like Twilio's call API; the engine is ``app.state.simulator``."""
    simulator = Simulator(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await simulator.start()
        try:
            yield
        finally:
            await simulator.stop()

    app = FastAPI(title="Carrier simulator", lifespan=lifespan)
    app.state.simulator = simulator
    app.add_middleware(_ArrivalTime)

    @app.exception_handler(TwilioApiError)
    async def twilio_error(request: Request, exc: TwilioApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    app.include_router(_call_routes(simulator))
    app.include_router(_recording_routes(simulator))
    app.include_router(_control_routes(simulator))
    return app


class _ArrivalTime:
    """ASGI middleware: the wall-clock time each request reached the carrier, before the carrier
    reads, authenticates or validates it (``request.state.received_at``). The simulator's own
    checks are the carrier's time, not the caller's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["received_at"] = time.time()
        await self.app(scope, receive, send)


def _account_router(sim: Simulator) -> APIRouter:
    """A router under the account's path that answers as Twilio does before any route runs:
    credentials and account first (20003, account refusals), then Twilio's published description."""

    def authenticate(request: Request, account_sid: str) -> str:
        expected = (sim.config.account_sid, sim.config.auth_token)
        given = _basic_credentials(request.headers.get("authorization", ""))
        ok = given is not None and all(
            secrets.compare_digest(a.encode(), b.encode()) for a, b in zip(given, expected, strict=True)
        )
        if not ok or account_sid != sim.config.account_sid:
            raise TwilioApiError(401, 20003, "Authenticate")
        if sim.config.account_error is not None:
            raise account_refusal(sim.config.account_error, sim.config.retry_after_seconds)
        return account_sid

    async def conform(request: Request) -> None:
        if sim.config.validate_requests:
            await check_request(request)

    # Dependencies run in order: Twilio answers bad credentials before it looks at parameters.
    return APIRouter(prefix=_ACCOUNT_PATH, dependencies=[Depends(authenticate), Depends(conform)])


def _call_routes(sim: Simulator) -> APIRouter:
    router = _account_router(sim)

    def find(account_sid: str, sid: str, path: str) -> Call:
        call = sim.calls.get(sid)
        if call is None or call.account_sid != account_sid:
            raise not_found(path)
        return call

    @router.post("/Calls.json", status_code=201)
    async def create_call(account_sid: str, request: Request) -> dict[str, Any]:
        call_request = _call_request(account_sid, await request.form(), request.state.received_at)
        call = sim.create_call(call_request)
        if sim.config.create_response_delay_seconds:
            await asyncio.sleep(sim.config.create_response_delay_seconds)
        return call.resource()

    @router.get("/Calls.json")
    async def list_calls(account_sid: str, request: Request) -> dict[str, Any]:
        return _calls_page(sim, account_sid, request)

    @router.get("/Calls/{sid}.json")
    async def fetch_call(account_sid: str, sid: str, request: Request) -> dict[str, Any]:
        return find(account_sid, sid, request.url.path).resource()

    @router.post("/Calls/{sid}.json")
    async def update_call(account_sid: str, sid: str, request: Request) -> dict[str, Any]:
        call = find(account_sid, sid, request.url.path)
        until = sim.config.updates_fail_until
        if until is not None and time.time() < until:
            raise internal_error()
        form = await request.form()
        updated = sim.update_call(
            call,
            status=_text(form, "Status"),
            twiml=_text(form, "Twiml"),
            url=_text(form, "Url"),
            method=_method(_text(form, "Method"), "Method"),
        )
        return updated.resource()

    return router


def _recording_routes(sim: Simulator) -> APIRouter:
    router = _account_router(sim)

    def find_recording(account_sid: str, sid: str, path: str, soft_deleted: bool = False) -> Recording:
        recording = sim.recordings.get(sid)
        if (
            recording is None
            or recording.account_sid != account_sid
            or (recording.deleted and not soft_deleted)
        ):
            raise not_found(path)
        return recording

    @router.get("/Recordings/{sid}.json")
    async def fetch_recording(account_sid: str, sid: str, request: Request) -> dict[str, Any]:
        """Twilio's FetchRecording: a deleted recording is not found unless `IncludeSoftDeleted=true`,
        which shows it with status `deleted`."""
        soft_deleted = request.query_params.get("IncludeSoftDeleted", "").lower() == "true"
        return find_recording(account_sid, sid, request.url.path, soft_deleted).resource()

    @router.delete("/Recordings/{sid}.json", status_code=204)
    async def delete_recording(account_sid: str, sid: str, request: Request) -> Response:
        """Twilio's DeleteRecording: 204, and the recording is gone from then on."""
        find_recording(account_sid, sid, request.url.path).deleted = True
        return Response(status_code=204)

    return router


def _calls_page(sim: Simulator, account_sid: str, request: Request) -> dict[str, Any]:
    """A page of the account's calls, filtered and paged as Twilio's Calls list is (and as late to
    show new calls as the simulator is told to be)."""
    query = request.query_params
    try:
        for key in ("StartTime", "StartTime>", "StartTime<"):
            if key in query:
                parse_time(query[key])
        page = int(query.get("Page", "0"))
        page_size = min(int(query.get("PageSize", "50")), 1000)
    except ValueError as exc:
        raise TwilioApiError(400, 20001, f"Invalid query parameter: {exc}") from exc
    if page < 0 or page_size < 1:
        raise TwilioApiError(400, 20001, "Page must be >= 0 and PageSize >= 1")
    calls = sim.calls.search(
        account_sid,
        to=query.get("To"),
        from_=query.get("From"),
        status=query.get("Status"),
        start=TimeFilter(query.get("StartTime"), query.get("StartTime>"), query.get("StartTime<")),
        created_before=time.time() - sim.config.list_lag_seconds if sim.config.list_lag_seconds else None,
    )
    start = page * page_size
    selected = calls[start : start + page_size]
    filters = [(k, v) for k, v in query.multi_items() if k not in _PAGE_PARAMS]

    def page_uri(number: int) -> str:
        params = [*filters, ("PageSize", str(page_size)), ("Page", str(number))]
        return f"{request.url.path}?{urlencode(params)}"

    return {
        "calls": [c.resource() for c in selected],
        "end": start + len(selected) - 1 if selected else start,
        "first_page_uri": page_uri(0),
        "next_page_uri": page_uri(page + 1) if start + page_size < len(calls) else None,
        "page": page,
        "page_size": page_size,
        "previous_page_uri": page_uri(page - 1) if page > 0 else None,
        "start": start,
        "uri": page_uri(page),
    }


def _control_routes(sim: Simulator) -> APIRouter:
    router = APIRouter(prefix="/_sim", tags=["simulator control"])

    @router.get("/stats")
    async def stats() -> dict[str, Any]:
        return sim.stats()

    @router.get("/calls")
    async def calls() -> dict[str, Any]:
        return {"calls": [c.summary() for c in sim.calls.all()]}

    @router.get("/recordings")
    async def recordings() -> dict[str, Any]:
        return {"recordings": [r.summary() for r in sim.recordings.all()]}

    @router.get("/config")
    async def get_config() -> dict[str, Any]:
        return sim.config.model_dump(exclude={"auth_token"})

    @router.post("/config", response_model=None)
    async def update_config(changes: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        try:
            sim.config.patched(changes)
        except ValidationError as exc:
            return JSONResponse({"detail": exc.errors(include_url=False)}, status_code=422)
        return sim.config.model_dump(exclude={"auth_token"})

    @router.post("/reset")
    async def reset() -> dict[str, Any]:
        await sim.reset()
        return sim.stats()

    return router


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return (value.strip() or None) if isinstance(value, str) else None


def _call_request(account_sid: str, form: FormData, received_at: float) -> CallRequest:
    """Validate a create-call form the way Twilio does, first error wins."""

    def text(name: str) -> str | None:
        return _text(form, name)

    to = _phone("To", text("To"), 21211, "Invalid 'To' Phone Number")
    from_ = _phone("From", text("From"), 21212, "Invalid 'From' Phone Number")
    if not any(text(name) for name in ("Url", "Twiml", "ApplicationSid")):
        raise TwilioApiError(400, 21205, "Url parameter is required.")
    method = (text("StatusCallbackMethod") or "POST").upper()
    if method not in ("GET", "POST"):
        raise TwilioApiError(400, 21609, f"Invalid StatusCallbackMethod: {method}")
    # Repeated fields as the SDK sends them, or one space-separated value as some clients do.
    events = {part for e in form.getlist("StatusCallbackEvent") for part in str(e).lower().split()}
    if unknown := events - _CALLBACK_EVENTS:
        raise TwilioApiError(400, 21626, f"Invalid StatusCallbackEvent: {', '.join(sorted(unknown))}")
    return CallRequest(
        account_sid=account_sid,
        to=to,
        from_=from_,
        status_callback=text("StatusCallback"),
        status_callback_method=method,
        callback_events=frozenset(events),
        timeout=_seconds(text("Timeout"), "Timeout") or 60.0,
        time_limit=_seconds(text("TimeLimit"), "TimeLimit"),
        twiml=text("Twiml"),
        url=text("Url"),
        url_method=_method(text("Method"), "Method"),
        received_at=received_at,
        **_machine_detection(form),
        **_recording(form),
    )


def _machine_detection(form: FormData) -> dict[str, Any]:
    """CreateCall's answering-machine detection fields: `MachineDetection` (`Enable` or
    `DetectMessageEnd`; detection is off without it), `MachineDetectionTimeout` (seconds, default 30),
    `AsyncAmd` (`true` or `false`), `AsyncAmdStatusCallback` and its method (default POST)."""
    mode = (_text(form, "MachineDetection") or "").lower()
    timeout = _seconds(_text(form, "MachineDetectionTimeout"), "MachineDetectionTimeout")
    return {
        "machine_detection": mode in ("enable", "detectmessageend"),
        "machine_detection_mode": DETECT_MESSAGE_END if mode == "detectmessageend" else ENABLE,
        "machine_detection_timeout": timeout or DEFAULT_TIMEOUT_SECONDS,
        "async_amd": (_text(form, "AsyncAmd") or "").lower() == "true",
        "async_amd_status_callback": _text(form, "AsyncAmdStatusCallback"),
        "async_amd_status_callback_method": _method(
            _text(form, "AsyncAmdStatusCallbackMethod"), "AsyncAmdStatusCallbackMethod"
        ),
    }


def _recording(form: FormData) -> dict[str, Any]:
    """CreateCall's recording fields: `Record` (`true` to record), `RecordingStatusCallback` and its
    method (default POST), `RecordingStatusCallbackEvent` (repeated or space-separated, default
    `completed`), `RecordingChannels` (`mono`, the default, or `dual`)."""
    events = {part for e in form.getlist("RecordingStatusCallbackEvent") for part in str(e).lower().split()}
    if unknown := events - _RECORDING_EVENTS:
        raise invalid_parameter("RecordingStatusCallbackEvent", ", ".join(sorted(unknown)))
    return {
        "record": (_text(form, "Record") or "").lower() == "true",
        "recording_status_callback": _text(form, "RecordingStatusCallback"),
        "recording_status_callback_method": _method(
            _text(form, "RecordingStatusCallbackMethod"), "RecordingStatusCallbackMethod"
        ),
        "recording_status_callback_events": frozenset(events or {"completed"}),
        "recording_channels": "dual"
        if (_text(form, "RecordingChannels") or "").lower() == "dual"
        else "mono",
    }


def _method(value: str | None, name: str) -> str:
    method = (value or "POST").upper()
    if method not in ("GET", "POST"):
        raise invalid_parameter(name, f"{value!r} is not GET or POST")
    return method


def _phone(name: str, value: str | None, invalid_code: int, invalid: str) -> str:
    if value is None:
        raise missing_parameter(name)
    try:
        valid = bool(_E164.match(value)) and phonenumbers.is_valid_number(phonenumbers.parse(value))
    except phonenumbers.NumberParseException:
        valid = False
    if not valid:
        raise TwilioApiError(400, invalid_code, f"{invalid}: {value}")
    return value


def _seconds(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = int(value)
    except ValueError as exc:
        raise TwilioApiError(400, 20001, f"{name} must be an integer") from exc
    if seconds <= 0:
        raise TwilioApiError(400, 20001, f"{name} must be positive")
    return float(seconds)
