"""Workload naming, the bounded metric label and the Wilson interval (pure)."""

from __future__ import annotations

import pytest

from stillflow.workloads import OTHER, WorkloadLabels, resolve_workload, wilson_interval


def test_resolve_workload_names_the_default_from_the_agent_id() -> None:
    assert resolve_workload("billing", "agent-1") == "billing"
    assert resolve_workload(None, "agent-1") == "agent-1"
    assert resolve_workload("", "agent-1") == "agent-1"  # an invalid name: the default
    assert resolve_workload(None, "agent-1", "job:{agent_id}") == "job:agent-1"
    assert resolve_workload(None, "agent-1", "support") == "support"
    assert resolve_workload(None, "a", "{nope}") == "{nope}"  # an unknown field is kept as text
    assert resolve_workload(None, "a", " ") == "default"


def test_labels_keep_the_busiest_by_name_and_the_rest_other() -> None:
    labels = WorkloadLabels(2)
    assert [labels.label(w) for w in ("a", "a", "a", "b", "c")] == ["a", "a", "a", "b", OTHER]
    for _ in range(3):
        labels.label("c")  # c is now busier than b (4 vs 1): it takes b's name
    assert labels.label("c") == "c" and labels.label("b") == OTHER
    assert labels.named() == ["a", "c"]


def test_pinned_labels_stay_named() -> None:
    labels = WorkloadLabels(1)
    labels.pin({"served"})
    assert labels.label("x") == "x" and labels.label("served") == "served"
    for _ in range(5):
        labels.label("y")
    assert labels.label("served") == "served" and labels.named() == ["served", "y"]


def test_label_memory_is_bounded() -> None:
    labels = WorkloadLabels(1, track=10)
    for i in range(1000):
        labels.label(f"w{i}")
    assert len(labels._others) <= 11


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(40, 40)  # type: ignore[misc]
    assert round(lo, 4) == 0.9124 and hi == 1.0
    lo, hi = wilson_interval(0, 24)  # type: ignore[misc]
    assert lo == 0.0 and round(hi, 3) == 0.138
    lo, hi = wilson_interval(1, 24)  # type: ignore[misc]
    assert round(lo, 3) == 0.007 and round(hi, 3) == 0.202
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
