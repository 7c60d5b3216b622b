"""Answering-machine detection: what Twilio reports as `AnsweredBy`, and how long after the answer."""

from __future__ import annotations

import random
from dataclasses import dataclass

from telephony.simulator.config import SimulatorConfig

ENABLE = "Enable"
DETECT_MESSAGE_END = "DetectMessageEnd"
# CreateCall `MachineDetectionTimeout`: "The default timeout is 30 seconds."
DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Verdict:
    """What detection reports (`AnsweredBy`) and when, in seconds after the answer."""

    answered_by: str
    after_seconds: float

    @property
    def duration_ms(self) -> str:
        """`MachineDetectionDuration` as Twilio sends it: whole milliseconds, as text."""
        return str(round(self.after_seconds * 1000))


def detect(
    mode: str, forced: str | None, rng: random.Random, config: SimulatorConfig, timeout: float
) -> Verdict:
    """The verdict of Twilio's answering-machine detection on one answered call.

    As Twilio's description of CreateCall `MachineDetection` (twilio_api_v2010.json) says: `Enable`
    returns `AnsweredBy` "as soon as the called party is identified", a machine as `machine_start`;
    `DetectMessageEnd` is for leaving a message, so a machine is reported at the end of its greeting
    (`machine_end_beep`). A person, a fax or an undecided call is reported as soon as it is
    identified in either mode. `MachineDetectionTimeout`: detection that would take longer ends at
    the timeout "with `AnsweredBy` of `unknown`". `forced` is the configured answer for the number;
    unforced, a person or a machine at random.
    """
    answered_by = forced
    if answered_by is None:
        picked = rng.choice(("human", "machine_start"))
        answered_by = picked if picked == "human" or mode != DETECT_MESSAGE_END else "machine_end_beep"
    waits_for_beep = mode == DETECT_MESSAGE_END and answered_by.startswith("machine_")
    after = config.machine_greeting_seconds if waits_for_beep else config.machine_detection_seconds
    if after > timeout:
        return Verdict("unknown", timeout)
    return Verdict(answered_by, after)
