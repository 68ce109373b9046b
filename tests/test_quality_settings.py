"""Quality settings (scoring and gates, shared by streams and trainer): defaults, environment
overrides (`STILLFLOW_QUALITY__...`), validation, frozen models, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from stillflow.quality.settings import DEFAULT_UNSAFE_PATTERNS, QualitySettings, ScoreWeights
from stillflow.settings import StillflowSettings
from streams.settings import StreamsSettings


def test_defaults() -> None:
    q = StillflowSettings().quality
    assert q == QualitySettings()
    assert q.min_score == 0.7 and q.step_budget_factor == 2.0
    assert q.unsafe_patterns == DEFAULT_UNSAFE_PATTERNS
    assert sum(q.weights.normalised().values()) == pytest.approx(1.0)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLFLOW_QUALITY__MIN_SCORE", "0.8")
    monkeypatch.setenv("STILLFLOW_QUALITY__WEIGHTS__CORRECTNESS", "3")
    monkeypatch.setenv("STILLFLOW_QUALITY__STEP_BUDGET_FACTOR", "3")
    monkeypatch.setenv("STILLFLOW_QUALITY__UNSAFE_PATTERNS", '["\\\\bformat c:"]')
    for s in (StillflowSettings(), StreamsSettings()):
        assert s.quality.min_score == 0.8 and s.quality.weights.correctness == 3
        assert s.quality.step_budget_factor == 3
        assert s.quality.unsafe_patterns == (r"\bformat c:",)


def test_validation_and_frozen() -> None:
    with pytest.raises(ValidationError):
        QualitySettings(unsafe_patterns=("(unclosed",))
    with pytest.raises(ValidationError):
        QualitySettings(min_score=1.5)
    with pytest.raises(ValidationError):
        QualitySettings(step_budget_factor=0)
    with pytest.raises(ValidationError):
        QualitySettings(min_scor=0.5)  # type: ignore[call-arg]  # extra=forbid
    with pytest.raises(ValidationError):
        ScoreWeights(correctness=0, efficiency=0, tool_selection=0, safety=0, reasoning_quality=0)
    with pytest.raises(ValidationError):
        ScoreWeights(correctness=-1)
    q = QualitySettings()
    with pytest.raises(ValidationError):
        q.min_score = 0.1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        StillflowSettings().quality = q  # type: ignore[misc]


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def test_the_settings_import_does_not_load_the_scorer() -> None:
    # stillflow.settings imports stillflow.quality.settings (and so the package): scoring and its
    # jsonschema dependency load only when used.
    for statement in ("import stillflow.settings", "import stillflow.sdk", "import stillflow.quality"):
        loaded = _modules_after(statement)
        assert "jsonschema" not in loaded and "stillflow.quality.scoring" not in loaded, statement


def test_the_package_re_exports_the_public_api() -> None:
    import stillflow.quality as q
    from stillflow.quality import gates, scoring

    assert q.Scorer is scoring.Scorer and q.Assessment is scoring.Assessment
    assert q.ReasoningScorer is scoring.ReasoningScorer and q.HeuristicReasoningScorer is scoring.HeuristicReasoningScorer
    assert q.TraceFilter is gates.TraceFilter and q.GateConfig is gates.GateConfig and q.Verdict is gates.Verdict
    assert q.evaluate_gates is gates.evaluate_gates and q.to_scored_trace is gates.to_scored_trace
    assert q.GATE_NAMES == (q.SUCCESS, q.GROUND_TRUTH, q.STEP_BUDGET, q.TOOL_VALIDITY, q.SAFETY, q.MIN_SCORE)
    assert q.QualitySettings is QualitySettings and q.ScoreWeights is ScoreWeights
    assert q.DEFAULT_UNSAFE_PATTERNS is DEFAULT_UNSAFE_PATTERNS
    for name in q.__all__:
        assert getattr(q, name) is not None, name
    assert set(q.__all__) <= set(dir(q))
    with pytest.raises(AttributeError):
        q.no_such_name  # noqa: B018
