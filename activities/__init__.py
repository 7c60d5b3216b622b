"""Temporal activities: everything that touches the database, Twilio or the Temporal service."""
