"""`keep_queued_events(app)`: stop faust from dropping events at the end of a table recovery.

faust's `FlowControlEvent.resume()` (mode-streaming) clears every agent's input queue, and faust's
`Recovery.on_recovery_completed` calls it last: after it resumed the stream partitions and sought them
to their committed offsets. When the tables had something to recover, the flow was already resumed
for that, so the fetcher keeps delivering while the seek is awaited. The events it queued in that
moment are then cleared, but the consumer's read offset has passed them: they are not fetched again
and never reach an agent. Later events are acked and committed, so the next worker skips them too
(faust-streaming issue #596 describes the same race).

Seen in the kill -9 test (a restart with changelogs to recover, small batches): the window agent of the
new worker read window records @0-@6, @7 was queued during the seek and cleared, then @8 onwards;
the SFT examples of @7's traces were never written, while their scored traces were. It can drop the
assembler's trace events the same way (a trace would then expire as incomplete).

Resuming a flow that is already active has nothing stale to clear: faust clears the queues when it
suspends the flow at a rebalance (`on_partitions_revoked`, worker stop), and while it is suspended
nothing is queued. So `resume()` on an active flow is made a no-op; resuming a suspended flow keeps
faust's behaviour (it still clears). Redelivered events that the seek makes the consumer fetch again
are dropped by faust's read-offset check or processed twice (at-least-once; record ids dedupe).
"""

from __future__ import annotations

from typing import Any

__all__ = ["keep_queued_events"]


def keep_queued_events(app: Any) -> None:
    """Make `app.flow_control.resume()` leave the queues alone when the flow is already active."""
    flow = app.flow_control
    if getattr(flow, "_stillflow_keeps_queued", False):
        return
    if not all(hasattr(flow, name) for name in ("resume", "is_active")):
        raise RuntimeError(f"faust's flow control ({type(flow).__name__}) no longer has resume/is_active: "
                           "check streams.flow_control against the installed faust-streaming")
    resume = flow.resume

    def resume_unless_active() -> None:
        if flow.is_active():
            return  # nothing stale is queued; clearing would drop events the consumer has read past
        resume()

    flow.resume = resume_unless_active
    flow._stillflow_keeps_queued = True
