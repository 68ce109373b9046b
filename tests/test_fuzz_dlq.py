"""Property-based fuzzing of the dead-letter path and of the stream's per-record path, without a broker.

- `stillflow.dlq.decode_or_letter`: for any bytes (or a tombstone) exactly one of (event, letter) is
  set; a letter has a known kind and a reason, encodes within the size limit and keeps the original
  bytes and key (unless too large to copy);
- `TypedConsumer.handle` / `DeadLetterSink.send` with a recording producer: never raises, one letter
  per bad record;
- the stream's per-record path, `streams.batch_work.BatchWork` as the app runs it: decode or dead-letter,
  key check, assembly, score/gate/format/redact and encode what would be published.
  Valid traces interleaved with bad records and with contract-valid but awkward events complete
  exactly once, unchanged (no effect on valid traffic), and nothing raises.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st

from stillflow.contracts import (
    DeadLetter,
    Limits,
    ScoredTrace,
    SFTExample,
    TraceOutcomeEvent,
    TraceStepEvent,
    decode,
    encode,
    get_limits,
    set_limits,
)
from stillflow.dlq import DeadLetterSink, TypedConsumer, decode_or_letter, encode_letter
from streams.assembly import AssemblyState
from streams.batch_work import BatchIn, BatchWork, Record, WorkConfig
from streams.score_stage import Job
from streams.settings import StreamsSettings
from tests.fuzz_counts import count
from tests.fuzz_inputs import (  # noqa: F401 - small_limits: a fixture
    FUZZ,
    FUZZ_LIMITS,
    KINDS,
    NASTY,
    bad_record,
    small_limits,
    valid_outcome,
    valid_step,
)
from tests.helpers import make_trace

LIMITS = FUZZ_LIMITS
STEP_BASE = encode(TraceStepEvent(trace_id="t1", task_id="k1", seq=0, step={"step_type": "reasoning", "content": "x"}))
OUTCOME_BASE = encode(TraceOutcomeEvent.from_trace(make_trace(1, 3), include_steps=False))
LETTER_KINDS = set(KINDS) | {"too_many_steps", "seq_out_of_range", "trace_mismatch", "key_mismatch", "empty"}
WORK_CONFIG = WorkConfig.from_settings(StreamsSettings())

pytestmark = pytest.mark.usefixtures("small_limits")


def check_letter(raw: bytes | None, model: type, key: bytes | None = b"k") -> DeadLetter | None:
    count(f"dlq.decode_or_letter[{model.__name__}]")
    event, letter = decode_or_letter(raw, model, source_topic="src", partition=3, offset=7, key=key, service="fuzz")
    assert (event is None) != (letter is None)
    if letter is None:
        return None
    assert letter.kind in KINDS and letter.reason
    assert (letter.source_topic, letter.partition, letter.offset, letter.service) == ("src", 3, 7, "fuzz")
    out = encode_letter(letter)
    assert len(out) <= LIMITS.max_event_bytes
    back = decode(out, DeadLetter)
    assert (back.kind, back.reason[: len(letter.reason)]) == (letter.kind, letter.reason)
    assert back.key_b64 is None if key is None else base64.b64decode(back.key_b64) == key
    if back.raw_b64:
        assert base64.b64decode(back.raw_b64) == (raw or b"")
    else:
        assert raw is None or raw == b"" or "omitted" in back.reason
    return letter


@pytest.mark.parametrize("model", [TraceStepEvent, TraceOutcomeEvent], ids=lambda m: m.__name__)
@FUZZ
@given(raw=st.one_of(st.binary(max_size=400), st.none()), key=st.one_of(st.none(), st.binary(max_size=40)))
def test_decode_or_letter_arbitrary(model, raw, key) -> None:
    check_letter(raw, model, key)


@pytest.mark.parametrize(("model", "base"), [(TraceStepEvent, STEP_BASE), (TraceOutcomeEvent, OUTCOME_BASE)],
                         ids=["TraceStepEvent", "TraceOutcomeEvent"])
@FUZZ
@given(data=st.data())
def test_decode_or_letter_bad_records(model, base, data) -> None:
    raw = data.draw(bad_record(base))
    assert check_letter(raw, model) is not None, raw[:300]


@pytest.mark.parametrize(("name", "raw", "kind"), NASTY, ids=[n for n, _, _ in NASTY])
def test_decode_or_letter_nasty_corpus(name: str, raw: bytes, kind: str) -> None:
    old = get_limits()
    set_limits(Limits())
    try:
        count("dlq.decode_or_letter[TraceStepEvent]")
        _, letter = decode_or_letter(raw, TraceStepEvent, source_topic="src")
        assert letter is not None and letter.kind == kind and letter.reason
        assert decode(encode_letter(letter), DeadLetter).kind == kind
    finally:
        set_limits(old)


# -- TypedConsumer / DeadLetterSink with a recording producer -------------------------------------


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None, **_: Any) -> None:
        self.sent.append((topic, value, key))


def _record(value: bytes | None, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic="steps", partition=0, offset=offset, timestamp=0, timestamp_type=0, key=b"t1",
                          value=value, checksum=None, serialized_key_size=2,
                          serialized_value_size=len(value or b""), headers=())


_loop = asyncio.new_event_loop()


@FUZZ
@given(values=st.lists(st.one_of(bad_record(STEP_BASE), st.just(STEP_BASE), st.none()), min_size=1, max_size=8))
def test_typed_consumer_letters_each_bad_record_once(values) -> None:
    producer = RecordingProducer()
    sink = DeadLetterSink(producer, "dlq")  # type: ignore[arg-type]
    tc = TypedConsumer(None, TraceStepEvent, sink, service="fuzz")  # type: ignore[arg-type]
    delivered = 0
    for i, v in enumerate(values):
        count("dlq.TypedConsumer.handle")
        delivered += _loop.run_until_complete(tc.handle(_record(v, i))) is not None
    assert delivered == sum(v == STEP_BASE for v in values)
    assert len(producer.sent) == len(values) - delivered
    offsets = sorted(decode(v, DeadLetter).offset for _, v, _ in producer.sent)
    assert offsets == [i for i, v in enumerate(values) if v != STEP_BASE]
    assert sum(sink.counts.values()) == len(producer.sent)


# -- the stream's per-record path ----------------------------------------------------------------


class StreamPath:
    """What the streams app hands its batch work for each source record (`streams.batch_work.BatchWork`, one
    record per batch), and what it publishes for the result, encoded as the app does."""

    def __init__(self) -> None:
        self.work = BatchWork(WORK_CONFIG)
        self.letters: list[tuple[bytes | None, DeadLetter]] = []
        self.completed: dict[str, int] = {}
        self.traces: dict[str, Any] = {}

    def feed(self, key: bytes | None, value: bytes | None, role: str) -> None:
        count(f"stream path[{role}]")
        # unscored first (the LLM judge's path), then scored: both halves of the work
        out = self.work.run(BatchIn([Record(role, role, 0, 0, key, value)], score=False))
        for letter in out.letters:
            assert letter.kind in LETTER_KINDS, letter.kind
            decode(encode_letter(letter), DeadLetter)
            self.letters.append((key, letter))
        for raw, _, _ in (v for v in out.states.values() if v is not None):
            AssemblyState.model_validate_json(raw)  # the table's changelog value reads back
        for trace, sc in zip(out.traces, self.work.score([Job(t) for t in out.traces]), strict=True):
            for kind, _ in sc.errors:  # the app dead-letters a scored trace or example over the size limit
                assert kind == "oversize"
            if sc.scored_json is not None:
                decode(sc.scored_json, ScoredTrace)
            if sc.example_json is not None:
                decode(sc.example_json, SFTExample)
            self.completed[trace.trace_id] = self.completed.get(trace.trace_id, 0) + 1
            self.traces[trace.trace_id] = trace


def _trace_records(i: int) -> list[tuple[bytes, bytes, str]]:
    trace = make_trace(i, 4)
    key = trace.trace_id.encode()
    out = [(key, encode(TraceStepEvent(trace_id=trace.trace_id, task_id=trace.task_id, agent_id=trace.agent_id,
                                       seq=s, step=step, timestamp=step.timestamp)), "steps")
           for s, step in enumerate(trace.steps)]
    out.append((key, encode(TraceOutcomeEvent.from_trace(trace)), "outcomes"))
    return out


@st.composite
def interleaved(draw: Any) -> tuple[list[tuple[bytes | None, bytes | None, str]], int, int]:
    """Valid traces (steps out of order, some twice) with bad and awkward-but-valid records between them."""
    n_traces = draw(st.integers(1, 4))
    valid = [r for i in range(n_traces) for r in _trace_records(i)]
    valid += draw(st.lists(st.sampled_from(valid), max_size=3))  # redeliveries
    valid = draw(st.permutations(valid))
    n_bad = draw(st.integers(0, 6))
    bad = []
    for j in range(n_bad):
        role = draw(st.sampled_from(["steps", "outcomes"]))
        raw = draw(st.one_of(bad_record(STEP_BASE if role == "steps" else OUTCOME_BASE), st.none()))
        bad.append((f"bad-{j}".encode(), raw, role))
    awkward = []
    for j in range(draw(st.integers(0, 3))):
        tid = f"odd-{j}"
        if draw(st.booleans()):
            rec = draw(valid_outcome(trace_id=tid))
            awkward.append((tid.encode(), json.dumps(rec, ensure_ascii=False).encode(), "outcomes"))
        else:
            rec = draw(valid_step(trace_id=tid))
            key = tid.encode() if draw(st.booleans()) else b"another-key"
            awkward.append((key, json.dumps(rec, ensure_ascii=False).encode(), "steps"))
    stream = list(valid)
    for rec in bad + awkward:
        stream.insert(draw(st.integers(0, len(stream))), rec)
    return stream, n_traces, n_bad


@FUZZ
@given(case=interleaved())
def test_stream_path_valid_traffic_unaffected(case) -> None:
    stream, n_traces, n_bad = case
    path = StreamPath()
    for key, value, role in stream:
        path.feed(key, value, role)
    for i in range(n_traces):
        tid = make_trace(i, 4).trace_id
        assert path.completed.get(tid) == 1, tid
        assert path.traces[tid] == make_trace(i, 4)
    for j in range(n_bad):
        assert sum(1 for k, _ in path.letters if k == f"bad-{j}".encode()) == 1, j
    assert all(c == 1 for c in path.completed.values())


@FUZZ
@given(outcome=valid_outcome(trace_id="odd-1", inline=True))
def test_stream_path_scores_any_valid_outcome(outcome) -> None:
    """A contract-valid trace (awkward text, arbitrary tool schemas and args, edge timestamps) is
    scored and published: it cannot crash the pipeline."""
    path = StreamPath()
    path.feed(b"odd-1", json.dumps(outcome, ensure_ascii=False).encode(), "outcomes")
    assert path.completed == {"odd-1": 1} and not path.letters
