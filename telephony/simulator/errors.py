"""Twilio's REST error responses."""

from __future__ import annotations

from typing import Any


class TwilioApiError(Exception):
    """An error the simulator answers in Twilio's shape: HTTP status plus a Twilio error code."""

    def __init__(self, status: int, code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        """The headers Twilio sends with this error."""
        if self.status == 401:
            return {"WWW-Authenticate": 'Basic realm="Twilio API"'}
        if self.retry_after is not None:
            return {"Retry-After": f"{self.retry_after:g}"}
        return None

    def body(self) -> dict[str, Any]:
        """The JSON body Twilio sends with this error."""
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


def not_found(path: str) -> TwilioApiError:
    """Twilio's 404 for an unknown resource."""
    return TwilioApiError(404, 20404, f"The requested resource {path} was not found")


def too_many_requests(retry_after: float | None = None) -> TwilioApiError:
    """Twilio's 429: the request was not processed and is safe to retry, after ``retry_after`` s if given."""
    return TwilioApiError(429, 20429, "Too Many Requests", retry_after)


# How Twilio words the refusals an account can get on every request (https://www.twilio.com/docs/api/errors).
ACCOUNT_REFUSALS: dict[int, tuple[int, str]] = {
    10001: (403, "Account is not active"),
    20003: (401, "Authenticate"),
    20005: (403, "Account not active"),
    20429: (429, "Too Many Requests"),
}


def account_refusal(code: int, retry_after: float | None = None) -> TwilioApiError:
    """The error every request of an account that Twilio refuses gets."""
    status, message = ACCOUNT_REFUSALS.get(code, (400, f"Account refused (error {code})"))
    return TwilioApiError(status, code, message, retry_after if status == 429 else None)


def internal_error() -> TwilioApiError:
    """A 500 that tells the client nothing about whether the request took effect."""
    return TwilioApiError(500, 20500, "Internal Server Error")


# Twilio's own codes and messages for a required create-call parameter that is absent.
MISSING_PARAMETER: dict[str, tuple[int, str]] = {
    "To": (21201, "No 'To' number is specified"),
    "From": (21213, "No 'From' number is specified"),
}


def missing_parameter(name: str) -> TwilioApiError:
    """Twilio's 400 for a required parameter that is absent."""
    code, message = MISSING_PARAMETER.get(name, (20001, f"Missing required parameter {name}"))
    return TwilioApiError(400, code, message)


def invalid_parameter(name: str, reason: str) -> TwilioApiError:
    """Twilio's generic 400 for a parameter whose value the API does not accept."""
    return TwilioApiError(400, 20001, f"Invalid parameter {name}: {reason}")
