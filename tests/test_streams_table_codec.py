"""The changelog codec of the streams tables: what it writes reads back to the same table values."""

from __future__ import annotations

from datetime import UTC, datetime

from faust.serializers import codecs

from stillflow.contracts import TraceStep
from streams.assembly import AssemblyState
from streams.pairs import PairCandidate
from streams.table_codec import TABLE_CODEC
from streams.tables import as_model
from streams.windows import WindowBook

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _round_trip(value: object) -> object:
    raw = codecs.dumps(TABLE_CODEC, value)
    assert isinstance(raw, bytes)
    return codecs.loads(TABLE_CODEC, raw)


def test_models_round_trip() -> None:
    state = AssemblyState(trace_id="t1", task_id="k", first_seen=T0, updated_at=T0,
                          steps={0: TraceStep(step_type="reasoning", content="héllo \u2028 \"quoted\"")},
                          step_event_ids={0: "e0"})
    assert as_model(AssemblyState, _round_trip(state)) == state
    book = WindowBook()
    assert as_model(WindowBook, _round_trip(book)) == book


def test_lists_of_models_and_plain_values_round_trip() -> None:
    cands = [PairCandidate(trace_id=f"t{i}", task_id="k", overall=i / 10, timestamp=T0,
                           messages=[{"role": "user", "content": "q"}]) for i in range(3)]
    back = _round_trip(cands)
    assert isinstance(back, list)
    assert [as_model(PairCandidate, c) for c in back] == cands
    for plain in (7, None, [], {"a": [1, "ü"]}, "text"):
        assert _round_trip(plain) == plain
