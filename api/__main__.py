"""`python -m api`: serve the API with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from api.app import create_app
from outbound_dialer.logs import configure_logging
from outbound_dialer.settings import get_settings


def main() -> None:
    """Serve on --host/--port (127.0.0.1:8000 by default)."""
    parser = argparse.ArgumentParser(description="Outbound dialer API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    settings = get_settings()
    configure_logging(settings.LOG_LEVEL)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None, proxy_headers=True)


if __name__ == "__main__":
    main()
