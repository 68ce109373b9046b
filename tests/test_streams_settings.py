"""Streams settings: defaults, environment overrides, validation, frozen models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.settings import DEFAULT_UNSAFE_PATTERNS, ScoreWeights, StreamsSection, StreamsSettings


def test_defaults() -> None:
    s = StreamsSettings().streams
    assert s.step_budget_factor == 2.0 and s.pair_min_gap == 0.2
    assert s.window_size_s == 60 and s.window_grace_s == 10
    assert s.web_port == 6066 and s.store == "memory://"
    assert s.judge.enabled is False and s.judge.api_key is None
    assert s.unsafe_patterns == DEFAULT_UNSAFE_PATTERNS
    assert sum(s.weights.normalised().values()) == pytest.approx(1.0)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLFLOW_STREAMS__MIN_SCORE", "0.8")
    monkeypatch.setenv("STILLFLOW_STREAMS__WEIGHTS__CORRECTNESS", "3")
    monkeypatch.setenv("STILLFLOW_STREAMS__WINDOW_SIZE_S", "5")
    monkeypatch.setenv("STILLFLOW_STREAMS__JUDGE__ENABLED", "true")
    monkeypatch.setenv("STILLFLOW_STREAMS__JUDGE__API_KEY", "sk-test")
    monkeypatch.setenv("STILLFLOW_STREAMS__UNSAFE_PATTERNS", '["\\\\bformat c:"]')
    monkeypatch.setenv("STILLFLOW_KAFKA__BOOTSTRAP_SERVERS", "k:9092")
    s = StreamsSettings()
    assert s.streams.min_score == 0.8 and s.streams.weights.correctness == 3 and s.streams.window_size_s == 5
    assert s.streams.judge.enabled and s.streams.judge.api_key is not None
    assert s.streams.judge.api_key.get_secret_value() == "sk-test" and "sk-test" not in repr(s)
    assert s.streams.unsafe_patterns == (r"\bformat c:",)
    assert s.kafka.bootstrap_servers == "k:9092"


def test_validation_and_frozen() -> None:
    with pytest.raises(ValidationError):
        StreamsSection(unsafe_patterns=("(unclosed",))
    with pytest.raises(ValidationError):
        StreamsSection(min_score=1.5)
    with pytest.raises(ValidationError):
        ScoreWeights(correctness=0, efficiency=0, tool_selection=0, safety=0, reasoning_quality=0)
    s = StreamsSection()
    with pytest.raises(ValidationError):
        s.min_score = 0.1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        StreamsSettings().streams = s  # type: ignore[misc]
