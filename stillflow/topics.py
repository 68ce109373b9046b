"""The topic catalogue: for each topic its key, value model, partitions and configs.

Names come from `TopicNames` (settings), so a deployment or a test can rename every topic at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from stillflow import contracts as c
from stillflow.settings import TopicNames

__all__ = ["TopicSpec", "catalogue", "spec_for", "model_for"]

_WEEK_MS = str(7 * 24 * 3600 * 1000)


@dataclass(frozen=True)
class TopicSpec:
    role: str  # the field of TopicNames
    name: str
    key: str  # what the record key holds
    value: type[BaseModel] | None  # None: not our JSON events (see `encoding`)
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    encoding: str = "json"  # or "otlp_proto": OTLP TracesData / LogsData, as the Collector's Kafka exporter writes


# role -> (key, value model or None for OTLP protobuf, partitions or None for the default, configs)
_ROLES: dict[str, tuple[str, type[BaseModel] | None, int | None, dict[str, str]]] = {
    "trace_steps": ("trace_id", c.TraceStepEvent, None, {"retention.ms": _WEEK_MS}),
    "trace_outcomes": ("trace_id", c.TraceOutcomeEvent, None, {"retention.ms": _WEEK_MS}),
    "traces_scored": ("task_id", c.ScoredTrace, None, {"retention.ms": _WEEK_MS}),
    # Dataset topics are the training data of record: kept until deleted by an operator.
    "dataset_sft": ("example_id", c.SFTExample, None, {"retention.ms": "-1"}),
    "dataset_dpo": ("pair_id", c.PreferencePair, None, {"retention.ms": "-1"}),
    "dataset_windows": ("window_id", c.DatasetWindowClosed, 1, {"retention.ms": "-1"}),
    "training_runs": ("run_id", c.TrainingRunEvent, 1, {"retention.ms": "-1"}),
    # One partition: version transitions of a model must be seen in order by every router.
    "model_versions": ("model_name", c.ModelVersionEvent, 1, {"retention.ms": "-1"}),
    "router_decisions": ("trace_id", c.RouteDecision, None, {"retention.ms": _WEEK_MS}),
    "dlq": ("original key", c.DeadLetter, 1, {"retention.ms": "-1"}),
    # the raw spans are kept as long as the trace topics, so that a later release can read them again as the
    # GenAI conventions keep changing
    "otlp_spans": ("hex trace id", None, None, {"retention.ms": _WEEK_MS}),
    "otlp_logs": ("hex trace id", None, None, {"retention.ms": _WEEK_MS}),
    # outcomes of OTel traces: keyed by the hex trace id, or by the task id (metadata stillflow_join=task)
    "otlp_outcomes": ("hex trace id or task_id", c.TraceOutcomeEvent, None, {"retention.ms": _WEEK_MS}),
}


def catalogue(names: TopicNames | None = None, default_partitions: int = 3) -> list[TopicSpec]:
    names = names or TopicNames()
    out = []
    for role, (key, model, parts, configs) in _ROLES.items():
        out.append(
            TopicSpec(
                role=role,
                name=getattr(names, role),
                key=key,
                value=model,
                partitions=parts or default_partitions,
                configs=dict(configs),
                encoding="json" if model is not None else "otlp_proto",
            )
        )
    return out


def spec_for(topic: str, names: TopicNames | None = None) -> TopicSpec:
    for spec in catalogue(names):
        if spec.name == topic:
            return spec
    known = ", ".join(s.name for s in catalogue(names))
    raise KeyError(f"unknown topic {topic!r}; the catalogue has: {known}")


def model_for(topic: str, names: TopicNames | None = None) -> type[BaseModel]:
    spec = spec_for(topic, names)
    if spec.value is None:
        raise KeyError(f"topic {topic!r} holds OTLP protobuf ({spec.encoding}: OpenTelemetry TracesData/LogsData), "
                       "not stillflow's JSON events")
    return spec.value
