"""The HTTP API: REST for businesses and runs, and Twilio's status webhooks."""
