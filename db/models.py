"""SQLAlchemy models: businesses, runs, leads, call attempts and the events sent to businesses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from contracts.statuses import OUTCOME_BY_CALL_STATUS

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """Timezone-aware now, for defaults."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC, aware on the way out on every database (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention Alembic can rely on."""

    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


Base.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Business(Base):
    """A tenant: its caller ID, its line cap and the hash of its API key."""

    __tablename__ = "businesses"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    caller_id: Mapped[str] = mapped_column(String(20))
    max_concurrent_calls: Mapped[int] = mapped_column(Integer, default=3)
    timezone: Mapped[str | None] = mapped_column(String(64))
    # Default calling window for the business's runs: {"start": "08:00", "end": "21:00", "days": [0..6]}.
    calling_window: Mapped[dict[str, Any] | None]
    # What its runs' answered calls do unless a run says otherwise (`AnswerIn`); the product's greeting if unset.
    answer: Mapped[dict[str, Any] | None]
    # The secret a voice app's URL is signed with (Standard Webhooks form), made with its first one.
    answer_secret: Mapped[str | None] = mapped_column(String(100))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where the business's events are POSTed, and the secret they are signed with (the worker needs
    # the secret itself to sign, so it is kept, not hashed). No events are recorded without a URL.
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_secret: Mapped[str | None] = mapped_column(String(100))
    # Recordings of its calls are deleted at Twilio this many days after they were made; kept if unset.
    recording_retention_days: Mapped[int | None] = mapped_column(Integer)


class ApiKey(Base):
    """A business's API key, by its hash. A key works until it expires (a rotation gives the keys
    before it an overlap) or is revoked; `businesses.api_key_hash` keeps the newest, for API
    processes from before keys had rows of their own."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    business_id: Mapped[str] = mapped_column(ForeignKey("businesses.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class DashboardSession(Base):
    """A signed-in dashboard, by the hash of its cookie's token: it ends at sign-out, at
    `expires_at`, or when the key it was opened with stops working."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    business_id: Mapped[str] = mapped_column(ForeignKey("businesses.id"), index=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class Run(Base):
    """An outbound run; its workflow is `outbound-run-{id}`."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    business_id: Mapped[str] = mapped_column(ForeignKey("businesses.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    total_leads: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # Set by the API before it acknowledges a cancel; no call is placed once it is set.
    cancel_requested_at: Mapped[datetime | None]


class Lead(Base):
    """A number to call in a run, with its outcome once it has one."""

    __tablename__ = "leads"
    __table_args__ = (Index("ix_leads_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    phone: Mapped[str] = mapped_column(String(20))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # The called party's time zone, when the uploader knows better than the number.
    timezone: Mapped[str | None] = mapped_column(String(64))
    # The lead's other fields from the upload (a CSV's other columns), stored in the column
    # `metadata`; the attribute has another name because declarative classes keep `metadata` for
    # the schema. NULL, not JSON null, when there are none.
    extra: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON(none_as_null=True))


class CallAttempt(Base):
    """One dial of a lead. (run, lead, attempt) is unique: it is the dial's idempotency key."""

    __tablename__ = "call_attempts"
    __table_args__ = (UniqueConstraint("run_id", "lead_id", "attempt", name="uq_call_attempts_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    call_sid: Mapped[str | None] = mapped_column(String(34), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    duration: Mapped[int | None] = mapped_column(Integer)
    answered_by: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    # The attempt's outcome where its status alone does not say it (`voicemail`, `machine`).
    outcome: Mapped[str | None] = mapped_column(String(16))
    # The leg a connect answer bridged the call to (Twilio's <Dial> action): its status and length.
    bridged_call_sid: Mapped[str | None] = mapped_column(String(34))
    bridged_status: Mapped[str | None] = mapped_column(String(16))
    bridged_seconds: Mapped[int | None] = mapped_column(Integer)
    # The call's recording, when its answer records: `pending` from the dial until Twilio reports
    # it (`completed`, or `absent` when there was no audio), `deleted` once the business's
    # retention has run out and it is deleted at Twilio.
    recording_sid: Mapped[str | None] = mapped_column(String(34), index=True, unique=True)
    recording_status: Mapped[str | None] = mapped_column(String(16))
    recording_seconds: Mapped[int | None] = mapped_column(Integer)
    recording_url: Mapped[str | None] = mapped_column(Text)
    recording_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def lead_outcome(self) -> str:
        """What this attempt's ending means for its lead (`answered`, `voicemail`, `busy`, ...)."""
        if self.outcome is not None:
            return self.outcome
        return OUTCOME_BY_CALL_STATUS.get(self.status, self.status)


class DoNotCall(Base):
    """A number a business must not call; checked at dial time."""

    __tablename__ = "do_not_call"
    __table_args__ = (UniqueConstraint("business_id", "phone", name="uq_do_not_call_business_phone"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    business_id: Mapped[str] = mapped_column(ForeignKey("businesses.id"))
    phone: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentNumber(Base):
    """A number a business's answered calls may be connected to: registered before any run may use
    it, so an operator limits where the account's calls can be bridged."""

    __tablename__ = "agent_numbers"
    __table_args__ = (UniqueConstraint("business_id", "phone", name="uq_agent_numbers_business_phone"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    business_id: Mapped[str] = mapped_column(ForeignKey("businesses.id"))
    phone: Mapped[str] = mapped_column(String(20))
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """An event for a business's webhook (`call.completed`, `run.completed`) and its delivery.

    Written in the transaction that records what it reports, so none is lost; its id is derived from
    what it reports, so recording the same thing twice writes one event, and the receiver gets the
    same id (its idempotency key) on every delivery of it."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_due", "business_id", "status", "next_attempt_at"),
        Index("ix_events_business_id_created_at", "business_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    business_id: Mapped[str] = mapped_column(ForeignKey("businesses.id"))
    type: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    lead_id: Mapped[int | None] = mapped_column(BigInteger)
    attempt: Mapped[int | None] = mapped_column(Integer)
    # pending (waiting for its first or next try), delivered, or failed (given up).
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)


class LineLease(Base):
    """One of a business's lines, held by the call attempt that uses it: the hard line cap.

    A dial claims a free slot below the business's cap, in a transaction committed before it asks
    Twilio for the call, and the lease is released in the transaction that writes the attempt's
    terminal outcome (or once Twilio says a call of a run whose workflow is gone has ended). No
    workflow's state can lose it, so terminating or resetting a workflow cannot break the cap."""

    __tablename__ = "line_leases"
    __table_args__ = (UniqueConstraint("run_id", "lead_id", "attempt", name="uq_line_leases_attempt"),)

    business_id: Mapped[str] = mapped_column(ForeignKey("businesses.id"), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    lead_id: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
