"""Secrets a business verifies what we send it with, in the Standard Webhooks form."""

from __future__ import annotations

import base64
import secrets


def new_signing_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
