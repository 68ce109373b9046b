"""What an episode costs: the demo's cost model, usable on any trace (pure: no Kafka, no clock).

Exports `TEACHER`, `NOBODY`, `parse_served_by`, `student_turns`, `Episode` (what the model needs of an
episode) and `CostModel` (prices per 1k tokens; `split_tokens` / `episode_cost` of an episode, `split_trace`
/ `trace_cost` of an `AgentTrace`).

An episode is seen through three figures, as the router's outcome of it (`TraceOutcomeEvent`) and the
scored trace built from it (`AgentTrace`) both carry them: `total_tokens` (both models together),
`cost_usd` (what the teacher reported in its `usage`; the student reports none) and the turns each
server answered, `metadata["served_by"]` (`"teacher:3,v0001:2"`). `stillflow demo`'s report
(`stillflow.demo_ledger`) and `stillflow advise` (`stillflow.advise`) price episodes with this one model,
so their costs agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stillflow.contracts import AgentTrace

__all__ = ["TEACHER", "NOBODY", "parse_served_by", "student_turns", "Episode", "CostModel"]

TEACHER = "teacher"
NOBODY = "none"  # the request failed: nobody served it


def parse_served_by(value: str | None) -> dict[str, int]:
    """The router's `served_by` outcome label (`"teacher:3,v0001:2"`) as turns per server."""
    out: dict[str, int] = {}
    for part in (value or "").split(","):
        name, sep, count = part.strip().rpartition(":")
        if sep and name:
            try:
                out[name] = out.get(name, 0) + int(count)
            except ValueError:
                continue
    return out


def student_turns(served: dict[str, int]) -> int:
    """Turns answered by a student version (anyone but the teacher and `none`)."""
    return sum(n for k, n in served.items() if k not in (TEACHER, NOBODY))


class Episode(Protocol):
    """What the cost model reads of an episode (the demo ledger's `Outcome` is one)."""

    @property
    def total_tokens(self) -> int: ...

    @property
    def cost_usd(self) -> float: ...

    @property
    def served_by(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class CostModel:
    """Cost of an episode = teacher tokens × the teacher's price + student tokens × the student's price
    (USD per 1k tokens, prompt and completion alike, as the sim teacher bills them).

    The router's outcome of an episode carries the tokens of both models together, the turns each
    served (`served_by`) and the cost the teacher reported in its `usage`. An episode served by one
    model alone is all that model's tokens (a trace that names no server, e.g. one an agent sent through
    the SDK, is the teacher's); a mixed one (the student answered, then escalated) has teacher tokens =
    reported teacher cost / teacher price (the demo sets the sim teacher's price, so this is exact), and
    falls back to splitting by turns when the teacher reported no cost. Not counted: student generations
    that were escalated (their tokens are not in any response's usage).
    """

    teacher_price_per_1k: float = 0.01
    student_price_per_1k: float = 0.0005

    def __post_init__(self) -> None:
        if self.teacher_price_per_1k < 0 or self.student_price_per_1k < 0:
            raise ValueError("prices per 1k tokens cannot be negative")

    def split(self, total_tokens: int, cost_usd: float, served: dict[str, int]) -> tuple[int, int]:
        """(teacher tokens, student tokens) of an episode of `total_tokens`, the teacher's reported
        `cost_usd` and `served` turns per server."""
        teacher_turns = served.get(TEACHER, 0)
        n_student = student_turns(served)
        if n_student == 0:
            return total_tokens, 0
        if teacher_turns == 0:
            return 0, total_tokens
        if cost_usd > 0 and self.teacher_price_per_1k > 0:
            t = min(total_tokens, round(cost_usd * 1000 / self.teacher_price_per_1k))
        else:
            t = round(total_tokens * teacher_turns / (teacher_turns + n_student))
        return t, total_tokens - t

    def split_tokens(self, o: Episode) -> tuple[int, int]:
        """(teacher tokens, student tokens) of one episode."""
        return self.split(o.total_tokens, o.cost_usd, o.served_by)

    def split_trace(self, trace: AgentTrace) -> tuple[int, int]:
        """(teacher tokens, student tokens) of a trace (its `metadata["served_by"]` names the servers)."""
        return self.split(trace.total_tokens, trace.cost_usd, parse_served_by(trace.metadata.get("served_by")))

    def cost(self, teacher_tokens: float, student_tokens: float) -> float:
        return teacher_tokens / 1000 * self.teacher_price_per_1k + student_tokens / 1000 * self.student_price_per_1k

    def episode_cost(self, o: Episode) -> float:
        return self.cost(*self.split_tokens(o))

    def trace_cost(self, trace: AgentTrace) -> float:
        """USD of the episode a trace records, as `stillflow demo`'s report prices it."""
        return self.cost(*self.split_trace(trace))

    def describe(self) -> str:
        return (
            f"Cost of an episode = teacher tokens / 1000 x ${self.teacher_price_per_1k:g} + student tokens "
            f"/ 1000 x ${self.student_price_per_1k:g}; cost per task = a phase's cost / its episodes. "
            "Tokens are prompt and completion tokens as each model's `usage` reports them. An episode served by "
            "one model alone is all that model's tokens; in a mixed one the teacher's tokens are its reported "
            "cost / its price (the demo sets the sim teacher's price), or a split by turns when it reported no "
            "cost. Not counted: student generations that were escalated (they are in no response's usage)."
        )
