"""Deploying new workflow code while runs are in flight: a run started by the previous code finishes
on the new code, without a double dial or a lost outcome."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from temporalio import workflow
from temporalio.api.history.v1 import HistoryEvent

from contracts.names import run_workflow_id
from support.drive import execution_chain, new_number, wait_for
from support.stack import Stack
from workflows.outbound_run import DIAL_TIME_FROM_RESULT, OUTCOMES_RIDE_DIALS


def _patch_markers(events: list[HistoryEvent]) -> list[str]:
    """The patch id of each `workflow.patched` marker in a history."""
    found = []
    for event in events:
        if event.HasField("marker_recorded_event_attributes"):
            attrs = event.marker_recorded_event_attributes
            if attrs.marker_name == "core_patch":
                data = json.loads(attrs.details["patch-data"].payloads[0].data)
                found.append(data["id"])
    return found


async def test_a_run_started_by_the_previous_workflow_code_finishes_on_the_new_code(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous code is today's with every `workflow.patched` branch not yet written: the worker
    that starts the run sees `patched()` answer False, as code from before those changes would
    behave. Mid-run that worker is replaced by one running today's code. It replays the run's
    history, which has no patch markers, so it takes the old branches again and keeps to them for
    the rest of the execution (the SDK remembers a patch's answer for the whole execution; a run's next
    execution after continue-as-new takes the new ones)."""
    await stack.stop_worker()
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(15)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))

    with monkeypatch.context() as previous_code:
        previous_code.setattr(workflow, "patched", lambda _patch_id: False)
        await stack.start_worker()
        run_id = await stack.start_run(business, phones)

        async def some_calls_ended() -> bool:
            return sum(1 for c in await stack.sim_calls(business.caller_id) if c["ended_at"]) >= 4

        await wait_for(some_calls_ended, within=60, what="calls of the run on the previous code")
        await stack.stop_worker()
    switched_at = time.time()
    await stack.start_worker()

    run = await stack.wait_run_ends(business, run_id, within=120)
    assert run["status"] == "completed"
    sim_calls = await stack.sim_calls(business.caller_id)
    assert Counter(c["to"] for c in sim_calls) == Counter(phones)  # I2 across the upgrade
    assert any(c["created_at"] > switched_at for c in sim_calls)  # the new code dialed too
    assert {lead.status for lead in await stack.leads(run_id)} == {"answered"}  # nothing lost
    assert await stack.peak_concurrency([business.caller_id]) <= 3

    # The execution the previous code started kept to its path on the new code: no dial carried
    # outcomes (the newer path), before or after the switch, and no marker of a change whose old
    # branch it had taken. A choice it first meets after the switch takes the new branch, which the
    # SDK records with a marker: `drain-before-continue-as-new` is asked only once the server
    # suggests continuing as new. A later execution runs the new code throughout.
    histories = await execution_chain(stack.temporal, run_workflow_id(run_id))
    assert not set(_patch_markers(list(histories[0].events))) & {OUTCOMES_RIDE_DIALS, DIAL_TIME_FROM_RESULT}
    dials = [
        [
            json.loads(attrs.input.payloads[0].data)
            for event in history.events
            if (attrs := event.activity_task_scheduled_event_attributes).activity_type.name == "place_call"
        ]
        for history in histories
    ]
    assert sum(len(execution) for execution in dials) == len(phones)
    assert [dial["outcomes"] for dial in dials[0]] == [[]] * len(dials[0])
