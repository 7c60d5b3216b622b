"""Runtime settings of the carrier simulator: outcomes, timings and injected faults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from outbound_dialer.settings import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN

FinalStatus = Literal["completed", "busy", "no-answer", "failed"]
# Twilio's `AnsweredBy` values (answering-machine detection).
AnsweredBy = Literal[
    "human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"
]
Seconds = tuple[float, float]


def _dev_outcome_weights() -> dict[FinalStatus, float]:
    return {"completed": 0.6, "busy": 0.15, "no-answer": 0.2, "failed": 0.05}


class SimulatorConfig(BaseModel):
    """How the simulated carrier behaves; every field may be changed while it runs.

    Rates are probabilities in [0, 1] drawn per create or per callback. Time ranges are
    ``(min, max)`` seconds, drawn uniformly per call.
    """

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    account_sid: str = DEV_ACCOUNT_SID
    auth_token: str = DEV_AUTH_TOKEN

    outcome_weights: dict[FinalStatus, float] = Field(default_factory=_dev_outcome_weights)
    outcomes_by_to: dict[str, FinalStatus] = Field(default_factory=dict)
    talk_seconds_by_to: dict[str, float] = Field(
        default_factory=dict,
        description="how long an answered call to this number lasts, overriding talk_seconds",
    )
    answered_by_by_to: dict[str, AnsweredBy] = Field(
        default_factory=dict,
        description="what answering-machine detection reports for this number; unset: human or machine at random",
    )
    machine_detection_seconds: float = Field(
        default=0.2, ge=0, description="time detection takes to tell a person, a fax or a machine's greeting"
    )
    machine_greeting_seconds: float = Field(
        default=1.0,
        ge=0,
        description="length of a machine's greeting, up to its beep (DetectMessageEnd waits for it)",
    )
    update_play_seconds: float = Field(
        default=0.5, ge=0, description="time a call plays TwiML given by an update before it hangs up"
    )
    dial_outcomes_by_number: dict[str, FinalStatus] = Field(
        default_factory=dict, description="how a <Dial> to this number ends; unset: completed"
    )
    queue_seconds: Seconds = Field(default=(0.0, 0.1), description="time a call waits before it is initiated")
    ring_seconds: Seconds = Field(default=(1.0, 3.0), description="time a call rings before its outcome")
    talk_seconds: Seconds = Field(default=(2.0, 8.0), description="length of an answered call")
    seed: int | None = Field(default=None, description="seed for reproducible outcomes and faults")
    validate_requests: bool = Field(
        default=True, description="reject requests that break Twilio's published API description"
    )

    drop_callback_rate: float = Field(default=0.0, ge=0, le=1, description="chance a callback is never sent")
    duplicate_callback_rate: float = Field(
        default=0.0, ge=0, le=1, description="chance a callback is sent twice"
    )
    reorder_callback_rate: float = Field(
        default=0.0, ge=0, le=1, description="chance a callback is held back until after the next one"
    )
    callback_delay_seconds: float = Field(default=0.0, ge=0, description="delay before each callback is sent")
    create_429_rate: float = Field(
        default=0.0, ge=0, le=1, description="chance a create answers 429 without placing the call"
    )
    retry_after_seconds: float | None = Field(
        default=1.0, ge=0, description="the Retry-After a 429 carries; none when null"
    )
    create_5xx_rate: float = Field(
        default=0.0, ge=0, le=1, description="chance a create answers 500 without placing the call"
    )
    create_5xx_after_create_rate: float = Field(
        default=0.0, ge=0, le=1, description="chance a create places the call and still answers 500"
    )
    create_response_delay_seconds: float = Field(
        default=0.0, ge=0, description="the call is placed at once; the answer to the client waits this long"
    )
    list_lag_seconds: float = Field(
        default=0.0, ge=0, description="a new call shows in call lists only this long after it was created"
    )
    # Every create from this caller ID is refused with this Twilio code, as Twilio does for account
    # problems (21210 unverified caller ID, 21219 trial restrictions, ...).
    errors_by_from: dict[str, int] = Field(default_factory=dict)
    # Every create to this number is refused with this Twilio code (21211 invalid number, 21215 no
    # geo permission, 21216 blocked, 21219 not verified on a trial account, ...).
    errors_by_to: dict[str, int] = Field(default_factory=dict)
    # Every request on the account (creates, lists, fetches, updates) is refused with this Twilio
    # code: 20005 or 10001 (not active: suspended, out of funds), 20003 (authentication), 20429.
    account_error: int | None = None
    webhooks_unreachable_until: float | None = None
    updates_fail_until: float | None = Field(
        default=None, description="until this time (epoch seconds) every call update (a hang-up) answers 500"
    )
    callback_retry_attempts: int | None = Field(
        default=None,
        ge=0,
        description=(
            "retries of a callback that failed, whatever the failure; unset: as Twilio does, what the "
            "callback URL's connection overrides say (#rc=&rp=), else one retry when it could not connect"
        ),
    )
    callback_retry_backoff_seconds: float = Field(
        default=0.5, ge=0, description="wait before the first retry, doubling after each"
    )
    callback_timeout_seconds: float = Field(
        default=15.0, gt=0, description="HTTP timeout of one callback (Twilio waits 15 s by default)"
    )

    @field_validator("queue_seconds", "ring_seconds", "talk_seconds")
    @classmethod
    def _ordered_range(cls, value: Seconds) -> Seconds:
        low, high = value
        if low < 0 or high < low:
            raise ValueError("expected (min, max) with 0 <= min <= max")
        return value

    @model_validator(mode="after")
    def _some_outcome_possible(self) -> SimulatorConfig:
        if any(w < 0 for w in self.outcome_weights.values()) or sum(self.outcome_weights.values()) <= 0:
            raise ValueError("outcome_weights must be non-negative with a positive sum")
        return self

    def patched(self, changes: dict[str, Any]) -> SimulatorConfig:
        """Apply a partial update in place, all or nothing, and return self."""
        merged = SimulatorConfig.model_validate({**self.model_dump(), **changes})
        for name in changes:
            # Assign the validated value: a bad field must not leave the config half-changed.
            object.__setattr__(self, name, getattr(merged, name))
        return self
