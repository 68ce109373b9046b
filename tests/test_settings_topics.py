"""Settings from the environment and the topic catalogue. No broker."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stillflow import contracts as c
from stillflow.settings import StillflowSettings, TopicNames
from stillflow.topics import catalogue, model_for, spec_for


def test_env_prefix_and_nesting(monkeypatch) -> None:
    monkeypatch.setenv("STILLFLOW_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("STILLFLOW_TOPICS__DLQ", "ops.dead")
    monkeypatch.setenv("STILLFLOW_SDK__LINGER_MS", "25")
    monkeypatch.setenv("STILLFLOW_KAFKA__SASL_PASSWORD", "hunter2")
    s = StillflowSettings()
    assert s.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.topics.dlq == "ops.dead" and s.topics.trace_steps == "stillflow.trace.steps"
    assert s.sdk.linger_ms == 25
    assert "hunter2" not in repr(s)  # secrets stay out of logs


def test_invalid_env_value_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("STILLFLOW_SDK__MAX_IN_FLIGHT", "-3")
    with pytest.raises(ValidationError, match="max_in_flight"):
        StillflowSettings()


def test_client_kwargs_need_a_bootstrap() -> None:
    with pytest.raises(ValueError, match="STILLFLOW_KAFKA__BOOTSTRAP_SERVERS"):
        StillflowSettings().kafka.client_kwargs()


def test_catalogue_covers_design_topics() -> None:
    specs = {s.role: s for s in catalogue()}
    assert set(specs) == set(TopicNames.model_fields)
    assert specs["trace_steps"].value is c.TraceStepEvent and specs["trace_steps"].key == "trace_id"
    assert specs["model_versions"].partitions == 1  # ordered transitions for every router
    assert specs["dataset_sft"].configs["retention.ms"] == "-1"
    assert model_for("stillflow.dlq") is c.DeadLetter


def test_prefixed_names_and_unknown_topic() -> None:
    names = TopicNames().with_prefix("t1.")
    assert names.trace_outcomes == "t1.stillflow.trace.outcomes"
    assert spec_for("t1.stillflow.dataset.dpo", names).value is c.PreferencePair
    with pytest.raises(KeyError, match="unknown topic 'nope'"):
        spec_for("nope")
