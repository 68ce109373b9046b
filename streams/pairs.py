"""DPO pair mining: preference pairs between traces of the same task within a window.

Exports:
- `PairCandidate` — what a window keeps of a scored trace for pair mining (a pydantic model, so it
  lives in the window table): ids, model, overall score, gate verdict, failure, and optionally its
  (already redacted) messages and tools;
- `candidate_from(trace, assessment, verdict, *, messages=None, tools=None)`;
- `is_failed(trace, correct)` — the "failed student" test: not successful, or wrong against ground truth;
- `select_pairs(candidates, *, min_gap, require_chosen_passed)` → `[(chosen, rejected, rule)]`;
- `split_prefix(a, b)` → (prompt, chosen, rejected), `canonical_call_ids(messages)`;
- `build_pair(chosen, rejected, rule, *, window_start)` and `mine_pairs(candidates, ...)` →
  `PreferencePair` events in trl's conversational format.

Rules (per task): `gap` — the best vs the worst trace when their overall scores differ by more than
`min_gap`; `teacher_student` — each failed trace vs the best non-failed trace of another model
(the teacher's answer vs the failed student's). A pair found by both rules is emitted once.
Ids are `pair-<sha256(chosen, rejected)>`, so redelivery never yields two records for one pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from stillflow.contracts import AgentTrace, PreferencePair
from stillflow.ids import pair_id_for
from stillflow.quality import Assessment, Verdict
from streams.tables import TableModel

__all__ = [
    "GAP",
    "TEACHER_STUDENT",
    "PairCandidate",
    "is_failed",
    "candidate_from",
    "select_pairs",
    "canonical_call_ids",
    "split_prefix",
    "build_pair",
    "mine_pairs",
]

GAP = "gap"
TEACHER_STUDENT = "teacher_student"
_EPS = 1e-9  # 0.9 - 0.7 is 0.20000000000000007: a gap of exactly min_gap does not pair


class PairCandidate(TableModel):
    """A scored trace as a window keeps it for pair mining. `messages` may be left out (None) when
    the caller keeps conversations elsewhere (e.g. a table keyed by trace_id) to keep windows small."""

    model_config = ConfigDict(extra="forbid")

    trace_id: str
    task_id: str
    model_id: str = "unknown"
    workload: str | None = None
    overall: float = Field(ge=0, le=1)
    passed: bool = False
    failed: bool = False
    timestamp: datetime
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)


def is_failed(trace: AgentTrace, correct: bool) -> bool:
    """A failed trace: the agent reported failure, or its answer misses the ground truth."""
    return not trace.success or (trace.ground_truth is not None and not correct)


def candidate_from(
    trace: AgentTrace,
    assessment: Assessment,
    verdict: Verdict,
    *,
    messages: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> PairCandidate:
    """The candidate of a scored trace. Pass redacted `messages` (see `streams.pii`) when they are
    kept in the window, so no PII reaches the table's changelog."""
    return PairCandidate(
        trace_id=trace.trace_id,
        task_id=trace.task_id,
        model_id=trace.model_id,
        workload=trace.workload,
        overall=assessment.score.overall,
        passed=verdict.passed,
        failed=is_failed(trace, assessment.correct),
        timestamp=trace.timestamp,
        messages=messages,
        tools=tools if tools is not None else [t.to_openai() for t in trace.tools],
    )


def _rank(c: PairCandidate) -> tuple[float, bool, str]:
    # higher overall first; ties: non-failed first, then trace_id (deterministic)
    return (-c.overall, c.failed, c.trace_id)


def select_pairs(
    candidates: Sequence[PairCandidate],
    *,
    min_gap: float = 0.2,
    require_chosen_passed: bool = False,
) -> list[tuple[PairCandidate, PairCandidate, str]]:
    """(chosen, rejected, rule) for every pair the rules find, task by task, deterministic order."""
    by_task: dict[str, list[PairCandidate]] = {}
    for c in candidates:
        by_task.setdefault(c.task_id, []).append(c)
    out: list[tuple[PairCandidate, PairCandidate, str]] = []
    for task_id in sorted(by_task):
        ranked = sorted(by_task[task_id], key=_rank)
        seen: set[tuple[str, str]] = set()
        if len(ranked) >= 2:
            best, worst = ranked[0], ranked[-1]
            if best.overall - worst.overall > min_gap + _EPS and (best.passed or not require_chosen_passed):
                out.append((best, worst, GAP))
                seen.add((best.trace_id, worst.trace_id))
        for rejected in ranked:
            if not rejected.failed:
                continue
            chosen = next((c for c in ranked if not c.failed and c.model_id != rejected.model_id), None)
            if chosen is None or chosen.overall <= rejected.overall:
                continue
            key = (chosen.trace_id, rejected.trace_id)
            if key in seen:
                continue
            seen.add(key)
            out.append((chosen, rejected, TEACHER_STUDENT))
    return out


def canonical_call_ids(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy with tool-call ids renamed `call_1`, `call_2`, ... in order of appearance (ids are
    random per run, so two runs that made the same call only compare equal this way)."""
    mapping: dict[str, str] = {}

    def rename(old: str) -> str:
        if old not in mapping:
            mapping[old] = f"call_{len(mapping) + 1}"
        return mapping[old]

    out: list[dict[str, Any]] = []
    for m in messages:
        m2 = dict(m)
        if m.get("tool_calls"):
            m2["tool_calls"] = [{**tc, "id": rename(tc["id"])} for tc in m["tool_calls"]]
        if m.get("role") == "tool" and "tool_call_id" in m:
            m2["tool_call_id"] = rename(m["tool_call_id"])
        out.append(m2)
    return out


def split_prefix(
    a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(shared prefix, rest of a, rest of b). The prefix is the longest run of identical leading
    messages after which both continue with an assistant message (trl's `prompt`)."""
    n = 0
    limit = min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    while n > 0 and not (
        n < len(a) and n < len(b) and a[n].get("role") == "assistant" and b[n].get("role") == "assistant"
    ):
        n -= 1
    return list(a[:n]), list(a[n:]), list(b[n:])


def build_pair(
    chosen: PairCandidate,
    rejected: PairCandidate,
    rule: str,
    *,
    window_start: datetime | None = None,
    chosen_messages: list[dict[str, Any]] | None = None,
    rejected_messages: list[dict[str, Any]] | None = None,
) -> PreferencePair | None:
    """The `PreferencePair` of two candidates (messages from the candidates unless given). None when
    the two conversations do not differ after the prompt or one of them has nothing to offer."""
    ma = chosen_messages if chosen_messages is not None else chosen.messages
    mb = rejected_messages if rejected_messages is not None else rejected.messages
    if ma is None or mb is None:
        raise ValueError("build_pair needs the messages of both traces")
    prompt, ca, rb = split_prefix(canonical_call_ids(ma), canonical_call_ids(mb))
    if not prompt or not ca or not rb or ca == rb:
        return None
    pair_id = pair_id_for(chosen.trace_id, rejected.trace_id)
    return PreferencePair(
        event_id=pair_id,
        timestamp=max(chosen.timestamp, rejected.timestamp),
        pair_id=pair_id,
        task_id=chosen.task_id,
        chosen_trace_id=chosen.trace_id,
        rejected_trace_id=rejected.trace_id,
        prompt=prompt,
        chosen=ca,
        rejected=rb,
        tools=chosen.tools or rejected.tools,
        chosen_score=chosen.overall,
        rejected_score=rejected.overall,
        workload=chosen.workload or rejected.workload,
        window_start=window_start,
        metadata={"rule": rule, "chosen_model": chosen.model_id, "rejected_model": rejected.model_id},
    )


def mine_pairs(
    candidates: Sequence[PairCandidate],
    *,
    min_gap: float = 0.2,
    require_chosen_passed: bool = False,
    window_start: datetime | None = None,
) -> list[PreferencePair]:
    """`select_pairs` then `build_pair` for candidates that carry their messages."""
    out: list[PreferencePair] = []
    for chosen, rejected, rule in select_pairs(
        candidates, min_gap=min_gap, require_chosen_passed=require_chosen_passed
    ):
        pair = build_pair(chosen, rejected, rule, window_start=window_start)
        if pair is not None:
            out.append(pair)
    return out
