"""Twilio's callbacks about a run's calls: their status and who answered (check the signature,
signal the run, nothing else), and the bridged leg and the recording (check the signature, keep
them on the attempt)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from fastapi import APIRouter, HTTPException, Request, Response, status
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from twilio.request_validator import SIGNATURE_SETTINGS_HEADER, RequestValidator, get_signature_algorithm
from twilio.twiml.voice_response import VoiceResponse

from api.deps import MetricsDep, SessionDep, SettingsDep, TemporalDep
from api.problems import problems
from contracts.messages import CallStatusEvent, MachineDetected
from contracts.names import (
    CALL_STATUS,
    CALL_STATUS_WEBHOOK,
    DIAL_WEBHOOK,
    MACHINE_DETECTED,
    MACHINE_WEBHOOK,
    RECORDING_WEBHOOK,
    TWILIO_WEBHOOKS,
    run_workflow_id,
)
from contracts.statuses import RecordingStatus
from outbound_dialer.settings import Settings
from service.call_reports import AttemptCall, BridgedLeg, Recording, record_bridged_leg, record_recording
from telephony.twilio_client import CALLBACK_RETRIES

log = logging.getLogger(__name__)
router = APIRouter(prefix=TWILIO_WEBHOOKS, tags=["webhooks"])
SIGNAL_PATIENCE_SECONDS = 10.0

# What Twilio sends, as the API reads it; Twilio sends more fields than these, and they are signed too.
_CALLBACK_FORM = {
    "type": "object",
    "properties": {
        "CallSid": {"type": "string"},
        "CallStatus": {"type": "string"},
        "SequenceNumber": {"type": "string", "pattern": "^[0-9]*$"},
        "CallDuration": {"type": "string", "pattern": "^[0-9]*$"},
        "AnsweredBy": {"type": "string"},
        "ErrorCode": {"type": "string", "pattern": "^[0-9]*$"},
        "ErrorMessage": {"type": "string"},
    },
    "required": ["CallSid", "CallStatus"],
    "additionalProperties": {"type": "string"},
}
_CALLBACK_QUERY = [
    {"name": "run", "in": "query", "required": True, "schema": {"type": "string"}},
    {"name": "lead", "in": "query", "required": True, "schema": {"type": "integer"}},
    {"name": "attempt", "in": "query", "required": True, "schema": {"type": "integer"}},
    {"name": "t", "in": "query", "required": True, "schema": {"type": "string"}},
    {"name": "X-Twilio-Signature", "in": "header", "required": True, "schema": {"type": "string"}},
]


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _signed_by_twilio(request: Request, settings: Settings, url: str, params: dict[str, str]) -> bool:
    """Check X-Twilio-Signature. Accounts on Twilio's newer webhook signing say so in
    X-Twilio-Webhooks-Signature-Settings: the algorithm is named there and the secret is the
    account's webhook signing key; otherwise it is HMAC-SHA1 with the auth token."""
    signature_settings = request.headers.get(SIGNATURE_SETTINGS_HEADER)
    secret = settings.TWILIO_AUTH_TOKEN
    algorithm = None
    if signature_settings:
        algorithm = get_signature_algorithm(signature_settings)
        secret = settings.TWILIO_WEBHOOK_SIGNING_KEY or secret
    validator = RequestValidator(secret.get_secret_value())
    signature = request.headers.get("X-Twilio-Signature", "")
    # The connection overrides in our callback URLs' fragment are not part of what Twilio signs;
    # were they ever, the URL with them is ours too (the fragment is our constant), so both pass.
    return any(
        validator.validate(signed, params, signature, algorithm)
        for signed in (url, f"{url}#{CALLBACK_RETRIES}")
    )


_MACHINE_FORM = {
    "type": "object",
    "properties": {
        "CallSid": {"type": "string"},
        "AnsweredBy": {"type": "string"},
        "MachineDetectionDuration": {"type": "string", "pattern": "^[0-9]*$"},
    },
    "required": ["CallSid", "AnsweredBy"],
    "additionalProperties": {"type": "string"},
}


def _callback_openapi(schema: Mapping[str, object]) -> dict[str, object]:
    return {
        "parameters": _CALLBACK_QUERY,
        "requestBody": {
            "required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": schema}},
        },
    }


def _attempt_call(request: Request, params: dict[str, str], what: str = "callback") -> AttemptCall:
    """The attempt a callback's URL names, and the call Twilio says it is about; 400 if either is
    missing."""
    query = request.query_params
    try:
        return AttemptCall(query["run"], int(query["lead"]), int(query["attempt"]), params["CallSid"][:34])
    except (KeyError, ValueError) as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"malformed {what}: {error}") from None


def _context(call: AttemptCall) -> dict[str, object]:
    """What a callback's log line names: run, lead, attempt and call SID."""
    return {"run": call.run_id, "lead": call.lead_id, "attempt": call.attempt, "call_sid": call.call_sid}


async def _signed_params(
    request: Request, settings: Settings, metrics: MetricsDep, path: str
) -> dict[str, str]:
    """The callback's form, once its X-Twilio-Signature is found good and its URL is one we made
    for `path` (CallbackUrls): either wrong is a 403."""
    form = await request.form(max_files=0)  # Twilio sends fields, never files
    params = {key: str(value) for key, value in form.multi_items()}
    # Behind a proxy the request URL differs from the one Twilio signed: PUBLIC_BASE_URL is the truth.
    url = settings.PUBLIC_BASE_URL + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    if not _signed_by_twilio(request, settings, url, params):
        log.warning("webhook signature rejected", extra={"call_sid": params.get("CallSid", "")[:64]})
        metrics.signature_failures.inc()
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid X-Twilio-Signature")
    if not request.app.state.callback_urls.ours(path, request.query_params):
        # Signed by Twilio, for a URL someone else gave it (a business's own TwiML).
        log.warning("callback URL not ours", extra={"call_sid": params.get("CallSid", "")[:64], "path": path})
        metrics.signature_failures.inc()
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a callback URL this service did not make")
    return params


async def _signal_run(
    temporal: Client, metrics: MetricsDep, run_id: str, signal: str, event: CallStatusEvent | MachineDetected
) -> None:
    """Signal the run; a run that no longer exists has nothing to learn (Twilio is answered, and
    stops sending); a run that cannot take it now gets a 503, which Twilio sends again."""
    context = {"run": run_id, "lead": event.lead_id, "attempt": event.attempt, "call_sid": event.call_sid}
    try:
        await _signal_patiently(temporal, run_id, signal, event)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            log.info("callback for a run that is no longer running", extra={**context, "signal": signal})
            return
        log.error("callback not delivered", extra={**context, "signal": signal, "error": error.message})
        metrics.webhooks_undelivered.inc()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the run could not take the callback now; send it again"
        ) from None


async def _signal_patiently(
    temporal: Client, run_id: str, signal: str, event: CallStatusEvent | MachineDetected
) -> None:
    """Signal the run. While a run continues as new, the server refuses signals for a moment
    ("workflow is closing", RESOURCE_EXHAUSTED) and Twilio does not send a callback twice, so keep
    trying for most of the 15 s Twilio waits for an answer."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + SIGNAL_PATIENCE_SECONDS
    pause = 0.05
    while True:
        try:
            await temporal.get_workflow_handle(run_workflow_id(run_id)).signal(signal, event)
            return
        except RPCError as error:
            if error.status != RPCStatusCode.RESOURCE_EXHAUSTED or loop.time() + pause > give_up_at:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


@router.post(
    CALL_STATUS_WEBHOOK.removeprefix(TWILIO_WEBHOOKS),
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(403, 503),
    openapi_extra=_callback_openapi(_CALLBACK_FORM),
)
async def call_status(
    request: Request, settings: SettingsDep, temporal: TemporalDep, metrics: MetricsDep
) -> Response:
    """A call's status from Twilio. A bad signature is a 403 and changes nothing; a callback for a
    run that no longer exists is acknowledged, so Twilio stops retrying it."""
    params = await _signed_params(request, settings, metrics, CALL_STATUS_WEBHOOK)
    metrics.webhook_received(params.get("CallStatus"))

    call = _attempt_call(request, params, "status callback")
    try:
        event = CallStatusEvent(
            lead_id=call.lead_id,
            attempt=call.attempt,
            call_sid=params["CallSid"],
            status=params["CallStatus"],
            sequence_number=_int(params.get("SequenceNumber")),
            duration=_int(params.get("CallDuration")),
            answered_by=params.get("AnsweredBy") or None,
            error_code=_int(params.get("ErrorCode")),
            error_message=params.get("ErrorMessage") or None,
            at=time.time(),
        )
    except (KeyError, ValueError) as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"malformed status callback: {error}") from None

    await _signal_run(temporal, metrics, call.run_id, CALL_STATUS, event)
    log.info("call status", extra={**_context(call), "status": event.status, "seq": event.sequence_number})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    MACHINE_WEBHOOK.removeprefix(TWILIO_WEBHOOKS),
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(403, 503),
    openapi_extra=_callback_openapi(_MACHINE_FORM),
)
async def machine_detected(
    request: Request, settings: SettingsDep, temporal: TemporalDep, metrics: MetricsDep
) -> Response:
    """Who answered a call, from Twilio's answering-machine detection (AsyncAmdStatusCallback). A
    bad signature is a 403 and changes nothing."""
    params = await _signed_params(request, settings, metrics, MACHINE_WEBHOOK)
    call = _attempt_call(request, params, "machine detection callback")
    try:
        event = MachineDetected(
            call.lead_id, call.attempt, params["CallSid"], params["AnsweredBy"][:32], at=time.time()
        )
    except KeyError as error:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"malformed machine detection callback: {error}"
        ) from None
    await _signal_run(temporal, metrics, call.run_id, MACHINE_DETECTED, event)
    log.info("who answered", extra={**_context(call), "answered_by": event.answered_by})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_DIAL_FORM = {
    "type": "object",
    "properties": {
        "CallSid": {"type": "string"},
        "DialCallSid": {"type": "string"},
        "DialCallStatus": {"type": "string"},
        "DialCallDuration": {"type": "string", "pattern": "^[0-9]*$"},
    },
    "required": ["CallSid", "DialCallStatus"],
    "additionalProperties": {"type": "string"},
}
_RECORDING_FORM = {
    "type": "object",
    "properties": {
        "CallSid": {"type": "string"},
        "RecordingSid": {"type": "string"},
        "RecordingStatus": {"type": "string"},
        "RecordingDuration": {"type": "string", "pattern": "^[0-9]*$"},
        "RecordingUrl": {"type": "string"},
    },
    "required": ["CallSid", "RecordingSid", "RecordingStatus"],
    "additionalProperties": {"type": "string"},
}
# What an answered call does once its bridged leg has ended: nothing more (Twilio hangs up).
_HANG_UP = str(VoiceResponse())


@router.post(
    DIAL_WEBHOOK.removeprefix(TWILIO_WEBHOOKS),
    responses={200: {"content": {"application/xml": {}}}, **problems(403)},
    response_class=Response,
    openapi_extra=_callback_openapi(_DIAL_FORM),
)
async def bridged_leg(
    request: Request, settings: SettingsDep, metrics: MetricsDep, session: SessionDep
) -> Response:
    """How the leg a connect answer bridged the call to went (Twilio's `<Dial>` action), kept on
    the attempt. Answered with TwiML that ends the call. A bad signature is a 403."""
    params = await _signed_params(request, settings, metrics, DIAL_WEBHOOK)
    call = _attempt_call(request, params)
    leg = BridgedLeg(
        status=params.get("DialCallStatus", "")[:16],
        seconds=_int(params.get("DialCallDuration")),
        call_sid=(params.get("DialCallSid") or None) and params["DialCallSid"][:34],
    )
    kept = await record_bridged_leg(session, call, leg)
    log.info(
        "bridged leg",
        extra={**_context(call), "status": leg.status, "kept": kept},
    )
    return Response(_HANG_UP, media_type="application/xml")


@router.post(
    RECORDING_WEBHOOK.removeprefix(TWILIO_WEBHOOKS),
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(403),
    openapi_extra=_callback_openapi(_RECORDING_FORM),
)
async def recording(
    request: Request, settings: SettingsDep, metrics: MetricsDep, session: SessionDep
) -> Response:
    """A call's recording, from Twilio's recording status callback, kept on the attempt (its SID,
    length and URL). A bad signature is a 403."""
    params = await _signed_params(request, settings, metrics, RECORDING_WEBHOOK)
    call = _attempt_call(request, params)
    reported = params.get("RecordingStatus", "")
    if reported not in (RecordingStatus.COMPLETED, RecordingStatus.ABSENT):
        return Response(status_code=status.HTTP_204_NO_CONTENT)  # in-progress: the end will come
    url = params.get("RecordingUrl", "")
    made = Recording(
        sid=params.get("RecordingSid", "")[:34],
        status=reported,
        seconds=_int(params.get("RecordingDuration")),
        url=url[:1000] if url.startswith("https://") else None,
    )
    kept = await record_recording(session, call, made)
    log.info(
        "recording",
        extra={**_context(call), "recording_sid": made.sid, "status": reported, "kept": kept},
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
