"""The system under test as separate OS processes, and what each of them costs.

`process_env` starts what `bench.common.bench_env` starts (a Temporal dev server, a fresh PostgreSQL
database migrated to head, the carrier simulator) but runs the API and the worker as their own
processes, as `make dev` and production do: `python -m api --port N` (uvicorn) and
`python worker.py`, configured through the environment variables of `settings.Settings`, with their
stderr (JSON logs at WARNING) kept in files. The benchmark's own event loop only drives them.

Costs are read from /proc: CPU seconds of a process (and its live descendants) are
utime + stime of /proc/<pid>/stat in clock ticks (`SC_CLK_TCK`), the event-loop thread's alone from
/proc/<pid>/task/<pid>/stat, resident memory is VmRSS of /proc/<pid>/status, and the whole machine's
busy time comes from the first line of /proc/stat. `Sampler` reads all of it every `interval` seconds
in the background, so a benchmark can decide its measured window afterwards and interpolate.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from bench.common import (
    BenchEnv,
    BenchStack,
    SimulatorMode,
    dev_server,
    free_port,
    fresh_database,
    log,
    simulator_server,
)
from contracts.names import dial_task_queue
from db.engine import create_engine, create_sessionmaker
from outbound_dialer.settings import Settings
from support.drive import ROOT, wait_for

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
MACHINE_SATURATED = 0.9
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
CORE_LEVEL = re.compile(r"^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\b")
QUIET_LEVELS = {"DEBUG", "INFO", "core TRACE", "core DEBUG", "core INFO"}


# Reading /proc


def _stat_fields(path: Path) -> list[str] | None:
    """The fields of a /proc stat file after `(comm)`, or None if the process is gone."""
    try:
        text = path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _ticks(fields: list[str]) -> int:
    # Fields 14 and 15 of stat(5) (utime, stime); index 0 here is field 3 (state).
    return int(fields[11]) + int(fields[12])


def parent_pids() -> dict[int, int]:
    """Every live process's parent: pid -> ppid."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry / "stat")
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int, parents: dict[int, int] | None = None) -> list[int]:
    """The live children of `pid`, their children, and so on."""
    parents = parent_pids() if parents is None else parents
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def cpu_seconds(
    pid: int, *, with_descendants: bool = False, parents: dict[int, int] | None = None
) -> float | None:
    """User + system CPU seconds of a process so far (with those of its live descendants), or None
    if it is gone. Descendants that already exited are not counted."""
    fields = _stat_fields(PROC / str(pid) / "stat")
    if fields is None:
        return None
    ticks = _ticks(fields)
    if with_descendants:
        for child in descendants(pid, parents):
            child_fields = _stat_fields(PROC / str(child) / "stat")
            if child_fields is not None:
                ticks += _ticks(child_fields)
    return ticks / CLOCK_TICKS


def main_thread_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a process's first thread (a Python program's event loop), or None."""
    fields = _stat_fields(PROC / str(pid) / "task" / str(pid) / "stat")
    return None if fields is None else _ticks(fields) / CLOCK_TICKS


def rss_bytes(pid: int) -> int | None:
    """Resident set size (VmRSS) of a process, or None if it is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot, from the first line of /proc/stat."""
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return (total - idle - iowait) / CLOCK_TICKS, total / CLOCK_TICKS


def child_pid(*needles: str, parent: int | None = None) -> int | None:
    """The pid of a child of `parent` (this process by default) whose command line contains every
    one of `needles`, or None."""
    parent = os.getpid() if parent is None else parent
    for pid, ppid in parent_pids().items():
        if ppid != parent:
            continue
        try:
            args = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        words = [a.decode(errors="replace") for a in args]
        if all(any(needle in word for word in words) for needle in needles):
            return pid
    return None


# Sampling in the background


@dataclass(frozen=True)
class Watched:
    """A process to sample. `cores` is what it can use at most: 1 for a Python process (one event
    loop holding the GIL), the machine's cores for the Go dev server."""

    name: str
    pid: int
    cores: float = 1.0
    with_descendants: bool = True


@dataclass(frozen=True)
class Sample:
    """One reading of every watched process, and of the machine."""

    at: float
    cpu: dict[str, float]
    main_thread_cpu: dict[str, float]
    rss: dict[str, int]
    machine_busy: float
    machine_total: float


def _interpolate(points: list[tuple[float, float]], at: float) -> float | None:
    if not points:
        return None
    after = bisect.bisect_left(points, at, key=lambda point: point[0])
    if after == 0:
        return points[0][1]
    if after == len(points):
        return points[-1][1]
    (t0, v0), (t1, v1) = points[after - 1], points[after]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (at - t0) / (t1 - t0)


@dataclass
class Sampler:
    """Reads CPU and RSS of the watched processes every `interval` seconds while it is entered."""

    watched: list[Watched]
    interval: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def sample(self) -> Sample:
        """Read everything now and keep it."""
        parents = parent_pids()
        cpu: dict[str, float] = {}
        main: dict[str, float] = {}
        rss: dict[str, int] = {}
        for w in self.watched:
            seconds = cpu_seconds(w.pid, with_descendants=w.with_descendants, parents=parents)
            if seconds is not None:
                cpu[w.name] = seconds
            thread = main_thread_cpu_seconds(w.pid)
            if thread is not None:
                main[w.name] = thread
            memory = rss_bytes(w.pid)
            if memory is not None:
                rss[w.name] = memory
        busy, total = machine_cpu_seconds()
        reading = Sample(time.time(), cpu, main, rss, busy, total)
        self.samples.append(reading)
        return reading

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sample()

    def _series(self, pick: Any) -> list[tuple[float, float]]:
        points: list[tuple[float, float]] = []
        for s in self.samples:
            value = pick(s)
            if value is not None:
                points.append((s.at, float(value)))
        return points

    def cpu_between(self, name: str, start: float, end: float, *, main_thread: bool = False) -> float | None:
        """CPU seconds `name` used from `start` to `end` (epoch seconds), interpolated linearly
        between samples."""
        source = "main_thread_cpu" if main_thread else "cpu"
        points = self._series(lambda s: getattr(s, source).get(name))
        first, last = _interpolate(points, start), _interpolate(points, end)
        return None if first is None or last is None else last - first

    def machine_between(self, start: float, end: float) -> float | None:
        """The fraction of all cores' time that was busy from `start` to `end`."""
        busy = self._series(lambda s: s.machine_busy)
        total = self._series(lambda s: s.machine_total)
        b0, b1 = _interpolate(busy, start), _interpolate(busy, end)
        t0, t1 = _interpolate(total, start), _interpolate(total, end)
        if None in (b0, b1, t0, t1):
            return None
        assert b0 is not None and b1 is not None and t0 is not None and t1 is not None
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def rss_at(self, name: str, at: float) -> int | None:
        """RSS of `name` in the sample nearest to `at`."""
        readings = [(abs(s.at - at), s.rss[name]) for s in self.samples if name in s.rss]
        return min(readings)[1] if readings else None

    def rss_peak(self, name: str) -> int | None:
        """The largest RSS of `name` seen."""
        readings = [s.rss[name] for s in self.samples if name in s.rss]
        return max(readings) if readings else None

    def cpu_report(self, start: float, end: float, calls: int) -> dict[str, Any]:
        """Per process, over [start, end]: CPU seconds, CPU seconds per 1000 calls, utilisation
        (CPU seconds / wall seconds), its event-loop thread's utilisation, and utilisation as a
        share of what the process can use (`cores`); then which process is closest to its limit."""
        wall = end - start
        processes: dict[str, Any] = {}
        for w in self.watched:
            used = self.cpu_between(w.name, start, end)
            if used is None or wall <= 0:
                continue
            thread = self.cpu_between(w.name, start, end, main_thread=True)
            processes[w.name] = {
                "pid": w.pid,
                "cpu_seconds": round(used, 2),
                "cpu_seconds_per_1000_calls": round(1000 * used / calls, 2) if calls else None,
                "utilisation": round(used / wall, 3),
                "main_thread_utilisation": round(thread / wall, 3) if thread is not None else None,
                "cores": w.cores,
                "share_of_limit": round(used / wall / w.cores, 3),
            }
        candidates = {name: p for name, p in processes.items() if name != "bench"}
        first = max(candidates, key=lambda name: candidates[name]["share_of_limit"], default=None)
        machine = self.machine_between(start, end)
        return {
            "window_seconds": round(wall, 3),
            "calls": calls,
            "processes": processes,
            "saturates_first": first,
            "machine_cores": os.cpu_count(),
            # Busy share of all cores, whoever used them (other work on the machine included). Near
            # 1.0 the processes compete for cores and the machine, not one process, is the limit.
            "machine_utilisation": round(machine, 3) if machine is not None else None,
            "machine_saturated": machine is not None and machine >= MACHINE_SATURATED,
        }


# Spawning the API and the worker


@dataclass
class Spawned:
    """A child process of ours, with the file its output goes to."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_summary(self, keep: int = 5) -> dict[str, Any]:
        """What the process logged (see `log_summary`)."""
        return log_summary(self.log_path, keep)


def log_summary(log_path: Path, keep: int = 5) -> dict[str, Any]:
    """Log lines by level, and the first few WARNING-or-worse messages (distinct), from what a
    process wrote to `log_path`: our JSON lines by their level, the SDK core's text lines as `core
    WARN` and the like, anything else (tracebacks, prints) as `other`."""
    levels: dict[str, int] = {}
    first: list[str] = []
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    for raw in lines:
        line = ANSI_ESCAPE.sub("", raw)
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict):
            level, message = str(entry.get("level", "other")), str(entry.get("message", ""))
        else:
            # The SDK core (Rust) logs as text: "<time>  WARN temporalio_sdk_core::...: message".
            found = CORE_LEVEL.match(line)
            level = f"core {found.group(1)}" if found else "other"
            message = line
        levels[level] = levels.get(level, 0) + 1
        if level not in QUIET_LEVELS and message.strip() and len(first) < keep:
            text = message.strip()[:300]
            if text not in first:
                first.append(text)
    return {"log": str(log_path), "lines_by_level": levels, "first_problems": first}


@asynccontextmanager
async def spawned(
    name: str, argv: Iterable[str], env: dict[str, str], log_dir: Path
) -> AsyncIterator[Spawned]:
    """Run `argv` from the project root with stdout and stderr to `log_dir/<name>.log`; on exit,
    SIGTERM (what the process handles to stop cleanly), SIGKILL after 20 s."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    try:
        yield Spawned(name, process, log_path)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(20):
                    await process.wait()
            except TimeoutError:
                log.warning("%s did not stop within 20 s of SIGTERM; killing it", name)
                process.kill()
                await process.wait()


async def _has_pollers(client: Client, queue: str, kind: TaskQueueType.ValueType) -> bool:
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
    )
    return bool(response.pollers)


async def wait_until_worker_polls(
    client: Client, task_queue: str, worker: Spawned, within: float = 60
) -> None:
    """Until the worker process polls its workflow queue and its dial queue (or fail if it died)."""

    async def polling() -> bool:
        if worker.process.returncode is not None:
            raise RuntimeError(f"worker exited with {worker.process.returncode}; see {worker.log_path}")
        return await _has_pollers(
            client, task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
        ) and await _has_pollers(client, dial_task_queue(task_queue), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)

    await wait_for(polling, within=within, what="the worker process to poll", interval=0.2)


async def wait_until_api_serves(http: httpx.AsyncClient, api: Spawned, within: float = 60) -> None:
    """Until the API process answers /healthz (or fail if it died)."""

    async def up() -> bool:
        if api.process.returncode is not None:
            raise RuntimeError(f"API exited with {api.process.returncode}; see {api.log_path}")
        try:
            return (await http.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(up, within=within, what="the API process", interval=0.1)


@dataclass
class ProcessEnv(BenchEnv):
    """A `BenchEnv` whose API and worker are processes of their own. `stack` only talks HTTP to
    them (and reads the database); its start_api/start_worker are never called."""

    api: Spawned | None = None
    worker: Spawned | None = None
    # More worker processes on the same task queues, when asked for (`worker-2`, ...).
    more_workers: list[Spawned] = field(default_factory=list)
    temporal_pid: int | None = None
    simulator_pid: int | None = None
    log_dir: Path = field(default_factory=Path)

    def watched(self) -> list[Watched]:
        """The processes worth sampling: worker, API, dev server, simulator, and this one."""
        found = [
            Watched("worker", self.worker.pid) if self.worker else None,
            *(Watched(w.name, w.pid) for w in self.more_workers),
            Watched("api", self.api.pid) if self.api else None,
            Watched("temporal", self.temporal_pid, cores=float(os.cpu_count() or 1))
            if self.temporal_pid
            else None,
            Watched("simulator", self.simulator_pid) if self.simulator_pid else None,
            # Everything above descends from this process: count its own threads only.
            Watched("bench", os.getpid(), with_descendants=False),
        ]
        return [w for w in found if w is not None]

    def log_summaries(self) -> dict[str, Any]:
        """What the API and the worker logged."""
        spawned = (self.worker, *self.more_workers, self.api)
        return {s.name: s.log_summary() for s in spawned if s is not None}


@asynccontextmanager
async def process_env(
    *,
    simulator: SimulatorMode = "process",
    calls_per_second: float = 10_000,
    log_level: str = "WARNING",
    dev_server_args: Iterable[str] = (),
    workers: int = 1,
    api_in_process: bool = False,
) -> AsyncIterator[ProcessEnv]:
    """Start the dev server, a fresh migrated database and the simulator, then the worker
    (`python worker.py`) and the API (`python -m api`) as processes configured by environment
    variables; tear all of it down afterwards, in reverse order. Their logs stay in a temporary
    directory (named in the log and in `ProcessEnv.log_dir`).

    With `api_in_process` the API is served in this process instead, with the webhook timer of
    `BenchStack` in front of it (the worker is still a process of its own)."""
    async with AsyncExitStack() as exits:
        started = time.monotonic()
        temporal = await exits.enter_async_context(dev_server(list(dev_server_args)))
        target = temporal.client.service_client.config.target_host
        temporal_pid = child_pid("start-dev", target.rsplit(":", 1)[1])
        database_url = await exits.enter_async_context(fresh_database())
        simulator_url = await exits.enter_async_context(simulator_server(simulator))
        simulator_pid = (
            child_pid("telephony.simulator", simulator_url.rsplit(":", 1)[1])
            if simulator == "process"
            else None
        )
        api_port = free_port()
        settings = Settings(
            ENVIRONMENT="development",
            # The benchmarks measure the dialer, not the per-business request limit.
            BUSINESS_REQUESTS_PER_SECOND=10_000,
            BUSINESS_REQUEST_BURST=10_000,
            # Payloads in plain JSON, whatever this machine's `.env` says: the benchmark's own
            # client and replayer read them without a key.
            PAYLOAD_ENCRYPTION_KEY=None,
            PAYLOAD_DECRYPTION_KEYS=[],
            DATABASE_URL=database_url,
            TEMPORAL_ADDRESS=target,
            TEMPORAL_NAMESPACE=temporal.client.namespace,
            TEMPORAL_TASK_QUEUE=f"bench-{uuid.uuid4().hex[:8]}",
            TWILIO_API_BASE_URL=simulator_url,
            PUBLIC_BASE_URL=f"http://127.0.0.1:{api_port}",
            TWILIO_CALLS_PER_SECOND=calls_per_second,
            LOG_LEVEL=log_level,
        )
        env = settings.environment()
        log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
        log.info("API and worker logs in %s", log_dir)
        worker, *more_workers = [
            await exits.enter_async_context(
                spawned("worker" if n == 1 else f"worker-{n}", [sys.executable, "worker.py"], env, log_dir)
            )
            for n in range(1, workers + 1)
        ]
        api = (
            None
            if api_in_process
            else await exits.enter_async_context(
                spawned("api", [sys.executable, "-m", "api", "--port", str(api_port)], env, log_dir)
            )
        )
        http = await exits.enter_async_context(
            httpx.AsyncClient(base_url=settings.PUBLIC_BASE_URL, timeout=60)
        )
        sim = await exits.enter_async_context(httpx.AsyncClient(base_url=simulator_url, timeout=120))
        engine = create_engine(database_url)
        exits.push_async_callback(engine.dispose)
        stack = BenchStack(
            settings, temporal.client, http, sim, engine, create_sessionmaker(engine), api_port
        )
        if api is None:
            await stack.start_api()
            exits.push_async_callback(stack.stop_api)
        else:
            await wait_until_api_serves(http, api)
        for each in (worker, *more_workers):
            await wait_until_worker_polls(temporal.client, settings.TEMPORAL_TASK_QUEUE, each)
        log.info(
            "environment up in %.1fs: worker pid %d, API pid %s, dev server pid %s, simulator pid %s",
            time.monotonic() - started,
            worker.pid,
            api.pid if api else "(this process)",
            temporal_pid,
            simulator_pid,
        )
        yield ProcessEnv(
            temporal.client,
            stack,
            simulator,
            api=api,
            worker=worker,
            more_workers=more_workers,
            temporal_pid=temporal_pid,
            simulator_pid=simulator_pid,
            log_dir=log_dir,
        )
        log.info("tearing down")
