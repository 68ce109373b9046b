"""A faust app that does nothing per event: the ceiling the streams pipeline is compared with.

Consumes the trace topics named in the environment and, at the end of each round (BENCH_ROUND_ENDS,
cumulative event counts), sends one record to BENCH_DONE_TOPIC. Its consumer gets the streams worker's cap on
fetch waits. Run as `python -m benchmarks.noop_app worker`.
"""

from __future__ import annotations

import os

import faust

# cumulative event counts at which a round ends ("6270,12544,...")
ROUND_ENDS = {int(x) for x in os.environ["BENCH_ROUND_ENDS"].split(",")}
MARK_EVERY = int(os.environ.get("BENCH_MARK_EVERY", "0"))  # progress records, for the round's shape
app = faust.App(
    os.environ["BENCH_APP_ID"],
    datadir=os.environ["BENCH_DATA_DIR"],
    broker=f"kafka://{os.environ['STILLFLOW_KAFKA__BOOTSTRAP_SERVERS']}",
    store="memory://",
    web_port=int(os.environ["BENCH_WEB_PORT"]),
    web_host="127.0.0.1",
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    consumer_auto_offset_reset="earliest",
)
# the same cap on fetch waits as the streams worker (BENCH_FETCH_MAX_WAIT_MS): the two differ only in their work
if os.environ.get("BENCH_FETCH_MAX_WAIT_MS"):
    from streams.consumer_tuning import bound_fetch_wait

    bound_fetch_wait(app, int(os.environ["BENCH_FETCH_MAX_WAIT_MS"]))
_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
source = app.topic(os.environ["STILLFLOW_TOPICS__TRACE_STEPS"], os.environ["STILLFLOW_TOPICS__TRACE_OUTCOMES"], **_RAW)
done = app.topic(os.environ["BENCH_DONE_TOPIC"], **_RAW)
seen = 0


@app.agent(source)
async def noop(stream):
    global seen
    async for _value in stream:
        seen += 1
        if seen in ROUND_ENDS or (MARK_EVERY and seen % MARK_EVERY == 0):  # round ends and progress marks
            await done.send(key=b"done", value=str(seen).encode())


if __name__ == "__main__":
    app.main()
