"""`outbound codec`: make a payload encryption key, and serve a codec server that lets the Temporal
Web UI and CLI show encrypted payloads to the operator who holds the keys."""

from __future__ import annotations

import os
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from outbound_dialer.codec_server import create_codec_app
from outbound_dialer.payload_codec import EncryptionCodec, new_key
from outbound_dialer.settings import PayloadKeys

# The Web UI of `make dev` and of the compose file, by either of its names.
DEFAULT_UI = ["http://127.0.0.1:8233", "http://localhost:8233"]

codec_app = typer.Typer(
    help="Encrypted Temporal payloads: a new key, and a codec server for the Web UI.", no_args_is_help=True
)


@codec_app.command("key")
def make_key() -> None:
    """Print a new random key for PAYLOAD_ENCRYPTION_KEY."""
    typer.echo(new_key())


@codec_app.command("serve")
def serve(
    port: Annotated[int, typer.Option(help="The port to listen on, on 127.0.0.1.")] = 8234,
    ui: Annotated[
        list[str] | None,
        typer.Option(
            help="A Web UI origin that may ask (repeat for more), such as https://cloud.temporal.io.",
            show_default=" and ".join(DEFAULT_UI),
        ),
    ] = None,
) -> None:
    """Serve a codec server with the keys in PAYLOAD_ENCRYPTION_KEY and PAYLOAD_DECRYPTION_KEYS;
    with OUTBOUND_CODEC_AUTH_TOKEN set, every request must carry it (`temporal --codec-auth`).
    Point the Web UI's codec endpoint (or `temporal --codec-endpoint`) at http://127.0.0.1:PORT."""
    try:
        settings = PayloadKeys()
    except ValidationError as error:
        raise typer.BadParameter(error.errors()[0]["msg"], param_hint="the environment") from None
    except SettingsError:
        raise typer.BadParameter(
            "PAYLOAD_DECRYPTION_KEYS must be a JSON list of keys", param_hint="the environment"
        ) from None
    keys = settings.payload_keys()
    if not keys:
        raise typer.BadParameter(
            "neither PAYLOAD_ENCRYPTION_KEY nor PAYLOAD_DECRYPTION_KEYS is set", param_hint="the environment"
        )
    codec = EncryptionCodec(keys, seal=settings.PAYLOAD_ENCRYPTION_KEY is not None)
    origins = ui or DEFAULT_UI
    typer.echo(
        f"Codec server on http://127.0.0.1:{port} for {', '.join(origins)}, "
        f"with keys {', '.join(codec.key_ids)}",
        err=True,
    )
    app = create_codec_app(codec, origins, auth_token=_auth_token())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _auth_token() -> str | None:
    """OUTBOUND_CODEC_AUTH_TOKEN, the token every request must carry, if set: read from the
    environment only, as a command-line option would be seen by every user of the machine."""
    token = os.environ.get("OUTBOUND_CODEC_AUTH_TOKEN")
    if token is not None and not token.strip():
        raise typer.BadParameter("OUTBOUND_CODEC_AUTH_TOKEN is empty", param_hint="the environment")
    return token
