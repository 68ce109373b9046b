"""What the streams app does once a rebalance completed (its tables recovered), on an app that is built
but never started: the batch work forgets, the expiry books restart, and so does the windows' idle clock."""

from __future__ import annotations

import time

from tests.helpers import built_streams_app


async def test_a_completed_rebalance_resets_what_the_old_assignment_knew(tmp_path) -> None:
    sa = built_streams_app(tmp_path, partitions=2)
    idle_s = sa.settings.streams.window_idle_close_s
    sa._last_item_wall = time.monotonic() - 10 * idle_s  # e.g. the join and the recovery took that long
    sa._activity["t-1"] = (0.0, False)
    sa._expiring.add("t-1")
    sa.stage._forget_due = False

    await sa._on_rebalance_complete()

    assert sa.stage._forget_due  # the recovered table is the truth again
    assert not sa._activity and not sa._expiring
    # the first window tick must not close the recovered windows before their backlog is read
    assert time.monotonic() - sa._last_item_wall < idle_s
