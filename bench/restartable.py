"""Processes a chaos run kills and brings back: the worker, the API, and a Temporal dev server that
keeps its state in a SQLite file (so a restart on the same file and port loses nothing).

`Restartable` is a small process manager: it runs a command with its output in a log file per
start (`worker-1.log`, `worker-2.log`, ...), restarts it on request with the signal asked for, and,
as systemd or Kubernetes would, starts it again when it exits by itself (a worker that cannot reach
a dev server that is down exits, for example), counting those exits.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, GetSystemInfoRequest
from temporalio.client import Client
from temporalio.service import RPCError

from bench.common import log
from bench.processes import log_summary
from contracts.names import dial_task_queue
from support.drive import ROOT, wait_for

RESTART_BACKOFF_SECONDS = 0.5
STOP_PATIENCE_SECONDS = 20.0


@dataclass(frozen=True)
class Exit:
    """A process that ended without being asked to."""

    at: float
    returncode: int | None
    log: str


@dataclass
class Restartable:
    """A command kept running: restarted on request, and again whenever it exits by itself."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log_dir: Path
    starts: int = 0
    unplanned_exits: list[Exit] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _closing: bool = False
    _watch: asyncio.Task[None] | None = None

    @property
    def log_path(self) -> Path:
        """Where the current start writes."""
        return self.log_dir / f"{self.name}-{self.starts}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        """Start the command and keep it running until `close`."""
        async with self._lock:
            await self._spawn()
        self._watch = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        self.starts += 1
        with self.log_path.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )

    async def _supervise(self) -> None:
        while not self._closing:
            process = self.process
            assert process is not None
            code = await process.wait()
            async with self._lock:
                if self._closing or self.process is not process:
                    continue  # stopped or replaced on purpose
                self.unplanned_exits.append(Exit(time.time(), code, str(self.log_path)))
                log.warning("%s exited by itself (%s); starting it again", self.name, code)
            await asyncio.sleep(RESTART_BACKOFF_SECONDS)
            async with self._lock:
                if not self._closing and self.process is process:
                    await self._spawn()

    async def restart(self, how: signal.Signals, down_seconds: float = 0.0) -> None:
        """Send `how` (SIGKILL: a crash; SIGTERM: a clean stop), wait for the exit, stay down for
        `down_seconds`, start again."""
        async with self._lock:
            await self._stop(how)
            if down_seconds > 0:
                await asyncio.sleep(down_seconds)
            await self._spawn()

    async def _stop(self, how: signal.Signals) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(how)
        try:
            async with asyncio.timeout(STOP_PATIENCE_SECONDS):
                await process.wait()
        except TimeoutError:
            log.warning(
                "%s did not stop within %.0f s of %s; killing it", self.name, STOP_PATIENCE_SECONDS, how.name
            )
            process.kill()
            await process.wait()

    async def close(self) -> None:
        """Stop for good: SIGTERM, SIGKILL if that is not enough."""
        self._closing = True
        async with self._lock:
            await self._stop(signal.SIGTERM)
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

    def log_levels(self) -> dict[str, int]:
        """Lines logged by level, over every start of the process."""
        levels: Counter[str] = Counter()
        for n in range(1, self.starts + 1):
            levels.update(log_summary(self.log_dir / f"{self.name}-{n}.log")["lines_by_level"])
        return dict(levels)


async def connect_when_up(target: str, within: float) -> Client:
    """A client of the dev server at `target`, once it accepts connections. The client survives
    the server's restarts: it connects again by itself."""

    async def connect() -> Client | None:
        try:
            return await Client.connect(target)
        except RuntimeError:
            return None

    client: Client = await wait_for(connect, within=within, what=f"Temporal at {target}", interval=0.05)
    return client


async def temporal_serves(client: Client) -> bool:
    """Whether the Temporal service answers now."""
    try:
        await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=timedelta(seconds=1))
    except RPCError:
        return False
    return True


async def _polled_by(client: Client, queue: str, kind: TaskQueueType.ValueType, pid: int) -> bool:
    try:
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
            ),
            timeout=timedelta(seconds=2),
        )
    except RPCError:
        return False
    # A worker's identity is `pid@host`; the pollers of a killed worker stay listed for a while.
    return any(p.identity.startswith(f"{pid}@") for p in response.pollers)


async def wait_until_polling(client: Client, task_queue: str, worker: Restartable, within: float) -> None:
    """Until the worker's current process polls its workflow queue and its dial queue."""

    async def polling() -> bool:
        pid = worker.pid
        return await _polled_by(
            client, task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, pid
        ) and await _polled_by(
            client, dial_task_queue(task_queue), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, pid
        )

    await wait_for(polling, within=within, what=f"{worker.name} to poll", interval=0.1)


async def wait_until_serving(http: httpx.AsyncClient, within: float) -> None:
    """Until the API answers /healthz."""

    async def up() -> bool:
        try:
            return (await http.get("/healthz", timeout=1)).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(up, within=within, what="the API to serve", interval=0.05)


async def wait_until_temporal_serves(client: Client, within: float) -> None:
    """Until the dev server answers."""

    async def up() -> bool:
        return await temporal_serves(client)

    await wait_for(up, within=within, what="the Temporal dev server to serve", interval=0.05)
