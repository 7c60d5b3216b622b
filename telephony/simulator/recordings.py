"""Recordings of the simulator's calls, rendered as Twilio's Recording resource."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from telephony.simulator.calls import API_VERSION, rfc2822

# The host Twilio's recording URLs name; `RecordingUrl` is on it whatever host served the API.
TWILIO_API = "https://api.twilio.com"


def new_recording_sid() -> str:
    """A Twilio-shaped recording SID: ``RE`` and 32 lowercase hex digits."""
    return "RE" + secrets.token_hex(16)


@dataclass
class Recording:
    """A call's recording, made by `Record=true` on the create (source `OutboundAPI`)."""

    sid: str
    account_sid: str
    call_sid: str
    duration: int
    channels: int
    start_time: float
    created_at: float = field(default_factory=time.time)
    deleted: bool = False
    # What became of its recording status callback: none asked for (None), queued, sent, dropped, failed.
    callback_fate: str | None = None

    def uri(self) -> str:
        """The recording's path under the REST API."""
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Recordings/{self.sid}.json"

    def media_url(self) -> str:
        """Where Twilio serves the audio: `RecordingUrl` in callbacks, no extension."""
        return f"{TWILIO_API}{self.uri().removesuffix('.json')}"

    def resource(self) -> dict[str, Any]:
        """The Recording resource as Twilio's REST API returns it (`api.v2010.account.recording`)."""
        base = self.uri().removesuffix(".json")
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "call_sid": self.call_sid,
            "conference_sid": None,
            "date_created": rfc2822(self.created_at),
            "date_updated": rfc2822(self.created_at),
            "start_time": rfc2822(self.start_time),
            "duration": str(self.duration),
            "sid": self.sid,
            "price": None,
            "price_unit": "USD",
            "status": "deleted" if self.deleted else "completed",
            "channels": self.channels,
            "source": "OutboundAPI",
            "error_code": None,
            "uri": self.uri(),
            "encryption_details": None,
            "subresource_uris": {
                "add_on_results": f"{base}/AddOnResults.json",
                "transcriptions": f"{base}/Transcriptions.json",
            },
            "media_url": self.media_url(),
        }

    def callback_params(self) -> dict[str, str]:
        """The form fields of its `completed` recording status callback."""
        return {
            "AccountSid": self.account_sid,
            "CallSid": self.call_sid,
            "RecordingSid": self.sid,
            "RecordingUrl": self.media_url(),
            "RecordingStatus": "completed",
            "RecordingDuration": str(self.duration),
            "RecordingChannels": str(self.channels),
            "RecordingSource": "OutboundAPI",
            "RecordingStartTime": rfc2822(self.start_time),
        }

    def summary(self) -> dict[str, Any]:
        """The recording as the simulator's control API reports it."""
        return {
            "sid": self.sid,
            "call_sid": self.call_sid,
            "duration": self.duration,
            "channels": self.channels,
            "created_at": self.created_at,
            "deleted": self.deleted,
            "callback_fate": self.callback_fate,
        }


class RecordingStore:
    """Every recording the simulator has made, deleted ones included, in creation order."""

    def __init__(self) -> None:
        self._recordings: dict[str, Recording] = {}

    def add(self, recording: Recording) -> None:
        """Remember a new recording."""
        self._recordings[recording.sid] = recording

    def get(self, sid: str) -> Recording | None:
        """The recording with this SID, deleted or not, if any."""
        return self._recordings.get(sid)

    def all(self) -> list[Recording]:
        """Every recording, oldest first."""
        return list(self._recordings.values())

    def clear(self) -> None:
        """Forget every recording."""
        self._recordings.clear()
