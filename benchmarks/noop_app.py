"""A faust app that does nothing per event: the ceiling the streams pipeline is compared with.

Consumes the trace topics named in the environment and, after BENCH_EXPECTED events, sends one record
to BENCH_DONE_TOPIC. Run as `python -m benchmarks.noop_app worker`.
"""

from __future__ import annotations

import os

import faust

EXPECTED = int(os.environ["BENCH_EXPECTED"])
app = faust.App(
    os.environ["BENCH_APP_ID"],
    broker=f"kafka://{os.environ['STILLFLOW_KAFKA__BOOTSTRAP_SERVERS']}",
    store="memory://",
    web_port=int(os.environ["BENCH_WEB_PORT"]),
    web_host="127.0.0.1",
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    consumer_auto_offset_reset="earliest",
)
_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
source = app.topic(os.environ["STILLFLOW_TOPICS__TRACE_STEPS"], os.environ["STILLFLOW_TOPICS__TRACE_OUTCOMES"], **_RAW)
done = app.topic(os.environ["BENCH_DONE_TOPIC"], **_RAW)
seen = 0


@app.agent(source)
async def noop(stream):  # noqa: ANN001 - faust's agent protocol
    global seen
    async for _value in stream:
        seen += 1
        if seen == EXPECTED:
            await done.send(key=b"done", value=str(seen).encode())


if __name__ == "__main__":
    app.main()
