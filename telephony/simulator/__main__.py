"""Run the carrier simulator: ``python -m telephony.simulator --host 127.0.0.1 --port 8081``."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from telephony.simulator.app import create_app
from telephony.simulator.config import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, SimulatorConfig


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the simulator until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m telephony.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible outcomes")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = SimulatorConfig(
        account_sid=os.environ.get("TWILIO_ACCOUNT_SID") or DEV_ACCOUNT_SID,
        auth_token=os.environ.get("TWILIO_AUTH_TOKEN") or DEV_AUTH_TOKEN,
        seed=args.seed,
    )
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level.lower())


if __name__ == "__main__":
    main()
