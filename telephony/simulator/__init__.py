"""A Twilio-compatible carrier simulator: the REST call API and signed status callbacks."""

from telephony.simulator.app import create_app
from telephony.simulator.config import SimulatorConfig

__all__ = ["SimulatorConfig", "create_app"]
