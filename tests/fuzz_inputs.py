"""Hypothesis strategies for fuzzing decoders and the stream: valid events, and bad records of every sort.

`valid_step` / `valid_outcome` build contract-valid event dicts (with awkward but legal Unicode, ids of
real agents up to the length bound, any JSON value as a tool result, and nulls for optional fields);
`bad_record(base)` turns a valid encoded event into a record that must be dead-lettered (arbitrary
bytes, truncated JSON, wrong types, huge strings, deep nesting, invalid Unicode, NaN, ...), and
`any_record(base)` mixes those with mutations that may or may not stay valid. `draw_batch` draws a
reproducible batch from a strategy outside a @given test (the stream test publishes it).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stillflow.contracts import Limits, get_limits, set_limits

__all__ = [
    "KINDS",
    "NASTY",
    "valid_step",
    "valid_outcome",
    "json_values",
    "bad_record",
    "any_record",
    "draw_batch",
    "FUZZ",
]

# every kind a decoder may put on a ContractError / dead letter
KINDS = {"invalid_json", "schema", "oversize", "empty"}

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

# Legal but awkward text: NUL and control chars, RTL override, zero-width joiners, emoji (astral),
# combining marks, line/paragraph separators, a BOM, JSON metacharacters.
AWKWARD = ["\x00", "\x1f", "\u202e", "\u200d", "\U0001F600", "\U0001F469\u200d\U0001F4BB", "e\u0301",
           "\u2028", "\u2029", "\ufeff", '"', "\\", "\n", "\uffff", "\U0010FFFF", "</script>", "{}[]"]

# Ids: any printable text without surrounding whitespace, up to FUZZ_LIMITS.max_id_chars (set below):
# narrow ones, namespaced ones, provider tool-call ids, and unicode ones exactly at the bound.
ID_BOUND = 64
_id_chars = st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
_id_inner = st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")).filter(
    lambda ch: ch == " " or not ch.isspace())
ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,20}", fullmatch=True),
    st.builds(lambda a, mid, b: a + mid + b, _id_chars, st.text(_id_inner, max_size=20), _id_chars)
    .filter(lambda s: s.isprintable()),
    st.sampled_from(["suite/area/user_task_0", "agent@team#7", "a=b+c|d", "tâche/été/№5", "用户任务/3",
                     "call_9fGh2KxL0pQ", "toolu_01A09q90qw90lq917835lq9", "0b9e6f2c-3c5e-4f1e-9a4b-2d8c1f7e6a50",
                     "7", "x" * ID_BOUND, "é" * ID_BOUND, "\U0001F600" * ID_BOUND, "a" * (ID_BOUND - 1) + "\U00010348"]),
)
# a field left absent by sending null
def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


tool_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,15}", fullmatch=True)
text = st.one_of(
    st.text(max_size=60),  # hypothesis' text never holds lone surrogates
    st.lists(st.sampled_from(AWKWARD), max_size=8).map("".join),
)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), finite, text)
json_values = st.recursive(
    json_leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(text, kids, max_size=4)),
    max_leaves=12,
)
# tool schemas: sensible, arbitrary, self-referencing, unresolvable
schemas = st.one_of(
    st.just({"type": "object", "properties": {}}),
    st.dictionaries(text, json_values, max_size=3),
    st.sampled_from([{"$ref": "#"}, {"$ref": "http://example.invalid/s.json"}, {"$schema": "nonsense"},
                     {"type": "nonsense"}, {"type": "object", "properties": {"a": {"pattern": "(("}}},
                     {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}]),
)
timestamps = st.one_of(
    st.integers(0, 10**6).map(lambda ms: (EPOCH + timedelta(milliseconds=ms)).isoformat()),
    st.sampled_from(["1970-01-01T00:00:00Z", "8999-12-31T23:59:59.999999Z", "2026-01-01T00:00:00+14:00",
                     "2026-01-01T00:00:00-12:00", "2026-01-01T00:00:00"]),  # the range's edges, offsets, naive
)


@st.composite
def valid_trace_step(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["reasoning", "tool_call", "observation", "output"]))
    step: dict[str, Any] = {"step_type": kind, "content": draw(text), "timestamp": draw(timestamps)}
    if kind == "tool_call" or draw(st.booleans()):
        step["tool_name"] = draw(tool_names)
    if kind == "tool_call":
        args = draw(st.dictionaries(text, json_values, max_size=4))
        step["tool_args"] = json.dumps(args) if draw(st.booleans()) else args  # OpenAI's arguments are text
        step["tool_call_id"] = draw(nullable(ids))
    if kind == "observation":
        # any JSON value, nested ones included; null: no result recorded
        step["tool_result"] = draw(st.one_of(text, json_values))
        if draw(st.booleans()):
            step["tool_call_id"] = draw(nullable(ids))
    # (not the timestamp: a null one is "now", different at each decode)
    for optional in ("content", "tool_name", "tool_args", "tool_result", "tool_call_id"):
        if optional in step and kind != "tool_call" and draw(st.integers(0, 9)) == 0:
            step[optional] = None
    return step


@st.composite
def valid_step(draw: Any, trace_id: str | None = None, seq: int | None = None) -> dict[str, Any]:
    return {
        "event_id": draw(ids), "schema_version": draw(st.sampled_from([1, 2])), "timestamp": draw(timestamps),
        "trace_id": trace_id or draw(ids), "task_id": draw(ids), "agent_id": draw(nullable(ids)),
        "seq": seq if seq is not None else draw(st.integers(0, 50)), "step": draw(valid_trace_step()),
    }


@st.composite
def valid_outcome(draw: Any, trace_id: str | None = None, inline: bool | None = None) -> dict[str, Any]:
    inline = draw(st.booleans()) if inline is None else inline
    steps = draw(st.lists(valid_trace_step(), max_size=4)) if inline else None
    out: dict[str, Any] = {
        "event_id": draw(ids), "schema_version": draw(st.sampled_from([1, 2])), "timestamp": draw(timestamps),
        "trace_id": trace_id or draw(ids), "task_id": draw(ids), "agent_id": draw(nullable(ids)),
        "n_steps": len(steps) if steps is not None else draw(st.integers(0, 20)),
        "input_text": draw(text), "final_output": draw(nullable(text)), "success": draw(nullable(st.booleans())),
        "quality_score": draw(st.none() | st.floats(0, 1)), "total_tokens": draw(nullable(st.integers(0, 10**9))),
        "wall_time_seconds": draw(nullable(st.floats(0, 1e6))), "cost_usd": draw(nullable(st.floats(0, 1e3))),
        "system_prompt": draw(nullable(text)), "error": draw(nullable(text)), "ground_truth": draw(nullable(text)),
        "expected_steps": draw(nullable(st.integers(0, 50))), "model_id": draw(nullable(text)),
        # labels: text, or any JSON value (kept as its JSON text; a null label is absent)
        "metadata": draw(nullable(st.dictionaries(text, st.one_of(text, json_values), max_size=3))),
        "tools": [{"name": name, "parameters": draw(schemas), "description": draw(nullable(text))}
                  for name in draw(st.lists(tool_names, max_size=2))],
    }
    if steps is not None:
        for step in steps:  # call the declared tools, so that their schemas are applied
            if step["step_type"] == "tool_call" and out["tools"]:
                step["tool_name"] = draw(st.sampled_from([t["name"] for t in out["tools"]]))
        out["steps"] = steps
    return out


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def _nest(depth: int, closed: bool = True) -> str:
    return "[" * depth + ("]" * depth if closed else "")


# Hand-made records that must be dead-lettered, with the kind each one gets.
NASTY: list[tuple[str, bytes, str]] = [
    ("empty bytes", b"", "invalid_json"),
    ("10k nested lists", _nest(10_000).encode(), "invalid_json"),
    ("100k nested lists", _nest(100_000).encode(), "invalid_json"),
    ("10k nested objects", ('{"a":' * 10_000 + "1" + "}" * 10_000).encode(), "invalid_json"),
    ("10k unclosed lists", _nest(10_000, closed=False).encode(), "invalid_json"),
    ("500 nested in a field", b'{"trace_id": ' + _nest(500).encode() + b"}", "schema"),
    ("NaN", b'{"seq": NaN}', "invalid_json"),
    ("-Infinity", b'{"seq": -Infinity}', "invalid_json"),
    ("float overflow", b'{"seq": 1e400}', "invalid_json"),
    ("5000-digit int", b'{"seq": ' + b"9" * 5000 + b"}", "invalid_json"),
    ("lone high surrogate escape", b'{"trace_id": "\\ud800"}', "invalid_json"),
    ("lone low surrogate escape", b'{"x\\udfff": 1}', "invalid_json"),
    ("reversed surrogate pair", b'{"a": "\\ude00\\ud83d"}', "invalid_json"),
    ("surrogate encoded as UTF-8", b'{"a": "\xed\xa0\x80"}', "invalid_json"),
    ("overlong slash", b'{"a": "\xc0\xaf"}', "invalid_json"),
    ("overlong 3-byte", b'{"a": "\xe0\x80\xaf"}', "invalid_json"),
    ("0xff byte", b'{"a": "\xff"}', "invalid_json"),
    ("truncated UTF-8", b'{"a": "\xf0\x9f\x98"}', "invalid_json"),
    ("raw NUL in string", b'{"a": "\x00"}', "invalid_json"),
    ("NUL after object", b'{}\x00', "invalid_json"),
    ("two objects", b"{}{}", "invalid_json"),
    ("JSON null", b"null", "schema"),
    ("JSON list", b"[1, 2]", "schema"),
    ("JSON string", b'"{}"', "schema"),
    ("JSON number", b"42", "schema"),
    ("empty object", b"{}", "schema"),
    ("RTL override in an id", _dumps({"trace_id": "t\u202e1"}), "schema"),
    ("zero-width joiner in an id", _dumps({"trace_id": "a\u200db"}), "schema"),
    ("NUL in an id", _dumps({"trace_id": "a\x00b"}), "schema"),
]


@st.composite
def bad_record(draw: Any, base: bytes, required: tuple[str, ...] = ("trace_id", "task_id")) -> bytes:
    """A record derived from the valid encoded event `base` that must not decode as its model, whose
    `required` fields are named so that one of them can be dropped."""
    obj = json.loads(base)
    how = draw(st.sampled_from([
        "bytes", "truncate", "wrong_type", "drop", "extra", "huge", "oversize", "deep", "surrogate",
        "bad_utf8", "nonfinite", "not_object", "bad_id", "bad_time", "nasty",
    ]))
    if how == "bytes":
        raw = draw(st.binary(max_size=300))
        # arbitrary bytes are almost never an object; make sure
        return raw if not raw.lstrip().startswith(b"{") else b"\xff" + raw
    if how == "truncate":
        return base[: draw(st.integers(0, len(base) - 1))]
    if how == "wrong_type":
        field = draw(st.sampled_from(sorted(k for k, v in obj.items() if v is not None)))
        current = obj[field]
        wrong: list[Any] = [[1], {"n": {"m": 1}}, "1x maybe", 12345]
        if field in ("timestamp", "window_start", "window_end"):
            wrong.remove(12345)  # a number is a valid (epoch seconds) time
        elif isinstance(current, str):
            wrong.remove("1x maybe")
            if field.endswith("_id"):
                wrong.remove(12345)  # a whole number is taken as an id's text
        elif isinstance(current, int | float) and not isinstance(current, bool):
            wrong.remove(12345)
        elif field == "metadata":
            wrong.remove({"n": {"m": 1}})  # a label may hold any JSON value (kept as its JSON text)
        obj[field] = draw(st.sampled_from(wrong))
        return _dumps(obj)
    if how == "drop":
        obj.pop(draw(st.sampled_from(required)), None)
        return _dumps(obj)
    if how == "extra":
        obj[draw(text.filter(lambda k: k not in obj))] = draw(json_values)
        return _dumps(obj)
    if how == "huge":  # a step content over max_step_content_chars (set by the test to <= 20_000)
        obj["step"] = {"step_type": "reasoning", "content": draw(st.sampled_from(AWKWARD + ["x"])) * 20_001}
        obj["input_text"] = 5  # outcomes: keep it bad for every model
        return _dumps(obj)
    if how == "oversize":  # over max_event_bytes (set by the test to <= 60_000)
        obj["pad"] = "y" * draw(st.integers(60_001, 120_000))
        return _dumps(obj)
    if how == "deep":
        depth = draw(st.sampled_from([65, 100, 300, 999, 1000, 10_000]))
        obj["trace_id"] = 1  # bad even where nesting is allowed
        return _dumps(obj).replace(b'"trace_id": 1', b'"trace_id": ' + _nest(depth).encode(), 1)
    if how == "surrogate":
        lone = draw(st.sampled_from(["\\ud800", "\\udbff", "\\udc00", "\\uDFFF", "\\ude00\\ud83d"]))
        obj["trace_id"] = "@@"
        return _dumps(obj).replace(b'"@@"', b'"x' + lone.encode() + b'"', 1)
    if how == "bad_utf8":
        junk = draw(st.sampled_from([b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xff", b"\xf0\x9f\x98", b"\x80"]))
        obj["trace_id"] = "@@"
        return _dumps(obj).replace(b"@@", junk, 1)
    if how == "nonfinite":
        obj["trace_id"] = 1
        lit = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-9" * 1 + b"9" * 400 + b".5"]))
        return _dumps(obj).replace(b'"trace_id": 1', b'"trace_id": ' + lit, 1)
    if how == "not_object":
        return _dumps(draw(json_values.filter(lambda v: not isinstance(v, dict))))
    if how == "bad_id":
        # empty, whitespace around it, control / format / separator characters, one past the bound
        obj["trace_id"] = draw(st.sampled_from(["", " ", " a", "a ", "a\tb", "t\u202e1", "a\u200db", "a\x00",
                                                "a\u2028b", "a\x7f", "a\x85", "x" * (ID_BOUND + 1),
                                                "\U0001F600" * (ID_BOUND + 1)]))
        return _dumps(obj)
    if how == "bad_time":
        obj["timestamp"] = draw(st.sampled_from([
            "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z", "not a time",
            "2026-02-30T00:00:00Z", 1e20, "",
        ]))
        return _dumps(obj)
    return draw(st.sampled_from([raw for _, raw, _ in NASTY]))


@st.composite
def any_record(draw: Any, base: bytes, required: tuple[str, ...] = ("trace_id", "task_id")) -> bytes:
    """Bad records, plus gentler mutations of `base` that may stay valid."""
    if draw(st.booleans()):
        return draw(bad_record(base, required))
    obj = json.loads(base)
    key = draw(st.sampled_from(sorted(obj)))
    obj[key] = draw(json_values)
    return _dumps(obj)


def draw_batch(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """`n` draws from `strategy`, the same on every run (derandomized), outside a @given test."""
    out: list[Any] = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x: Any) -> None:
        out.append(x)

    collect()
    return out


# Small size limits for the fuzz modules: oversize inputs are cheap to make and the limits are exercised.
FUZZ_LIMITS = Limits(max_step_content_chars=20_000, max_event_bytes=60_000, max_id_chars=ID_BOUND)


@pytest.fixture(scope="module")
def small_limits():
    """Use as `pytestmark = pytest.mark.usefixtures("small_limits")` after importing it."""
    old = get_limits()
    set_limits(FUZZ_LIMITS)
    yield
    set_limits(old)
