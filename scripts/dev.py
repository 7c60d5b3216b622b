"""`make dev`: the whole system on one machine, on the embedded default.

Starts the Temporal dev server (SQLite file and Web UI), the carrier simulator, a worker and the
API; migrates the database; creates a demo business; prints where everything is. Ctrl-C stops all
of it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from db.migrate import upgrade
from outbound_dialer.settings import Settings
from support.temporal_dev import dev_server_argv

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
TEMPORAL_PORT, TEMPORAL_UI_PORT, API_PORT, SIMULATOR_PORT, CODEC_PORT = 7233, 8233, 8000, 8081, 8234
PR_SET_PDEATHSIG = 1


def dev_environment() -> dict[str, str]:
    """The settings `make dev` runs with; anything already set in the environment wins."""
    env = dict(os.environ)
    env.setdefault("ENVIRONMENT", "development")
    env.setdefault("DATABASE_URL", f"sqlite+aiosqlite:///{DATA / 'outbound.db'}")
    env.setdefault("TEMPORAL_ADDRESS", f"127.0.0.1:{TEMPORAL_PORT}")
    env.setdefault("TWILIO_API_BASE_URL", f"http://127.0.0.1:{SIMULATOR_PORT}")
    env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{API_PORT}")
    env.setdefault("TEMPORAL_UI_URL", f"http://127.0.0.1:{TEMPORAL_UI_PORT}")
    env.setdefault("TWILIO_CALLS_PER_SECOND", "1")
    # A CRM receiver on this machine may get the demo's events.
    env.setdefault("EVENT_WEBHOOK_ALLOWED_NETWORKS", '["127.0.0.0/8", "::1/128"]')
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _die_with_parent() -> None:
    """In the child: get SIGTERM if this script dies, however it dies (Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    print(f"  starting {name}")
    # Own process group: Ctrl-C reaches us once, and we stop the children in order.
    return subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True, preexec_fn=_die_with_parent)


def wait_http(url: str, name: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{name} did not come up at {url} within {seconds:.0f}s")


def demo_business(settings: Settings) -> str:
    """The demo business's API key, created once and kept in .data/ (keys are stored hashed)."""
    key_file = DATA / "demo-api-key"
    api = f"http://127.0.0.1:{API_PORT}"
    if key_file.exists():
        key = key_file.read_text().strip()
        if (
            httpx.get(f"{api}/v1/businesses/me", headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        ):
            return key
    response = httpx.post(
        f"{api}/v1/businesses",
        # The demo calls at any hour, so a first run dials at once; a real business's runs wait
        # for its calling window (08:00-21:00 in each lead's zone unless it sets one).
        json={
            "name": "Demo business",
            "caller_id": "+14155550100",
            "max_concurrent_calls": 3,
            "calling_window": {"start": "00:00", "end": "24:00"},
        },
        headers={"Authorization": f"Bearer {settings.ADMIN_TOKEN.get_secret_value()}"},
    )
    response.raise_for_status()
    key = str(response.json()["api_key"])
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


def main() -> None:
    DATA.mkdir(exist_ok=True)
    env = dev_environment()
    os.environ.update(env)
    settings = Settings()
    python = sys.executable
    processes: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        print("Starting the outbound dialer (Ctrl-C stops everything)")
        # With PAYLOAD_ENCRYPTION_KEY set, payloads are encrypted and the Web UI reads them through
        # a codec server of its own.
        codec = f"http://127.0.0.1:{CODEC_PORT}" if settings.payload_keys() else None
        server = dev_server_argv(
            TEMPORAL_PORT,
            DATA / "temporal.db",
            ui_port=TEMPORAL_UI_PORT,
            log_level="warn",
            ui_codec_endpoint=codec,
        )
        processes.append(start("Temporal dev server", server, env))
        if codec is not None:
            serve_codec = [python, "-m", "cli", "codec", "serve", "--port", str(CODEC_PORT)]
            origins = [env["TEMPORAL_UI_URL"], f"http://localhost:{TEMPORAL_UI_PORT}"]
            processes.append(start("codec server", serve_codec + [f"--ui={o}" for o in origins], env))
        processes.append(
            start(
                "carrier simulator", [python, "-m", "telephony.simulator", "--port", str(SIMULATOR_PORT)], env
            )
        )
        print("  migrating the database")
        upgrade(settings.DATABASE_URL)
        wait_http(f"http://127.0.0.1:{TEMPORAL_UI_PORT}", "the Temporal Web UI")
        processes.append(start("worker", [python, "worker.py"], env))
        processes.append(start("API", [python, "-m", "api", "--port", str(API_PORT)], env))
        wait_http(f"http://127.0.0.1:{API_PORT}/healthz", "the API")
        wait_http(f"http://127.0.0.1:{SIMULATOR_PORT}/_sim/stats", "the carrier simulator")
        key = demo_business(settings)
        print(
            f"""
Ready.
  Dashboard      http://127.0.0.1:{API_PORT}/ui     (sign in with the demo API key)
  API            http://127.0.0.1:{API_PORT}        (interactive docs: /docs)
  Temporal UI    http://127.0.0.1:{TEMPORAL_UI_PORT}{"  (payloads decoded by " + codec + ")" if codec else ""}
  Simulator      http://127.0.0.1:{SIMULATOR_PORT}/_sim/stats
  Database       {settings.DATABASE_URL}
  Demo API key   {key}

Start a run:
  curl -s -X POST http://127.0.0.1:{API_PORT}/v1/runs -H 'Authorization: Bearer {key}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"name": "demo", "leads": [{{"phone": "+14155550101"}}, {{"phone": "+14155550102"}}]}}'
""",
            flush=True,
        )
        while not stopping:
            for process in processes:
                if process.poll() is not None:
                    print(f"a process exited with code {process.returncode}; stopping")
                    stopping = True
            time.sleep(0.5)
    finally:
        print("Stopping")
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in reversed(processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
