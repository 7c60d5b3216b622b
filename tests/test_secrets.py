"""Secrets stay secret: no auth token or API key in workflow histories, logs or error bodies, and
no development placeholder accepted in production."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.names import events_workflow_id, gate_workflow_id, run_workflow_id
from outbound_dialer.settings import DEV_ADMIN_TOKEN, DEV_AUTH_TOKEN, Settings
from support.drive import ROOT, execution_chain, new_number, wait_for
from support.ports import free_port
from support.stack import Stack


async def test_no_secret_reaches_a_history_a_log_or_an_error_body(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    business = await stack.create_business(cap=2)
    # A webhook nobody answers: its events are signed with the secret, tried, failed and logged.
    webhook = await stack.http.put(
        "/v1/businesses/me/webhook",
        json={"url": f"http://127.0.0.1:{free_port()}/hooks"},
        headers=business.headers,
    )
    signing_secret = webhook.json()["signing_secret"]
    phones = [new_number() for _ in range(3)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)
    assert (await stack.wait_run_ends(business, run_id))["status"] == "completed"
    wrong_key = business.api_key[:-4] + "0000"
    refused = await stack.http.get(f"/v1/runs/{run_id}", headers={"Authorization": f"Bearer {wrong_key}"})
    assert refused.status_code == 401

    secrets = {
        "the Twilio auth token": stack.settings.TWILIO_AUTH_TOKEN.get_secret_value(),
        "the admin token": stack.settings.ADMIN_TOKEN.get_secret_value(),
        "the business API key": business.api_key,
        "a wrong API key": wrong_key,
        "the webhook signing secret": signing_secret,
        "its key": signing_secret.removeprefix("whsec_"),
    }

    async def events_tried() -> bool:
        events = await stack.http.get("/v1/businesses/me/events", headers=business.headers)
        return len(events.json()) == 4 and all(e["attempts"] >= 1 for e in events.json())

    await wait_for(events_tried, within=30, what="the run's events to be tried")
    histories = [
        *(h.to_json() for h in await execution_chain(stack.temporal, run_workflow_id(run_id))),
        (await stack.temporal.get_workflow_handle(gate_workflow_id(business.id)).fetch_history()).to_json(),
        (await stack.temporal.get_workflow_handle(events_workflow_id(business.id)).fetch_history()).to_json(),
    ]
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for name, secret in secrets.items():
        assert all(secret not in history for history in histories), f"{name} is in a workflow history"
        assert secret not in logs, f"{name} is in the logs"
        assert secret not in refused.text, f"{name} is in an error body"


def test_saved_histories_hold_no_development_secret() -> None:
    saved = sorted((ROOT / "tests" / "histories").rglob("*.json"))
    assert saved
    for path in saved:
        text = Path(path).read_text()
        assert DEV_AUTH_TOKEN not in text and DEV_ADMIN_TOKEN not in text, path.name


REAL = {
    "ENVIRONMENT": "production",
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "a" * 32,
    "ADMIN_TOKEN": "b" * 40,
    "PUBLIC_BASE_URL": "https://dialer.example.com",
}


@pytest.mark.parametrize("name", ["TWILIO_AUTH_TOKEN", "ADMIN_TOKEN"])
@pytest.mark.parametrize("placeholder", [DEV_AUTH_TOKEN, DEV_ADMIN_TOKEN, "", "changeme"])
def test_production_refuses_a_placeholder_secret(name: str, placeholder: str) -> None:
    with pytest.raises(ValidationError, match=f"{name} is a placeholder"):
        Settings.model_validate({**REAL, name: placeholder})
    assert Settings.model_validate(REAL).ENVIRONMENT == "production"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"ADMIN_TOKEN": "a"}, "ADMIN_TOKEN must be at least 32 characters"),
        ({"TWILIO_AUTH_TOKEN": "short"}, "TWILIO_AUTH_TOKEN must be at least 32 characters"),
        ({"PUBLIC_BASE_URL": "http://dialer.example.com"}, "PUBLIC_BASE_URL must be an https:// URL"),
        ({"TWILIO_ACCOUNT_SID": "AC" + "0" * 32}, "TWILIO_ACCOUNT_SID is the development placeholder"),
    ],
)
def test_production_refuses_weak_settings_and_names_each(change: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings.model_validate({**REAL, **change})


def test_production_is_the_default_against_the_real_twilio(monkeypatch: pytest.MonkeyPatch) -> None:
    """An image run with real Twilio credentials and no ADMIN_TOKEN does not start on the
    development admin token: with no ENVIRONMENT and the real Twilio it is production, and refuses.
    Against a simulator (TWILIO_API_BASE_URL) it is development."""
    for name in ("ENVIRONMENT", "TWILIO_API_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match="ADMIN_TOKEN is a placeholder"):
        Settings.model_validate({k: v for k, v in REAL.items() if k not in ("ENVIRONMENT", "ADMIN_TOKEN")})
    simulated = Settings.model_validate({"TWILIO_API_BASE_URL": "http://127.0.0.1:8081"})
    assert simulated.ENVIRONMENT == "development"
    monkeypatch.setenv("ENVIRONMENT", "development")
    assert Settings.model_validate({}).ENVIRONMENT == "development"


def test_a_child_process_reads_exactly_the_settings_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker a test or benchmark starts reads its settings from the environment they make."""
    given = Settings.model_validate(
        {"ENVIRONMENT": "development", "EVENT_WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8", "::1/128"]}
    )
    for name, value in given.environment().items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None).model_dump() == given.model_dump()  # type: ignore[call-arg]


@pytest.mark.parametrize("base_url", ["", "https://api.twilio.com", "https://api.dublin.ie1.twilio.com/"])
def test_the_real_twilio_however_it_is_named_is_production(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    with pytest.raises(ValidationError, match="ADMIN_TOKEN is a placeholder"):
        Settings.model_validate(
            {
                **{k: v for k, v in REAL.items() if k != "ENVIRONMENT"},
                "ADMIN_TOKEN": "",
                "TWILIO_API_BASE_URL": base_url,
            }
        )


@pytest.mark.parametrize("networks", [["0.0.0.0/0"], ["::/0"], ["10.0.0.0/8", "0.0.0.0/0"]])
def test_production_refuses_to_send_events_anywhere(networks: list[str]) -> None:
    with pytest.raises(ValidationError, match="EVENT_WEBHOOK_ALLOWED_NETWORKS"):
        Settings.model_validate({**REAL, "EVENT_WEBHOOK_ALLOWED_NETWORKS": networks})


@pytest.mark.parametrize(
    "secrets",
    [
        {"TWILIO_AUTH_TOKEN": "token-" + "7" * 30, "ADMIN_TOKEN": "short-admin-secret"},
        {"PAYLOAD_ENCRYPTION_KEY": "not-a-key-but-still-a-secret"},
        {"PAYLOAD_DECRYPTION_KEYS": '["an-old-key-still-a-secret"]'},
    ],
)
def test_a_refused_setting_is_named_and_no_secret_is_printed(
    secrets: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that refuses to start prints why: the refusal names the setting, and holds none
    of the secrets it was given, as pydantic's errors otherwise would."""
    for name, value in {**REAL, **secrets}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    printed = str(refused.value)
    assert any(name in printed for name in secrets), printed
    for value in secrets.values():
        for fragment in (value[:12], value[-12:]):
            assert fragment not in printed, printed
