"""Run the carrier simulator: ``python -m telephony.simulator --host 127.0.0.1 --port 8081``.

Misbehaviour is asked for with one flag per setting, e.g. ``--drop-callback-rate 0.05
--duplicate-callback-rate 0.2 --create-429-rate 0.1 --callback-retry-attempts 3 --seed 7``, or with the
same settings as JSON in the environment variable ``SIMULATOR_FAULTS`` (``{"drop_callback_rate": 0.05}``);
flags win over the variable, and ``POST /_sim/config`` changes any of them while it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

import uvicorn
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from telephony.simulator.app import create_app
from telephony.simulator.config import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, SimulatorConfig

FAULTS_ENV = "SIMULATOR_FAULTS"
# Credentials come from TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN; an absolute time makes no sense at start.
_NOT_FLAGS = frozenset({"account_sid", "auth_token", "webhooks_unreachable_until"})


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the simulator until interrupted."""
    args, config = parse(argv, os.environ)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level.lower())


def parse(argv: list[str] | None, environ: Mapping[str, str]) -> tuple[argparse.Namespace, SimulatorConfig]:
    """The command line and the simulator's settings: defaults, then ``SIMULATOR_FAULTS``, then flags."""
    parser = argparse.ArgumentParser(prog="python -m telephony.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--log-level", default=environ.get("LOG_LEVEL", "INFO"))
    settings = parser.add_argument_group("simulated carrier (see SimulatorConfig)")
    for name, field in SimulatorConfig.model_fields.items():
        if name not in _NOT_FLAGS and (kind := _flag_kind(field)) is not None:
            # Absent flags stay out of the namespace, so they do not override SIMULATOR_FAULTS.
            settings.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                default=argparse.SUPPRESS,
                help=f"{field.description or name} (default: {_default(field)})",
                **kind,
            )
    args = parser.parse_args(argv)

    values: dict[str, Any] = {
        "account_sid": environ.get("TWILIO_ACCOUNT_SID") or DEV_ACCOUNT_SID,
        "auth_token": environ.get("TWILIO_AUTH_TOKEN") or DEV_AUTH_TOKEN,
    }
    if raw := environ.get(FAULTS_ENV, "").strip():
        try:
            faults = json.loads(raw)
        except json.JSONDecodeError as exc:
            parser.error(f"{FAULTS_ENV} is not JSON: {exc}")
        if not isinstance(faults, dict):
            parser.error(f"{FAULTS_ENV} must be a JSON object of SimulatorConfig settings")
        values.update(faults)
    values.update({name: getattr(args, name) for name in SimulatorConfig.model_fields if name in args})
    try:
        config = SimulatorConfig.model_validate(values)
    except ValidationError as exc:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    return args, config


def _flag_kind(field: FieldInfo) -> dict[str, Any] | None:
    """How argparse reads a setting, or None for settings that only JSON can express."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        # An optional setting is simply left out when not given.
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float):
        return {"type": annotation, "metavar": annotation.__name__.upper()}
    if get_origin(annotation) is tuple and get_args(annotation) == (float, float):
        return {"type": float, "nargs": 2, "metavar": ("MIN", "MAX")}
    return None


def _default(field: FieldInfo) -> object:
    return field.get_default(call_default_factory=True)


if __name__ == "__main__":
    main()
