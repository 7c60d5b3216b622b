"""Signing in to the dashboard with the business API key, and keeping its forms from being forged.

The session is an HttpOnly, SameSite=Strict cookie scoped to /ui holding a random token, never
the API key; the server keeps the token's hash (`dashboard_sessions`), so signing out ends the
session everywhere, and so does the end of the key it was opened with (rotated past its overlap,
or revoked). Page scripts cannot read the cookie, and browsers send it only with requests that
start on the dashboard's own pages.

Every form that changes something also carries a CSRF token: an HMAC of a fixed label under the
session's token. Only someone holding the session can make it, it needs no storage, and it changes
with each session. The sign-in form, sent before there is a session, is protected by a random token held
both in a cookie and in the form (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from api.deps import SessionDep, within_share
from db.models import Business
from outbound_dialer.settings import Settings
from service.keys import business_for_session, close_session, same_secret

SESSION_COOKIE = "dialer_session"
LOGIN_COOKIE = "dialer_login"
COOKIE_PATH = "/ui"
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf"
_CSRF_LABEL = b"outbound-dialer dashboard form"


@dataclass
class DashboardUser:
    """The signed-in business, with what its pages show, read while the request's session was fresh."""

    business: Business
    business_name: str
    csrf: str


class SignInRequired(Exception):
    """A dashboard page was asked for without a valid session: the handler sends the browser to sign in."""

    def __init__(self, next_path: str) -> None:
        super().__init__("sign in to see the dashboard")
        self.next_path = next_path


def csrf_token(session_token: str) -> str:
    """The token the session's forms carry."""
    return hmac.new(session_token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a dashboard path on this site, never another site."""
    if path and path.startswith("/ui/") and not path.startswith("//") and "\\" not in path:
        return path
    return "/ui/runs"


async def _signed_in(request: Request, session: SessionDep) -> DashboardUser | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    business = await business_for_session(session, token)
    if business is None:
        return None
    return DashboardUser(business=business, business_name=business.name, csrf=csrf_token(token))


async def page_user(request: Request, session: SessionDep) -> DashboardUser:
    """The signed-in business, for a page: without a session the browser is sent to sign in."""
    user = await _signed_in(request, session)
    if user is None:
        if request.method != "GET":  # a form posted after the session ended: start from the runs
            raise SignInRequired("/ui/runs")
        raise SignInRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    within_share(request, user.business.id)
    return user


async def api_user(request: Request, session: SessionDep) -> DashboardUser:
    """The signed-in business, for the pages' own JSON: without a session, 401."""
    user = await _signed_in(request, session)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in to the dashboard")
    within_share(request, user.business.id)
    return user


PageUser = Annotated[DashboardUser, Depends(page_user)]
ApiUser = Annotated[DashboardUser, Depends(api_user)]


def check_csrf(user: DashboardUser, form: FormData) -> None:
    """Refuse a form that did not come from one of the business's own pages."""
    given = form.get(CSRF_FIELD)
    if not isinstance(given, str) or not same_secret(given, user.csrf):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the form is out of date: reload the page and try again"
        )


def sign_in_redirect(request: Request, error: SignInRequired) -> Response:
    """Send the browser to the sign-in page, and back here after."""
    response = RedirectResponse(
        f"/ui/login?next={quote(error.next_path, safe='/')}", status.HTTP_303_SEE_OTHER
    )
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


def _secure(settings: Settings) -> bool:
    return settings.PUBLIC_BASE_URL.startswith("https://")


def start_session(response: Response, settings: Settings, token: str) -> None:
    """Keep the session's token in the browser's cookie."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(settings),
    )
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)


async def end_session(request: Request, session: SessionDep, response: Response) -> None:
    """End the session on the server, and have the browser forget its token."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await close_session(session, token)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def new_login_token() -> str:
    """A fresh token for the sign-in form; `keep_login_token` sets its cookie."""
    return secrets.token_urlsafe(24)


def keep_login_token(response: Response, settings: Settings, token: str) -> None:
    """Set the cookie the sign-in form's token is checked against."""
    response.set_cookie(
        LOGIN_COOKIE, token, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure(settings)
    )


def login_token_matches(request: Request, form: FormData) -> bool:
    """Whether the sign-in form carries the token its cookie holds."""
    cookie = request.cookies.get(LOGIN_COOKIE)
    given = form.get(CSRF_FIELD)
    return bool(cookie) and isinstance(given, str) and same_secret(given, cookie or "")
