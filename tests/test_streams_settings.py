"""Streams settings: defaults, environment overrides, validation, frozen models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stillflow.quality.settings import QualitySettings
from streams.settings import StreamsSection, StreamsSettings


def test_defaults() -> None:
    s = StreamsSettings().streams
    assert s.pair_min_gap == 0.2
    assert s.window_size_s == 60 and s.window_grace_s == 10
    assert s.web_port == 6066 and s.store == "memory://"
    assert s.judge.enabled is False and s.judge.api_key is None


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLFLOW_STREAMS__WINDOW_SIZE_S", "5")
    monkeypatch.setenv("STILLFLOW_STREAMS__JUDGE__ENABLED", "true")
    monkeypatch.setenv("STILLFLOW_STREAMS__JUDGE__API_KEY", "sk-test")
    monkeypatch.setenv("STILLFLOW_KAFKA__BOOTSTRAP_SERVERS", "k:9092")
    s = StreamsSettings()
    assert s.streams.window_size_s == 5
    assert s.streams.judge.enabled and s.streams.judge.api_key is not None
    assert s.streams.judge.api_key.get_secret_value() == "sk-test" and "sk-test" not in repr(s)
    assert s.kafka.bootstrap_servers == "k:9092"


def test_the_service_settings_carry_the_shared_quality_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLFLOW_QUALITY__MIN_SCORE", "0.8")
    s = StreamsSettings()
    assert isinstance(s.quality, QualitySettings) and s.quality.min_score == 0.8


@pytest.mark.parametrize("moved", ["min_score", "weights", "step_budget_factor", "unsafe_patterns"])
def test_scoring_and_gate_fields_live_in_the_quality_section(moved: str) -> None:
    assert moved not in StreamsSection.model_fields
    assert moved in QualitySettings.model_fields


def test_validation_and_frozen() -> None:
    with pytest.raises(ValidationError):
        StreamsSection(pair_min_gap=1.5)
    with pytest.raises(ValidationError):
        StreamsSection(min_score=0.8)  # type: ignore[call-arg]  # moved to QualitySettings; extra=forbid
    s = StreamsSection()
    with pytest.raises(ValidationError):
        s.window_size_s = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        StreamsSettings().streams = s  # type: ignore[misc]
