"""Telephony: the Twilio client and the carrier simulator."""
