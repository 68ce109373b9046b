"""`score_trace`: one completed trace to what the worker publishes for it (no broker)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from stillflow.contracts import Limits, ScoredTrace, SFTExample, decode, get_limits, set_limits
from streams.pipeline import TracePipeline
from streams.score_stage import (
    DIMENSIONS,
    WindowBatch,
    WindowItem,
    decode_window_record,
    encode_window_record,
    score_trace,
)
from streams.settings import StreamsSettings
from streams.windows import window_start_for
from tests.helpers import SIM_START, teacher_traces

START = SIM_START


@pytest.fixture(scope="module")
def traces():
    return teacher_traces(60, seed=11)


@pytest.fixture(scope="module")
def pipeline() -> TracePipeline:
    return TracePipeline.from_settings(StreamsSettings())


def test_outputs_are_the_pipelines_encoded(traces, pipeline) -> None:
    for t in traces:
        sc = score_trace(pipeline, t, reference_steps=None, window_size_s=60)
        p = pipeline.process(t, window_start=window_start_for(t.timestamp, 60))
        assert decode(sc.scored_json, ScoredTrace) == p.scored
        assert sc.passed == p.verdict.passed and sc.rejected_by == tuple(p.verdict.rejected_by)
        assert sc.dims == tuple(getattr(p.scored.score, d) for d in DIMENSIONS)
        assert (sc.trace_id, sc.task_id, sc.timestamp) == (t.trace_id, t.task_id, t.timestamp.timestamp())
        item = WindowItem.model_validate_json(sc.item_json)
        assert item.event_time == t.timestamp and item.passed == sc.passed
        assert sc.has_example == (p.example is not None) == (sc.example_json is not None)
        assert item.example_json is None  # the example travels beside the item
        if sc.example_json is not None:
            example = decode(sc.example_json, SFTExample)
            assert example == p.example and item.example_id == example.example_id
            assert item.candidate.messages is None and item.candidate.tools == []  # sent once, in the example
            assert example.tools == p.candidate.tools
        else:
            assert item.example_id is None and item.candidate.messages == p.candidate.messages
        assert not sc.errors


def test_a_window_record_carries_items_and_examples_in_order(traces, pipeline) -> None:
    scored = [score_trace(pipeline, t) for t in traces[:12]]
    assert any(sc.has_example for sc in scored) and not all(sc.has_example for sc in scored)
    raw = encode_window_record([(sc.item_json, sc.example_json) for sc in scored])
    back = decode_window_record(raw)
    assert [item.candidate.trace_id for item, _ in back] == [sc.trace_id for sc in scored]
    assert [ex for _, ex in back] == [sc.example_json for sc in scored]
    # the examples stay byte for byte what the SFT topic gets
    for item, ex in back:
        if ex is not None:
            assert decode(ex, SFTExample).example_id == item.example_id


def test_an_older_record_with_examples_inside_its_items_still_reads(traces, pipeline) -> None:
    sc = next(sc for sc in (score_trace(pipeline, t) for t in traces) if sc.has_example)
    old = WindowItem.model_validate_json(sc.item_json).model_copy(update={"example_json": sc.example_json.decode()})
    [(item, ex)] = decode_window_record(WindowBatch(items=[old]).model_dump_json().encode())
    assert ex == sc.example_json and item.example_id == old.example_id


@pytest.mark.parametrize("cut", ["missing", "extra"])
def test_a_record_whose_examples_do_not_match_its_items_is_refused(traces, pipeline, cut) -> None:
    scored = [sc for sc in (score_trace(pipeline, t) for t in traces[:12]) if sc.has_example][:2]
    raw = encode_window_record([(sc.item_json, sc.example_json) for sc in scored])
    raw = raw.rsplit(b"\n", 1)[0] if cut == "missing" else raw + b"\n" + scored[0].example_json
    with pytest.raises(ValueError, match="window record"):
        decode_window_record(raw)


def test_the_reference_only_goes_down(traces, pipeline) -> None:
    correct = [t for t in traces if t.success and t.ground_truth and t.final_output == t.ground_truth]
    t = correct[0]
    n = len(t.steps)
    assert score_trace(pipeline, t, reference_steps=None).reference == n
    assert score_trace(pipeline, t, reference_steps=n + 3).reference == n
    assert score_trace(pipeline, t, reference_steps=1).reference == 1
    # a reference makes efficiency relative to it
    loose = score_trace(pipeline, t, reference_steps=max(1, n // 2))
    tight = score_trace(pipeline, t, reference_steps=n)
    assert loose.dims[DIMENSIONS.index("efficiency")] < tight.dims[DIMENSIONS.index("efficiency")]


def test_the_judges_reasoning_score_is_used(traces, pipeline) -> None:
    sc = score_trace(pipeline, traces[0], reasoning_quality=0.123)
    assert sc.dims[DIMENSIONS.index("reasoning_quality")] == pytest.approx(0.123)


def test_a_trace_too_big_to_publish_is_a_dead_letter_not_an_item(traces, pipeline) -> None:
    old = get_limits()
    set_limits(Limits(max_step_content_chars=old.max_step_content_chars, max_event_bytes=2_000))
    try:
        sc = score_trace(pipeline, traces[0])
    finally:
        set_limits(old)
    assert sc.scored_json is None and sc.item_json is None and not sc.has_example
    [(kind, reason)] = sc.errors
    assert kind == "oversize" and reason.startswith(f"scored trace {traces[0].trace_id}:")
    assert json.dumps(sc.dims)  # the figures are still there for the metrics


def test_window_items_keep_the_window_of_their_trace(pipeline) -> None:
    later = teacher_traces(20, seed=2, start=START + timedelta(seconds=61), rate=1.0)
    scored = [sc for sc in (score_trace(pipeline, t, window_size_s=60) for t in later) if sc.has_example]
    assert scored
    for sc in scored:
        item = WindowItem.model_validate_json(sc.item_json)
        assert decode(sc.example_json, SFTExample).window_start == window_start_for(item.event_time, 60)


def test_the_references_carried_are_bounded(traces, pipeline) -> None:
    from streams.score_stage import Job, ScoringConfig, _Chain

    chain = _Chain(ScoringConfig.from_settings(StreamsSettings()), pipeline, max_refs=4)
    chain.seed({f"t{i}": i + 1 for i in range(10)})
    assert list(chain.refs) == ["t6", "t7", "t8", "t9"]  # the table's last ones
    chain.refs["t9"] = 1
    for i in range(10):
        chain._remember(f"n{i}", 3)
    assert len(chain.refs) <= 4 and "n9" in chain.refs and "t6" not in chain.refs
    chain.run([Job(traces[0])])
    assert len(chain.refs) <= 4
