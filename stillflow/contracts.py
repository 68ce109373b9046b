"""Event contracts: the one module that defines every shape that crosses a topic.

Exports the pydantic v2 models named in DESIGN.md, the JSON codec (`encode`, `decode`) and
`ContractError`, the single error a consumer has to catch to dead-letter a record.

Limits (largest step content, largest event, longest id) are process-wide and settable with `set_limits`,
because they must hold both where events are built (the SDK) and where they are read (every consumer).

What a trace may hold (schema version 2):
- ids (task, agent, trace, tool-call, example, pair, event): any printable text — no control or format
  characters, no surrounding whitespace — of 1 to `Limits.max_id_chars` characters (`/`, `@`, `#`, `=`,
  `+`, `|` and non-ASCII letters are ordinary); a whole number is taken as its decimal text. Model names,
  versions, run ids and window ids stay `NAME_PATTERN` (they name files and directories);
- `tool_result`: any JSON value, kept as JSON; `render_tool_result` gives the observation text the agent saw
  (a string is itself, anything else compact JSON) — what the student reads, what the content limit counts;
- `tool_args`: a JSON object (or its JSON text, as OpenAI's `arguments` are);
- `null` for an optional field means absent (the field's default), in every event;
- `metadata` values: strings; any other JSON value becomes its compact JSON text, `null` drops the key.
Version 1 events (ids of the narrow pattern, string results) decode unchanged.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Json,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "SCHEMA_VERSION",
    "MAX_NESTING",
    "TOOL_NAME_PATTERN",
    "NAME_PATTERN",
    "Id",
    "id_problem",
    "is_valid_id",
    "render_tool_result",
    "Limits",
    "get_limits",
    "set_limits",
    "ContractError",
    "StepType",
    "TraceStep",
    "ToolSpec",
    "AgentTrace",
    "Event",
    "TraceStepEvent",
    "TraceOutcomeEvent",
    "TrajectoryScore",
    "ScoredTrace",
    "SFTExample",
    "PreferencePair",
    "OffsetRange",
    "DatasetWindowClosed",
    "TrainingRunEvent",
    "ModelVersionEvent",
    "RouteDecision",
    "DeadLetter",
    "encode",
    "decode",
    "utcnow",
    "new_id",
]

# 2: ids are any bounded printable text, tool results any JSON value, null means absent (1 still decodes).
SCHEMA_VERSION = 2
# Tool names as OpenAI accepts them (letters, digits, _ and -), plus '.' for namespaced tools.
TOOL_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$"
# Names that become file and directory names (model names, versions, run ids) and window ids.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"


@dataclass(frozen=True)
class Limits:
    """Size limits enforced on every event, built or decoded."""

    max_step_content_chars: int = 65_536
    max_event_bytes: int = 1_048_576
    max_id_chars: int = 256


_limits = Limits()


def get_limits() -> Limits:
    return _limits


def set_limits(limits: Limits) -> None:
    """Replace the process-wide limits (services call this from their settings at start)."""
    global _limits
    if limits.max_step_content_chars <= 0 or limits.max_event_bytes <= 0 or limits.max_id_chars <= 0:
        raise ValueError("limits must be positive")
    _limits = limits


class ContractError(ValueError):
    """An event that cannot be accepted. `kind` is a short, bounded label (used in metrics and DLQ)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A random UUID4 as 32 hex digits (the same as uuid4().hex, at a third of the cost: hot path)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return b.hex()


# Event times a consumer can do arithmetic on: Kafka record timestamps are milliseconds since the
# epoch (negative ones are refused), and windows add their size to a start without overflowing.
MIN_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_EVENT_TIME = datetime(9000, 1, 1, tzinfo=UTC)


def _aware(ts: datetime) -> datetime:
    # Naive datetimes are taken as UTC so that event times compare and serialise one way.
    ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    try:
        in_range = MIN_EVENT_TIME <= ts < MAX_EVENT_TIME
    except OverflowError:  # an offset that takes it past datetime's range
        in_range = False
    if not in_range:
        raise ValueError(f"timestamp must be from {MIN_EVENT_TIME.year} to {MAX_EVENT_TIME.year - 1}")
    return ts


def _null_errors(err: ValidationError) -> list[tuple[int | str, ...]]:
    """The locations where a null was refused for a field (not a list item): "null means absent" there."""
    out = []
    for e in err.errors():
        loc = e["loc"]
        if (e.get("input", ...) is None and e["type"] not in ("missing", "extra_forbidden") and loc
                and isinstance(loc[-1], str)):
            out.append(loc)
    return out


def _drop_nulls(data: Any, locs: list[tuple[int | str, ...]]) -> bool:
    """Delete the nulls at `locs` from `data` (nested dicts and lists, copied on the way); True if any went."""
    dropped = False
    for loc in locs:
        node = data
        for part in loc[:-1]:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        if isinstance(node, dict) and node.get(loc[-1], ...) is None:
            del node[loc[-1]]
            dropped = True
    return dropped


def _copy_json(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _copy_json(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy_json(v) for v in data]
    return data


class _Model(BaseModel):
    """Every contract model. A null sent for a field that has a default means "absent": such a record is
    validated again without those nulls. The retry runs only after validation failed, so records that
    hold no such null keep pydantic's validation in Rust (a before-validator on every model made trace
    validation ~1.7x slower: pydantic builds Python objects for it)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            locs = _null_errors(err)
            data = _copy_json(data)
            if not locs or not _drop_nulls(data, locs):
                raise
            super().__init__(**data)

    # pydantic validates a nested model through a custom __init__ in Python (~40 µs more per trace with
    # four tools); this one only adds the retry, so nested validation may stay in Rust (pydantic reads
    # this flag when it builds each class; tests/test_contracts.py checks it is honoured)
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, **kw: Any) -> Any:  # type: ignore[override]
        try:
            return super().model_validate(obj, **kw)
        except ValidationError as err:
            locs = _null_errors(err)
            obj = _copy_json(obj)
            if not locs or not _drop_nulls(obj, locs):
                raise
            return super().model_validate(obj, **kw)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kw: Any) -> Any:  # type: ignore[override]
        try:
            return super().model_validate_json(json_data, **kw)
        except ValidationError as err:
            locs = _null_errors(err)
            if not locs:
                raise
            try:
                obj = json.loads(json_data)
            except ValueError:
                raise err from None
            if not _drop_nulls(obj, locs):
                raise
            return super().model_validate(obj, **kw)


def id_problem(value: object) -> str | None:
    """Why `value` is not a valid id (None when it is one): see the module doc."""
    if not isinstance(value, str):
        return f"must be text, not {type(value).__name__}"
    limit = _limits.max_id_chars
    if not value:
        return "must not be empty"
    if len(value) > limit:
        return f"has {len(value)} characters, the limit is {limit}"
    if not value.isprintable():
        bad = next(ch for ch in value if not ch.isprintable())
        return f"holds a control or non-printable character (U+{ord(bad):04X})"
    if value[0].isspace() or value[-1].isspace():
        return "must not start or end with whitespace"
    return None


def is_valid_id(value: object) -> bool:
    """True when `value` may be an id (task, agent, trace, tool-call, example, ...)."""
    return id_problem(value) is None


def _id_before(value: Any) -> Any:
    # real exports hold numeric ids (task 17): their decimal text is the id; a bool is no id
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _id_after(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(f"an id {problem}")
    return value


# The id type of every event: printable text, bounded by `Limits.max_id_chars`, safe as a Kafka key.
Id = Annotated[str, BeforeValidator(_id_before), AfterValidator(_id_after)]


def render_tool_result(value: JsonValue) -> str:
    """The observation text of a tool result as the agent saw it: a string is itself, any other JSON value
    its compact JSON (keys in their order, non-ASCII kept). Deterministic: the student, the scorer, the
    redactor and the content limit all see this text."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _metadata_before(value: Any) -> Any:
    # labels are text: other JSON values become their compact JSON text, a null label is absent
    if isinstance(value, dict) and not all(type(v) is str for v in value.values()):
        return {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
                for k, v in value.items() if v is not None}
    return value


Metadata = Annotated[dict[str, str], BeforeValidator(_metadata_before)]


class StepType(str, Enum):
    reasoning = "reasoning"
    tool_call = "tool_call"
    observation = "observation"
    output = "output"


class TraceStep(_Model):
    """One step of an agent's execution (the seed's shape)."""

    step_type: StepType
    content: str = ""
    tool_name: str | None = Field(default=None, pattern=TOOL_NAME_PATTERN)
    tool_args: dict[str, Any] | Json[dict[str, Any]] | None = None  # OpenAI's arguments are JSON text
    tool_result: JsonValue = None  # any JSON value; None: no result recorded (see `observation_text`)
    tool_call_id: Id | None = None
    timestamp: datetime = Field(default_factory=utcnow)

    @field_validator("content")
    @classmethod
    def _bounded(cls, v: str, info: ValidationInfo) -> str:
        limit = _limits.max_step_content_chars
        if len(v) > limit:
            raise ValueError(f"{info.field_name} has {len(v)} characters, the limit is {limit}")
        return v

    @field_validator("tool_result")
    @classmethod
    def _bounded_result(cls, v: JsonValue) -> JsonValue:
        if v is None:
            return v
        limit = _limits.max_step_content_chars
        # a string's own length; other values as rendered (the text the student would read)
        n = len(v) if isinstance(v, str) else len(render_tool_result(v))
        if n > limit:
            raise ValueError(f"tool_result has {n} characters as rendered, the limit is {limit}")
        return v

    @field_validator("timestamp")
    @classmethod
    def _tz(cls, v: datetime) -> datetime:
        return _aware(v)

    @model_validator(mode="after")
    def _tool_call_named(self) -> TraceStep:
        if self.step_type is StepType.tool_call and not self.tool_name:
            raise ValueError("a tool_call step needs tool_name")
        return self

    def observation_text(self) -> str:
        """What the agent read back from this step's tool: the rendered `tool_result`, else the step's
        `content`; `null` when it has neither (a tool that returned nothing)."""
        if self.tool_result is not None:
            return render_tool_result(self.tool_result)
        return self.content if self.content else "null"


class ToolSpec(_Model):
    """A tool the agent may call: name, description and JSON schema of its arguments."""

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class AgentTrace(_Model):
    """A whole trajectory: the seed's fields plus what scoring and formatting need."""

    trace_id: Id = Field(default_factory=new_id)
    task_id: Id
    agent_id: Id = "agent"
    input_text: str
    system_prompt: str = ""
    tools: list[ToolSpec] = Field(default_factory=list)
    steps: list[TraceStep] = Field(default_factory=list)
    final_output: str = ""
    success: bool = False
    error: str | None = None
    quality_score: float | None = None
    model_id: str = "unknown"
    total_tokens: int = Field(default=0, ge=0)
    wall_time_seconds: float = Field(default=0.0, ge=0)
    ground_truth: str | None = None
    expected_steps: int | None = Field(default=None, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    # The agents' job this trace belongs to (absent: `stillflow.workloads.resolve_workload` names it from the
    # agent id); the trainer evaluates, gates and the router routes per workload.
    workload: Id | None = None
    # Free-form string labels (task family, split, the sim's injected error mode, ...).
    metadata: Metadata = Field(default_factory=dict)
    timestamp: datetime = Field(default_factory=utcnow)

    @field_validator("timestamp")
    @classmethod
    def _tz(cls, v: datetime) -> datetime:
        return _aware(v)


class Event(_Model):
    """Common envelope: every event has an id, a schema version and an event time."""

    event_id: Id = Field(default_factory=new_id)
    schema_version: int = SCHEMA_VERSION
    timestamp: datetime = Field(default_factory=utcnow)

    @field_validator("timestamp")
    @classmethod
    def _tz(cls, v: datetime) -> datetime:
        return _aware(v)

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, v: int) -> int:
        if v < 1 or v > SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is not supported (this build reads 1..{SCHEMA_VERSION})")
        return v


class TraceStepEvent(Event):
    """One step, published live while the agent works. `seq` is the step's 0-based position."""

    trace_id: Id
    task_id: Id
    agent_id: Id = "agent"
    seq: int = Field(ge=0)
    step: TraceStep
    workload: Id | None = None  # informative: the trace's workload is its outcome's


class TraceOutcomeEvent(Event):
    """The end of a trace: everything but the steps, and `n_steps` so the assembler knows when it is whole.

    `steps` may carry the steps themselves for agents that buffered them (one event per trace).
    """

    trace_id: Id
    task_id: Id
    agent_id: Id = "agent"
    n_steps: int = Field(ge=0)
    input_text: str
    system_prompt: str = ""
    tools: list[ToolSpec] = Field(default_factory=list)
    final_output: str = ""
    success: bool = False
    error: str | None = None
    quality_score: float | None = None
    model_id: str = "unknown"
    total_tokens: int = Field(default=0, ge=0)
    wall_time_seconds: float = Field(default=0.0, ge=0)
    ground_truth: str | None = None
    expected_steps: int | None = Field(default=None, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    workload: Id | None = None
    metadata: Metadata = Field(default_factory=dict)
    steps: list[TraceStep] | None = None

    @model_validator(mode="after")
    def _steps_match(self) -> TraceOutcomeEvent:
        if self.steps is not None and len(self.steps) != self.n_steps:
            raise ValueError(f"n_steps is {self.n_steps} but {len(self.steps)} steps are attached")
        return self

    @classmethod
    def from_trace(cls, trace: AgentTrace, *, include_steps: bool = False, **kw: Any) -> TraceOutcomeEvent:
        data = trace.model_dump(exclude={"steps", "timestamp"})
        return cls(
            **data,
            n_steps=len(trace.steps),
            steps=list(trace.steps) if include_steps else None,
            timestamp=trace.timestamp,
            **kw,
        )

    def to_trace(self, steps: list[TraceStep]) -> AgentTrace:
        """The whole trace. Built without validating again: every field comes from this event, which was
        validated under the same constraints, and `steps` must be `TraceStep` models (validated; they are
        not checked again here). The assembler calls this once per trace; validating took ~25 µs of the
        ~35 µs a trace's assembly costs. Tools and their schemas are shared with the event, not copied."""
        data = {name: getattr(self, name) for name in _TRACE_FIELDS}
        return AgentTrace.model_construct(**data, tools=list(self.tools), metadata=dict(self.metadata),
                                          steps=list(steps))


# what an outcome hands on to its trace (tools and metadata are copied, steps come from the assembler)
_TRACE_FIELDS = tuple(sorted(set(AgentTrace.model_fields) & set(TraceOutcomeEvent.model_fields)
                             - {"tools", "metadata", "steps"}))


class TrajectoryScore(_Model):
    """The seed's score dimensions, each in [0, 1], and their weighted overall."""

    correctness: float = Field(ge=0, le=1)
    efficiency: float = Field(ge=0, le=1)
    tool_selection: float = Field(ge=0, le=1)
    safety: float = Field(ge=0, le=1)
    reasoning_quality: float = Field(ge=0, le=1)
    overall: float = Field(ge=0, le=1)


class ScoredTrace(Event):
    """A whole trace with its score and the gate verdict (`rejected_by` names every failed gate)."""

    trace: AgentTrace
    score: TrajectoryScore
    passed: bool
    rejected_by: list[str] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)


class SFTExample(Event):
    """One training conversation in OpenAI/trl messages format (tool_calls arguments as JSON strings)."""

    example_id: Id
    trace_id: Id
    task_id: Id
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    score: float = Field(ge=0, le=1)
    model_id: str = "unknown"
    workload: Id | None = None
    window_start: datetime | None = None
    metadata: Metadata = Field(default_factory=dict)


class PreferencePair(Event):
    """A DPO pair in trl's conversational format: shared prefix in `prompt`, the two continuations."""

    pair_id: Id
    task_id: Id
    chosen_trace_id: Id
    rejected_trace_id: Id
    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    chosen_score: float = Field(ge=0, le=1)
    rejected_score: float = Field(ge=0, le=1)
    workload: Id | None = None
    window_start: datetime | None = None
    metadata: Metadata = Field(default_factory=dict)


class OffsetRange(_Model):
    topic: str
    partition: int = Field(ge=0)
    first: int = Field(ge=0)
    last: int = Field(ge=0)


class DatasetWindowClosed(Event):
    window_id: str = Field(pattern=NAME_PATTERN)
    window_start: datetime
    window_end: datetime
    n_traces: int = Field(default=0, ge=0)
    n_passed: int = Field(default=0, ge=0)
    n_sft: int = Field(default=0, ge=0)
    n_pairs: int = Field(default=0, ge=0)
    offsets: list[OffsetRange] = Field(default_factory=list)
    # SFT examples per workload in this window (the trainer's retrain counts new examples per workload)
    sft_by_workload: dict[str, int] = Field(default_factory=dict)


class TrainingRunEvent(Event):
    run_id: str = Field(pattern=NAME_PATTERN)
    status: Literal["requested", "started", "finished", "failed"]
    model_name: str = Field(pattern=NAME_PATTERN)
    n_new_examples: int = Field(default=0, ge=0)
    watermark: str | None = None
    version: str | None = None
    error: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    retry_of: str | None = Field(default=None, pattern=NAME_PATTERN)  # the interrupted run this one re-runs


class ModelVersionEvent(Event):
    model_name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=NAME_PATTERN)
    status: Literal["candidate", "promoted", "rejected", "rolled_back"]
    path: str | None = None
    manifest_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    previous_version: str | None = None
    confidence_threshold: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)
    # promoted: the workloads this version serves, each with its calibrated confidence threshold (the
    # router serves no other workload with it). Empty on a promoted event of a version gated before
    # workloads existed: it then serves every workload at `confidence_threshold`.
    workloads: dict[str, float] = Field(default_factory=dict)
    # the gate's verdict per workload: "promoted" or "rejected" (every workload evaluated)
    workload_verdicts: dict[str, str] = Field(default_factory=dict)


class RouteDecision(Event):
    """How the router served one request. `reason` says why the server was chosen: the student was
    confident, or below its threshold, or the trace was escalated before (`sticky`), or no student is
    loaded, shadow mode, the student failed (`student_error`), wrote output that is not a valid turn
    (`invalid_output`: unreadable, cut off, a tool the request does not offer) or was saturated
    (`student_busy`), or the live version was not promoted for the request's workload
    (`workload_not_served`). `served_by` is "none" (and `error` says why) when nobody could answer."""

    trace_id: Id
    request_id: Id
    served_by: str  # a model version, "teacher", or "none" (the request failed: see `error`)
    student_version: str | None = None
    confidence: float | None = None
    threshold: float | None = None
    reason: Literal[
        "confident", "below_threshold", "sticky", "no_student", "shadow", "canary_skip", "student_error",
        "invalid_output", "student_busy", "workload_not_served",
    ]
    workload: str | None = None
    shadow: bool = False
    latency_seconds: float = Field(default=0.0, ge=0)
    canary: bool = False  # the student consulted was the canary (candidate) version
    would_serve: str | None = None  # shadow mode: who would have served without shadow
    agrees: bool | None = None  # shadow mode: the student's turn has the teacher's tool calls (or both answer)
    error: str | None = None


class DeadLetter(Event):
    """A record that could not be processed: the raw bytes (base64), where it came from, and why."""

    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key_b64: str | None = None
    raw_b64: str
    raw_size: int = Field(ge=0)
    reason: str
    kind: str
    service: str = "unknown"


E = TypeVar("E", bound=BaseModel)


def encode(event: BaseModel) -> bytes:
    """Serialise an event to compact JSON bytes; refuses events over the size limit."""
    raw = event.model_dump_json().encode()
    limit = _limits.max_event_bytes
    if len(raw) > limit:
        raise ContractError("oversize", f"{type(event).__name__} is {len(raw)} bytes, the limit is {limit}")
    return raw


@cache
def _field_names() -> frozenset[str]:
    return frozenset(name for obj in list(globals().values())
                     if isinstance(obj, type) and issubclass(obj, _Model) for name in obj.model_fields)


def _loc_part(part: object) -> str:
    # A location may hold the record's own keys (an unknown field, a metadata key), and a record's keys
    # can be anything, secrets included: reasons are logged and kept, so only field names are echoed.
    return str(part) if isinstance(part, int) or part in _field_names() else "<key>"


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(_loc_part(p) for p in e["loc"]) or "<root>"
        parts.append(f"{loc}: {e['msg']}")
    more = err.error_count() - 5
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


# Nesting allowed in one record. pydantic refuses to serialise beyond ~255 levels, and a consumer wraps
# what it decodes (a step's tool_args end up several levels deeper inside a ScoredTrace), so a record
# that decodes must stay well below that or its consumer could not write what it derives from it.
MAX_NESTING = 64
# A UTF-16 surrogate, escaped (\\uD800-\\uDFFF) or UTF-8-encoded (ED A0..BF, which json.loads lets
# through): a lone one becomes a str that cannot be encoded as UTF-8 again. Searched on the raw bytes
# so that only such records pay for the full check.
_SURROGATE = re.compile(rb"\\[uU][dD][89abcdefABCDEF]|\xed[\xa0-\xbf]")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _nonfinite(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _depth(obj: Any) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            if d > deepest:
                deepest = d
                if d > MAX_NESTING:
                    return d
            stack.extend((child, d + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def decode(raw: bytes | str, model: type[E]) -> E:
    """Parse and validate one record. Raises `ContractError` with kind oversize|invalid_json|schema.

    What decodes can be encoded again: NaN/Infinity (and numbers that overflow to it), lone surrogate
    escapes and nesting deeper than `MAX_NESTING` are refused here rather than failing a consumer later.
    """
    data = raw.encode(errors="surrogatepass") if isinstance(raw, str) else raw
    limit = _limits.max_event_bytes
    if len(data) > limit:
        raise ContractError("oversize", f"record is {len(data)} bytes, the limit is {limit}")
    try:
        obj = json.loads(data, parse_float=_finite, parse_constant=_nonfinite)
    except RecursionError:
        raise ContractError("invalid_json", "not JSON: nesting too deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ints over Python's digit limit, ...
        raise ContractError("invalid_json", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ContractError("schema", f"expected a JSON object for {model.__name__}, got {type(obj).__name__}")
    if (data.count(b"{") + data.count(b"[") > MAX_NESTING) and _depth(obj) > MAX_NESTING:
        raise ContractError("schema", f"{model.__name__}: nested deeper than {MAX_NESTING} levels")
    # the substring tests first: they are ~10x cheaper than the search, and most records have neither
    if (b"\\u" in data or b"\\U" in data or b"\xed" in data) and _SURROGATE.search(data) is not None:
        try:
            json.dumps(obj, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ContractError("invalid_json", "a lone UTF-16 surrogate is not Unicode text") from None
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ContractError("schema", f"{model.__name__}: {_describe(exc)}") from None
    except RecursionError:
        raise ContractError("schema", f"{model.__name__}: nesting too deep") from None
