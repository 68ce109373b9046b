"""`keep_queued_events` on a real faust app's flow control and queues (no broker). The race it closes
(faust's recovery clearing events queued during its seek) ran through the broker in the kill -9 test of
tests/test_streams_app.py, which also runs with small batches."""

from __future__ import annotations

from typing import Any

import faust

from streams.flow_control import keep_queued_events
from tests.helpers import built_streams_app


def _agent_queue(app: faust.App) -> Any:
    return app.channel().queue  # the input queue faust gives a channel (and so an agent's stream)


def _app_and_queue() -> tuple[faust.App, Any]:
    app = faust.App("flow-test", broker="kafka://127.0.0.1:1")  # never contacted
    return app, _agent_queue(app)


def test_faust_clears_the_queues_when_an_active_flow_is_resumed() -> None:
    # the upstream behaviour the guard exists for: when this fails, faust changed and the guard may go
    app, queue = _app_and_queue()
    app.flow_control.resume()
    queue.put_nowait("event")
    app.flow_control.resume()
    assert queue.empty()


def test_resuming_an_active_flow_keeps_what_is_queued() -> None:
    app, queue = _app_and_queue()
    keep_queued_events(app)
    app.flow_control.resume()  # from suspended (faust starts suspended): flows
    assert app.flow_control.is_active()
    queue.put_nowait("event")
    app.flow_control.resume()  # e.g. at the end of a recovery that had resumed the flow already
    assert queue.get_nowait() == "event"


def test_resuming_a_suspended_flow_still_clears_as_faust_does() -> None:
    app, queue = _app_and_queue()
    keep_queued_events(app)
    app.flow_control.resume()
    queue.put_nowait("stale")  # queued before a rebalance (faust clears on suspend too)
    app.flow_control.suspend()
    assert not app.flow_control.is_active()
    app.flow_control.resume()
    assert app.flow_control.is_active()
    assert queue.empty()


def test_applied_once_and_wired_into_the_streams_app(tmp_path) -> None:
    app, queue = _app_and_queue()
    keep_queued_events(app)
    keep_queued_events(app)  # not wrapped twice
    app.flow_control.resume()
    queue.put_nowait("event")
    app.flow_control.resume()
    assert queue.qsize() == 1

    sa = built_streams_app(tmp_path, partitions=2)
    flow = sa.app.flow_control
    flow.resume()
    queue = _agent_queue(sa.app)
    queue.put_nowait("event")
    flow.resume()
    assert queue.qsize() == 1
