"""With PAYLOAD_ENCRYPTION_KEY set, Temporal holds no lead data in the clear: runs work as before,
their histories read as ciphertext to anyone without the key, and a codec server holding the key
shows them to the operator's Web UI."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from contracts.names import run_workflow_id
from outbound_dialer.codec_server import create_codec_app
from outbound_dialer.payload_codec import EncryptionCodec, PayloadKeyError, key_bytes, key_id, new_key
from outbound_dialer.settings import Settings
from outbound_dialer.temporal_client import data_converter
from support.drive import execution_chain, new_number, serve
from support.ports import free_port
from support.stack import Stack
from workflows.outbound_run import OutboundRunWorkflow

KEY = new_key()
UI = "http://127.0.0.1:8233"


@pytest.fixture
async def encrypted_stack(
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]], database_url: str
) -> AsyncIterator[Stack]:
    async with stack_on(database_url, settings={"PAYLOAD_ENCRYPTION_KEY": KEY}) as stack:
        yield stack


@pytest.fixture
async def codec_server() -> AsyncIterator[str]:
    codec = EncryptionCodec([key_bytes(KEY)])
    async with serve(create_codec_app(codec, [UI]), free_port()) as url:
        yield url


def _payloads(history: WorkflowHistory) -> list[dict[str, Any]]:
    """Every payload in a history's JSON, as the Web UI would send it to a codec server."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "metadata" in node and "data" in node:
                found.append(node)
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(history.to_json()))
    return found


async def test_a_run_with_a_key_leaves_no_lead_data_in_temporal_and_the_codec_server_shows_it(
    encrypted_stack: Stack, temporal_env: WorkflowEnvironment, codec_server: str
) -> None:
    stack = encrypted_stack
    business = await stack.create_business(cap=2)
    phones = [new_number() for _ in range(2)]
    await stack.force_outcomes({phones[0]: "completed", phones[1]: "busy"})
    run_id = await stack.start_run(business, phones)
    run = await stack.wait_run_ends(business, run_id)
    # The API reads the run's sealed payloads with its key: the run is told as before.
    outcomes = run["progress"]["outcomes"]
    assert (run["status"], outcomes["answered"], outcomes["busy"]) == ("completed", 1, 1), run

    # Temporal, and anyone reading its histories without the key, sees ciphertext only.
    histories = await execution_chain(temporal_env.client, run_workflow_id(run_id))
    sealed = [p for h in histories for p in _payloads(h)]
    # Search attributes (ids and statuses) and the SDK's patch markers stay plain; the rest is sealed.
    assert sum(base64.b64decode(p["metadata"]["encoding"]) == b"binary/encrypted" for p in sealed) > 10
    as_stored = "\n".join(h.to_json() for h in histories) + _data(sealed)
    codec = stack.temporal.data_converter.payload_codec
    assert codec is not None
    opened = await codec.decode([json_format.ParseDict(p, Payload()) for p in sealed])
    as_read_with_the_key = _data([json_format.MessageToDict(p) for p in opened])
    for phone in phones:
        assert phone in as_read_with_the_key  # what the check below looks for is there to find
        assert phone not in as_stored

    # The run's workflow replays from its sealed history, with the key.
    replayer = Replayer(workflows=[OutboundRunWorkflow], data_converter=stack.temporal.data_converter)
    for history in histories:
        await replayer.replay_workflow(history)

    # The Web UI asks the codec server, which holds the key, to decode what it shows.
    async with httpx.AsyncClient(base_url=codec_server) as http:
        answer = await http.post(
            "/api/v1/namespaces/default/decode",
            json={"payloads": sealed},
            headers={"Origin": UI, "X-Namespace": "default"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == UI
    shown = _data(answer.json()["payloads"])
    assert all(phone in shown for phone in phones)


def _data(payloads: list[dict[str, Any]]) -> str:
    """The payloads' data, as text."""
    return "\n".join(base64.b64decode(p.get("data", "")).decode("latin-1") for p in payloads)


async def test_the_codec_server_answers_only_its_ui_on_its_own_address(codec_server: str) -> None:
    sealed = await EncryptionCodec([key_bytes(KEY)]).encode([_json_payload("+14155550123")])
    body = {"payloads": [json_format.MessageToDict(p) for p in sealed]}
    async with httpx.AsyncClient(base_url=codec_server) as http:
        preflight = await http.options(
            "/decode",
            headers={
                "Origin": UI,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == UI
        other_page = await http.post("/decode", json=body, headers={"Origin": "https://evil.example"})
        assert other_page.status_code == 403 and "+14155550123" not in other_page.text
        rebound = await http.post("/decode", json=body, headers={"Host": "evil.example"})
        assert rebound.status_code == 400 and "+14155550123" not in rebound.text
        not_payloads = await http.post("/decode", content=b"phone=+14155550123")
        assert not_payloads.status_code == 400 and "Payloads" in not_payloads.text
        # One payload it cannot open leaves that one sealed, and the rest of the page decoded.
        foreign = await EncryptionCodec([key_bytes(new_key())]).encode([_json_payload("x")])
        mixed = {"payloads": [json_format.MessageToDict(p) for p in (*foreign, *sealed)]}
        page = await http.post("/api/v1/namespaces/default/decode?preserveStorageRefs=true", json=mixed)
        assert page.status_code == 200, page.text
        shown = page.json()["payloads"]
        assert shown[0] == mixed["payloads"][0]
        assert base64.b64decode(shown[1]["data"]) == b'"+14155550123"'
        nothing = await http.post("/decode", json={"payloads": []})
        assert nothing.json() == {"payloads": []}


async def test_a_codec_server_with_a_token_decodes_only_for_who_sends_it() -> None:
    codec = EncryptionCodec([key_bytes(KEY)])
    sealed = await codec.encode([_json_payload("+14155550123")])
    body = {"payloads": [json_format.MessageToDict(p) for p in sealed]}
    app = create_codec_app(codec, [UI], auth_token="t0ken")
    async with serve(app, free_port()) as url, httpx.AsyncClient(base_url=url) as http:
        anyone = await http.post("/decode", json=body)
        wrong = await http.post("/decode", json=body, headers={"Authorization": "Bearer t0ke"})
        holder = await http.post("/decode", json=body, headers={"Authorization": "Bearer t0ken"})
    assert anyone.status_code == wrong.status_code == 401
    assert "+14155550123" not in anyone.text + wrong.text
    assert (
        holder.status_code == 200
        and base64.b64decode(holder.json()["payloads"][0]["data"]) == b'"+14155550123"'
    )


def _json_payload(value: Any) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


def _converter(**keys: Any) -> DataConverter:
    return data_converter(Settings.model_validate({"ENVIRONMENT": "development", **keys}))


async def test_a_rotated_key_still_reads_what_it_sealed_and_plain_payloads_pass() -> None:
    old, new = new_key(), new_key()
    before = _converter(PAYLOAD_ENCRYPTION_KEY=old)
    after = _converter(PAYLOAD_ENCRYPTION_KEY=new, PAYLOAD_DECRYPTION_KEYS=[old])
    without_key = _converter()
    reading_only = _converter(PAYLOAD_DECRYPTION_KEYS=[old])
    assert without_key is DataConverter.default
    lead = {"phone": "+14155550123", "name": "Ada"}
    sealed_before = await before.encode([lead])
    assert b"+14155550123" not in sealed_before[0].SerializeToString()
    assert await after.decode(sealed_before, [dict]) == [lead]
    # Written before any key was set (a run in flight when encryption is turned on).
    assert await after.decode(await without_key.encode([lead]), [dict]) == [lead]
    # A process given the key to read with only (the first step of bringing a key in, and the
    # way to turn encryption off) reads sealed payloads and writes plain ones.
    assert await reading_only.decode(sealed_before, [dict]) == [lead]
    assert (await reading_only.encode([lead]))[0].metadata["encoding"] == b"json/plain"
    # A process that lost the old key says which key it needs, not what is inside.
    with pytest.raises(PayloadKeyError, match=key_id(key_bytes(old))) as refused:
        await _converter(PAYLOAD_ENCRYPTION_KEY=new).decode(sealed_before, [dict])
    assert "+14155550123" not in str(refused.value)
    altered = Payload()
    altered.CopyFrom(sealed_before[0])
    altered.data = altered.data[:-1] + bytes([altered.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="altered"):
        await after.decode([altered], [dict])


async def test_a_failure_message_is_sealed_too() -> None:
    """An activity's error text (a database error naming a value) is part of the history."""
    converter = _converter(PAYLOAD_ENCRYPTION_KEY=KEY)
    failure = Failure()
    await converter.encode_failure(ValueError("no lead with phone +14155550123"), failure)
    assert b"+14155550123" not in failure.SerializeToString()
    assert "+14155550123" in str(await converter.decode_failure(failure))
