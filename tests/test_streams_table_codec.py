"""The changelog codec of the streams tables: what it writes reads back to the same table values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
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


def test_changelog_keys_are_the_raw_ids_so_state_lands_on_its_source_partition(tmp_path) -> None:
    """The SDK keys events by the raw trace_id (murmur2 partitioner); the assembly changelog is written
    with use_partitioner, so its records must hash the same bytes to land on the events' partition."""
    from aiokafka.partitioner import murmur2

    from tests.helpers import built_streams_app

    sa = built_streams_app(tmp_path, partitions=4)
    reg = sa.app.serializers
    state = AssemblyState(trace_id="trace-7", first_seen=T0, updated_at=T0)
    for table in (sa.assembly, sa.references, sa.windows):
        # what send_changelog and the store use: the table's own serializers
        raw = reg.dumps_key(table.key_type, "trace-7", serializer=table.key_serializer)
        assert raw == b"trace-7"
        assert reg.loads_key(table.key_type, raw, serializer=table.key_serializer) == "trace-7"
        value = reg.dumps_value(table.value_type, state, serializer=table.value_serializer)
        assert value == state.model_dump_json().encode()  # pydantic's serializer, not faust's json
    # the bytes decide the partition: a JSON-quoted key would move most traces elsewhere
    moved = sum((murmur2(f"t-{i}".encode()) & 0x7FFFFFFF) % 4 != (murmur2(f'"t-{i}"'.encode()) & 0x7FFFFFFF) % 4
                for i in range(200))
    assert moved > 100


async def test_write_many_writes_the_records_faust_would_and_the_store(tmp_path) -> None:
    """The assembler's batch writes skip faust's send_soon path (streams.changelog): same topic, key and
    value bytes as faust's own changelog record, the partition left to the producer's key partitioner."""
    import asyncio
    from types import SimpleNamespace

    from streams.changelog import changelog_record, write_many
    from tests.helpers import built_streams_app

    sa = built_streams_app(tmp_path, partitions=4)
    state = AssemblyState(trace_id="trace-7", first_seen=T0, updated_at=T0)
    topic, key, value = changelog_record(sa.assembly, "trace-7", state)
    assert topic == sa.assembly.changelog_topic.get_topic_name() and topic.endswith("-assembly-changelog")
    assert key == b"trace-7" and value == state.model_dump_json().encode()

    sent: list[tuple] = []
    persisted: list[tuple] = []

    class _Producer:
        async def send(self, topic, key, value, partition, timestamp, headers):
            sent.append((topic, key, value, partition))
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(SimpleNamespace(topic=topic, partition=3, offset=len(sent)))
            return fut

    sa.assembly.data.set_persisted_offset = lambda tp, offset: persisted.append((tp.topic, tp.partition, offset))
    other = state.model_copy(update={"trace_id": "trace-8"})
    futures = await write_many(sa.assembly, {"trace-7": state, "trace-8": other}, _Producer())
    await asyncio.gather(*futures)
    await asyncio.sleep(0)  # done callbacks
    assert [s[1] for s in sent] == [b"trace-7", b"trace-8"] and all(s[3] is None for s in sent)
    assert sa.assembly.data["trace-7"] == state and sa.assembly.data["trace-8"] == other
    assert persisted == [(topic, 3, 1), (topic, 3, 2)]
    # an encoded state (what the batch work returns) is written as it is
    encoded = state.model_dump_json().encode()
    assert changelog_record(sa.assembly, "trace-9", encoded)[2] is encoded
    # the windows table has one partition: any key lands on it; a table faust would partition by the record
    # being processed cannot be written this way
    await write_many(sa.windows, {"__book__": {"x": 1}}, _Producer())
    with pytest.raises(ValueError, match="use_partitioner"):
        await write_many(sa.app.Table("by-record", default=None, partitions=4), {"k": 1}, _Producer())
