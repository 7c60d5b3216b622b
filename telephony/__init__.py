"""Telephony: the Twilio client, the call-status vocabulary and the carrier simulator."""
