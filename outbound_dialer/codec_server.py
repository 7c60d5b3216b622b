"""A codec server: lets the Temporal Web UI and CLI show encrypted payloads to an operator who holds
the key, by Temporal's codec server protocol (POST `.../decode` and `.../encode` with Payloads as
protobuf JSON, the path's last part naming which).

Meant to run where the key is, such as an operator's own machine (`outbound codec serve`): it
listens on 127.0.0.1, answers only the Web UI origins it is given, and refuses any other Host
(a web page that rebinds its name to 127.0.0.1 cannot reach it).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from outbound_dialer.payload_codec import EncryptionCodec, PayloadKeyError

log = logging.getLogger(__name__)

# The Web UI asks for a page's payloads at once; a payload is at most 2 MiB in Temporal.
MAX_BODY_BYTES = 16 * 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def create_codec_app(
    codec: EncryptionCodec,
    ui_origins: Sequence[str],
    hosts: Sequence[str] = LOOPBACK_HOSTS,
    auth_token: str | None = None,
) -> Starlette:
    """The codec server for `codec`, answering browsers on `ui_origins` (such as
    http://127.0.0.1:8233) and requests addressed to `hosts`; with `auth_token`, only requests
    that carry it (`Authorization: Bearer ...`, as `temporal --codec-auth` sends it)."""
    origins = [origin.rstrip("/") for origin in ui_origins]
    if auth_token is not None and not auth_token.strip():
        raise ValueError("an empty token would let every request through")
    expected = f"Bearer {auth_token}".encode() if auth_token is not None else None

    async def convert(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin not in origins:
            return _problem(403, f"the origin {origin} is not one this codec server answers")
        given = request.headers.get("authorization", "").encode()
        if expected is not None and not hmac.compare_digest(given, expected):
            return _problem(401, "this codec server needs its token: Authorization: Bearer <token>")
        action = request.path_params["path"].rstrip("/").rpartition("/")[2]
        if action not in ("encode", "decode"):
            return _problem(404, "the path must end in /encode or /decode")
        payloads = await _payloads(request)
        if isinstance(payloads, Response):
            return payloads
        if action == "decode":
            converted = [_opened(codec, payload) for payload in payloads.payloads]
        else:
            converted = await codec.encode(payloads.payloads)
        # Protobuf's JSON leaves an empty list out; the Web UI reads `payloads` whatever it holds.
        body = json_format.MessageToDict(Payloads(payloads=converted)) if converted else {"payloads": []}
        return JSONResponse(body)

    return Starlette(
        routes=[Route("/{path:path}", convert, methods=["POST"])],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts)),
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["POST"],
                allow_headers=["Content-Type", "X-Namespace", "Authorization"],
                allow_credentials=True,
                allow_private_network=True,
            ),
        ],
    )


def _opened(codec: EncryptionCodec, payload: Payload) -> Payload:
    """The payload inside a sealed one; one this server cannot open is given back as it is (the Web
    UI shows it sealed, and the rest of its page decoded), and the key it needs is logged."""
    try:
        return codec.open(payload)
    except PayloadKeyError as error:
        log.warning("payload left sealed", extra={"reason": str(error)})
        return payload


async def _payloads(request: Request) -> Payloads | Response:
    """The request's Payloads, or the problem with them."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _problem(413, f"the body is over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return _problem(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        return json_format.Parse(bytes(body), Payloads(), ignore_unknown_fields=True)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError) as error:
        return _problem(400, f"the body is not Payloads as protobuf JSON: {error}")


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)
