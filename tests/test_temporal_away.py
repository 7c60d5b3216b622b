"""While Temporal cannot be reached, run controls and new runs answer 503 with Retry-After, as a
database outage does: nothing is wrong with the request, and asking again later will do."""

from __future__ import annotations

import httpx
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from support.drive import ALWAYS_OPEN, new_number, serve
from support.ports import free_port
from support.stack import Stack
from support.tcp_proxy import TcpProxy
from tests.conftest import SimulatorKnobs


async def test_run_controls_and_new_runs_answer_503_while_temporal_is_away(
    stack: Stack, temporal_env: WorkflowEnvironment, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business()
    phone = new_number()
    await stack.force_outcomes({phone: "completed"})
    await sim_knobs(talk_seconds_by_to={phone: 60.0})
    run_id = await stack.start_run(business, [phone])
    host, port = temporal_env.client.service_client.config.target_host.rsplit(":", 1)
    async with TcpProxy.running(host, int(port)) as proxy:
        temporal = await Client.connect(f"127.0.0.1:{proxy.port}", namespace=temporal_env.client.namespace)
        async with (
            serve(create_app(stack.settings, temporal), free_port()) as url,
            httpx.AsyncClient(base_url=url, headers=business.headers, timeout=60) as api,
        ):
            proxy.cut()
            paused = await api.post(f"/v1/runs/{run_id}/pause")
            started = await api.post(
                "/v1/runs",
                json={"leads": [{"phone": new_number()}], "options": {"calling_window": ALWAYS_OPEN}},
            )
            proxy.restore()
            again = await api.post(f"/v1/runs/{run_id}/cancel")
    assert paused.status_code == 503 and paused.headers["Retry-After"], paused.text
    assert "Temporal" in paused.json()["detail"]
    assert started.status_code == 503 and started.headers["Retry-After"], started.text
    assert again.status_code == 202, again.text  # once it is back, the same request works
    runs = (await stack.http.get("/v1/runs", headers=business.headers)).json()
    assert [r["id"] for r in runs] == [run_id]  # the refused start left no run behind
