"""RecordingRetentionWorkflow: deletes the recordings past their business's retention."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from contracts.activities import DELETE_EXPIRED_RECORDINGS, RetentionPass
    from contracts.names import RETENTION_WORKFLOW

PASS_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5))


@workflow.defn(name=RETENTION_WORKFLOW)
class RecordingRetentionWorkflow:
    """Deletes at Twilio, pass by pass, the recordings whose business keeps them for fewer days than
    they have been kept (started hourly by the schedule `recording-retention-{task queue}`, which
    an operator can pause or trigger in the Web UI). Returns how many it deleted."""

    @workflow.run
    async def run(self) -> int:
        deleted = 0
        while True:
            done: RetentionPass = await workflow.execute_activity(
                DELETE_EXPIRED_RECORDINGS,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(minutes=1),
                retry_policy=PASS_RETRY,
                summary="delete recordings past their retention",
                result_type=RetentionPass,
            )
            deleted += done.deleted
            workflow.set_current_details(f"{deleted} recordings deleted")
            if not done.more:
                return deleted
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new()
