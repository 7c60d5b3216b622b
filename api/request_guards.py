"""Requests refused at the door, before any route sees them: a body over its route's limit (413,
before it is all read) and a URL holding the NUL character (400).

FastAPI's own `max_body_size` answers a plain-text "Content Too Large" that does not say what the
limit is; this answers `{"detail": ...}`, like every other error of the API, and names it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from `receive` as the body goes past the limit: the route reading it stops there, its
    session rolls back, and the app's HTTPException handler answers 413 with this detail (FastAPI
    passes an HTTPException met while reading a body on as it is)."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


def _size(limit: int) -> str:
    """`20,971,520 bytes (20 MiB)`: exact, and readable."""
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit >= scale:
            return f"{limit:,} bytes ({limit / scale:.3g} {unit})"
    return f"{limit:,} bytes"


class BodyLimitMiddleware:
    """Refuse a request whose body is larger than its limit: `upload_limit` for the routes in
    `upload_routes` (method and path) when `may_upload` says the request comes from a business
    (its key or dashboard session works, checked before the body is read), `limit` for every other.
    A Content-Length over the limit is refused before the app runs; a body sent without one
    (chunked) is counted as it arrives and refused once it passes the limit, so it is never held
    whole."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        upload_limit: int,
        upload_routes: Collection[tuple[str, str]],
        may_upload: Callable[[Scope], Awaitable[bool]] | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit
        self.upload_routes = frozenset(upload_routes)
        self.may_upload = may_upload

    def _detail(self, upload: bool) -> str:
        if upload:
            return (
                f"the request body is larger than {_size(self.upload_limit)}, the most a list of leads "
                "or numbers may be: split the list and send each part on its own"
            )
        return f"the request body is larger than {_size(self.limit)}, the most this endpoint takes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = (scope["method"], scope["path"].rstrip("/")) in self.upload_routes
        if upload and self.may_upload is not None:
            upload = await self.may_upload(scope)
        limit = self.upload_limit if upload else self.limit
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": self._detail(upload)}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(self._detail(upload))
            return message

        await self.app(scope, receive_within_limit, send)


class NulInUrlMiddleware:
    """Refuse a URL holding the NUL character (`%00`) with 400: no path or parameter of the API may
    hold one, and the database cannot store or even compare text that does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]):
            detail = "the URL holds a NUL character (%00), which no path or parameter may"
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)
