"""The agent SDK: publish traces from your agents. Light on purpose: aiokafka and pydantic only.

    from stillflow.sdk import TraceEmitter, TraceCollector
"""

from stillflow.contracts import AgentTrace, ContractError, ToolSpec, TraceOutcomeEvent, TraceStep, TraceStepEvent
from stillflow.dlq import DeadLetterSink, Delivered, TypedConsumer, decode_or_letter
from stillflow.sdk.collector import TraceCollector, step_from_result
from stillflow.sdk.emitter import BackpressureTimeout, EmitError, SyncTraceEmitter, TraceEmitter
from stillflow.settings import StillflowSettings

__all__ = [
    "AgentTrace",
    "BackpressureTimeout",
    "ContractError",
    "DeadLetterSink",
    "Delivered",
    "EmitError",
    "StillflowSettings",
    "SyncTraceEmitter",
    "ToolSpec",
    "TraceCollector",
    "TraceEmitter",
    "TraceOutcomeEvent",
    "TraceStep",
    "TraceStepEvent",
    "TypedConsumer",
    "decode_or_letter",
    "step_from_result",
]
