"""`score_trace`: one completed trace to what the worker publishes for it (no broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sim.policies import make_policy
from sim.runner import iter_offline
from stillflow.contracts import Limits, ScoredTrace, SFTExample, decode, get_limits, set_limits
from streams.pipeline import TracePipeline
from streams.score_stage import DIMENSIONS, WindowBatch, WindowItem, score_trace
from streams.settings import StreamsSettings
from streams.windows import window_start_for

START = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def traces():
    return list(iter_offline(60, make_policy("teacher"), seed=11, start=START, rate=20.0))


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
        assert sc.has_example == (p.example is not None) == (item.example_json is not None)
        if item.example_json is not None:
            example = decode(item.example_json, SFTExample)
            assert example == p.example and item.example_id == example.example_id
            assert item.candidate.messages is None  # sent once, in the example
        else:
            assert item.candidate.messages == p.candidate.messages
        assert not sc.errors
    # one batch record of items parses back whole
    raws = [score_trace(pipeline, t).item_json for t in traces[:5]]
    assert len(WindowBatch.model_validate_json('{"items":[' + ",".join(raws) + "]}").items) == 5


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
    later = list(iter_offline(20, make_policy("teacher"), seed=2, start=START + timedelta(seconds=61), rate=1.0))
    items = [WindowItem.model_validate_json(sc.item_json) for sc in (score_trace(pipeline, t, window_size_s=60)
                                                                     for t in later) if sc.has_example]
    assert items
    for item in items:
        example = decode(item.example_json, SFTExample)
        assert example.window_start == window_start_for(item.event_time, 60)
