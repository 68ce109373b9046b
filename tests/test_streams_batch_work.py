"""`streams.batch_work`: a batch of raw records to states, traces, scores and dead letters (no broker)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from stillflow.contracts import DeadLetter, TraceOutcomeEvent, TraceStepEvent, decode, encode
from streams.assembly import AssemblyState, add_outcome, add_step
from streams.batch_work import (
    EXPIRE,
    OUTCOMES,
    STEPS,
    BatchIn,
    BatchWork,
    Record,
    WorkConfig,
    assemble_batch,
    held_keys,
    lookup_states,
    trace_key,
)
from streams.score_stage import DIMENSIONS, Job, score_trace
from streams.settings import StreamsSettings
from tests.helpers import SIM_START, teacher_traces


@pytest.fixture(scope="module")
def traces():
    return teacher_traces(40, seed=5)


@pytest.fixture(scope="module")
def config() -> WorkConfig:
    return WorkConfig.from_settings(StreamsSettings())


def records_of(trace, *, offset: int = 0) -> list[Record]:
    key = trace.trace_id.encode()
    out = [Record(STEPS, "steps", 0, offset + i, key,
                  encode(TraceStepEvent(trace_id=trace.trace_id, task_id=trace.task_id, agent_id=trace.agent_id,
                                        seq=i, step=step, timestamp=step.timestamp)))
           for i, step in enumerate(trace.steps)]
    out.append(Record(OUTCOMES, "outcomes", 0, offset + len(out), key, encode(TraceOutcomeEvent.from_trace(trace))))
    return out


def _same(a: list, b: list) -> bool:
    return [{**x.__dict__, "seconds": 0} for x in a] == [{**x.__dict__, "seconds": 0} for x in b]


def test_batches_give_what_the_assembler_and_scoring_give_one_event_after_another(traces, config) -> None:
    rng = random.Random(3)
    records = [r for t in traces for r in records_of(t)]
    rng.shuffle(records)  # steps out of order, traces interleaved
    records += rng.sample(records, 25)  # and redelivered
    work = BatchWork(config)
    outs = [work.run(BatchIn(records[i:i + 37])) for i in range(0, len(records), 37)]
    completed = [sc.trace_id for o in outs for sc in o.scored]
    assert sorted(completed) == sorted(t.trace_id for t in traces)  # each once
    assert sum(o.events[STEPS, "duplicate"] + o.events[OUTCOMES, "duplicate"] for o in outs) == 25
    assert sum(o.completed for o in outs) == len(traces) and not any(o.letters for o in outs)

    # the same records fed one by one to the assembler, then scored in completion order
    states: dict[str, AssemblyState] = {}
    done = []
    for r in records:
        model = TraceStepEvent if r.source == STEPS else TraceOutcomeEvent
        ev = decode(r.value, model)
        res = (add_step if r.source == STEPS else add_outcome)(states.get(ev.trace_id), ev)
        if not res.duplicate:
            states[ev.trace_id] = res.state
        if res.trace is not None:
            done.append(res.trace)
    assert [t.trace_id for t in done] == completed
    refs: dict[str, int] = {}
    expected = []
    for t in done:
        sc = score_trace(config.scoring.pipeline(), t, reference_steps=refs.get(t.task_id))
        if sc.reference is not None:
            refs[t.task_id] = sc.reference
        expected.append(sc)
    assert _same([sc for o in outs for sc in o.scored], expected)
    # every trace ends as a tombstone, encoded as its changelog record
    final = {}
    for o in outs:
        final.update(o.states)
    assert set(final) == {t.trace_id for t in traces}
    for tid, (raw, updated, completed_) in final.items():
        st = AssemblyState.model_validate_json(raw)
        assert st.completed and completed_ and st.trace_id == tid and updated == st.updated_at.timestamp()


def test_a_trace_split_over_batches_completes_from_the_state_handed_in(traces, config) -> None:
    t = traces[0]
    recs = records_of(t)
    first = BatchWork(config).run(BatchIn(recs[:2]))
    assert first.completed == 0 and set(first.states) == {t.trace_id}
    raw, _, done = first.states[t.trace_id]
    assert not done
    # another BatchWork (a new scoring process) is given the state as the table holds it: its bytes
    second = BatchWork(config).run(BatchIn(recs[2:], states={t.trace_id: raw}))
    assert [sc.trace_id for sc in second.scored] == [t.trace_id]
    # without it, the rest is an incomplete trace of its own
    alone = BatchWork(config).run(BatchIn(recs[2:]))
    assert alone.completed == 0


def test_forget_drops_the_states_held(traces, config) -> None:
    t = traces[1]
    recs = records_of(t)
    work = BatchWork(config)
    work.run(BatchIn(recs[:2]))
    assert work.run(BatchIn(recs[2:], forget=True)).completed == 0  # held state dropped, none handed in
    work = BatchWork(config)
    out = work.run(BatchIn(recs[:2]))
    raw = out.states[t.trace_id][0]
    assert work.run(BatchIn(recs[2:], forget=True, states={t.trace_id: raw})).completed == 1


def test_bad_records_are_dead_letters_and_the_valid_ones_around_them_are_untouched(traces, config) -> None:
    t = traces[2]
    recs = records_of(t)
    good_step = recs[0]
    bad = [
        Record(STEPS, "steps", 1, 100, b"k", b"\xff\xfenot json"),
        Record(OUTCOMES, "outcomes", 1, 101, b"k", b'{"trace_id": 5}'),
        Record(STEPS, "steps", 1, 102, b"not-the-trace", good_step.value),
        Record(STEPS, "steps", 1, 103, b"k", None),
    ]
    out = BatchWork(config).run(BatchIn([recs[0], *bad[:2], *recs[1:-1], *bad[2:], recs[-1]]))
    assert [sc.trace_id for sc in out.scored] == [t.trace_id]
    kinds = [letter.kind for letter in out.letters]
    assert kinds[2:] == ["key_mismatch", "empty"] and len(kinds) == 4 and "key_mismatch" not in kinds[:2]
    assert [letter.offset for letter in out.letters] == [100, 101, 102, 103]
    assert out.events[STEPS, "dead_letter"] == 3 and out.events[OUTCOMES, "dead_letter"] == 1
    assert all(isinstance(letter, DeadLetter) and letter.reason for letter in out.letters)


def test_expiry_requests(traces, config) -> None:
    t = traces[3]
    recs = records_of(t)
    work = BatchWork(config)
    work.run(BatchIn(recs[:2]))
    expire = Record(EXPIRE, "expire", 0, 0, t.trace_id.encode(), b"expire")
    assert work.run(BatchIn([expire])).states == {}  # not idle long enough: it moved on since the timer looked
    later = datetime.now(UTC) + timedelta(seconds=config.assembly_timeout_s + 1)
    a = assemble_batch([expire], work._state_of, max_steps=512, assembly_timeout_s=config.assembly_timeout_s,
                       steps_topic="steps-topic", now=later)
    assert a.states == {t.trace_id: None} and a.expired == 1
    [letter] = a.letters
    assert letter.kind == "incomplete" and letter.source_topic == "steps-topic"
    # a completed trace's tombstone goes without a letter; an unknown trace is nothing to do
    work.run(BatchIn(recs[2:]))
    assert isinstance(work.states[t.trace_id], bytes)  # a tombstone is held encoded
    a = assemble_batch([expire, Record(EXPIRE, "expire", 0, 1, b"nobody", b"expire")], work._state_of, max_steps=512,
                       assembly_timeout_s=config.assembly_timeout_s, steps_topic="s", now=later)
    assert a.states == {t.trace_id: None} and a.expired == 0 and not a.letters


def test_an_expiry_in_the_batch_is_seen_by_the_records_after_it(traces, config) -> None:
    t = traces[4]
    recs = records_of(t)
    states = {}
    a = assemble_batch(recs[:1], states.get, max_steps=512, assembly_timeout_s=1.0, steps_topic="s",
                       now=SIM_START)
    states.update(a.states)
    expire = Record(EXPIRE, "expire", 0, 0, t.trace_id.encode(), b"expire")
    b = assemble_batch([expire, *recs[1:]], states.get, max_steps=512, assembly_timeout_s=1.0, steps_topic="s",
                       now=SIM_START + timedelta(seconds=5))
    assert b.expired == 1 and not b.completed  # step 0 went with the expired state
    assert b.states[t.trace_id] is not None and 0 not in b.states[t.trace_id].steps


def test_unscored_batches_and_the_judges_scores(traces, config) -> None:
    work = BatchWork(config)
    out = work.run(BatchIn(records_of(traces[5]), score=False))
    assert out.scored == [] and [x.trace_id for x in out.traces] == [traces[5].trace_id]
    [sc] = work.score([Job(out.traces[0], None, 0.25)])
    assert sc.dims[DIMENSIONS.index("reasoning_quality")] == pytest.approx(0.25)


def test_references_handed_in_replace_the_ones_carried(traces, config) -> None:
    t = next(t for t in traces if t.success and t.ground_truth and t.final_output == t.ground_truth)
    work = BatchWork(config)
    [sc] = work.run(BatchIn(records_of(t), references={t.task_id: 1})).scored
    assert sc.reference == 1  # the table's lower reference was used and kept
    eff = sc.dims[DIMENSIONS.index("efficiency")]
    [free] = BatchWork(config).run(BatchIn(records_of(t))).scored
    assert free.reference == len(t.steps) and free.dims[DIMENSIONS.index("efficiency")] > eff


def test_the_states_to_hand_in() -> None:
    recs = [Record(STEPS, "s", 0, 0, b"a", b""), Record(STEPS, "s", 0, 1, b"b", b""),
            Record(EXPIRE, "e", 0, 2, b"c", b""), Record(STEPS, "s", 0, 3, b"\xff", b"")]
    keys = held_keys(recs)
    assert keys == {"a", "b", "c", trace_key(b"\xff")}
    table = {"a": b"A-table", "b": b"B-table", "c": b"C-table"}
    got = lookup_states(keys, known={"a"}, table_value=table.get, overlay={"b": b"B-new", "c": None})
    assert got == {"b": b"B-new"}  # a: held already; c: deleted since; the bad key: no state anywhere
