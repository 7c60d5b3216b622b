"""HTTP API v1 for the command line: one client per command, every failure an `ApiError`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import httpx

TIMEOUT = httpx.Timeout(30.0)
# The API answers an upload once its last lead is stored, which for a long list takes a while.
UPLOAD_TIMEOUT = httpx.Timeout(30.0, read=600.0)


class ApiError(Exception):
    """A request that failed: the API's own message, or why the API could not be reached.
    `problems` holds the API's itemised errors (a bad lead list names each bad line)."""

    def __init__(self, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class Api:
    """The API at `base_url`, called with a bearer token (a business API key or the admin token)."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._http.close()

    def call(self, method: str, path: str, **options: Any) -> Any:
        """Send a request; the JSON answer, or None for an empty one."""
        with self._transport_errors():
            response = self._http.request(method, path, **options)
        _raise_for_status(response)
        return response.json() if response.content else None

    @contextmanager
    def stream(self, method: str, path: str, **options: Any) -> Iterator[httpx.Response]:
        """Send a request and hand over the response unread, once it is known to be a success."""
        with self._transport_errors(), self._http.stream(method, path, **options) as response:
            if response.is_error:
                response.read()
                _raise_for_status(response)
            yield response

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as error:
            raise ApiError(f"could not reach the API at {self.base_url}: {error}") from None
        except httpx.TimeoutException:
            raise ApiError(f"the API at {self.base_url} did not answer in time") from None
        except httpx.TransportError as error:
            raise ApiError(f"the request to the API at {self.base_url} failed: {error}") from None


def _raise_for_status(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        count = f"{len(detail)} problem{'s' if len(detail) != 1 else ''}"
        raise ApiError(f"the API refused the request ({response.status_code}, {count})", problems=detail)
    message = detail if isinstance(detail, str) else response.text.strip() or response.reason_phrase
    raise ApiError(f"{message} ({response.status_code})")
