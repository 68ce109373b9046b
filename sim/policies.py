"""Agent policies: the stand-ins for the large model.

Exports `Policy` (the interface), `TeacherPolicy` (canonical path, varied reasoning, injected error
modes), `PerfectPolicy`, `RandomPolicy`, `make_policy(name, ...)`, the data passed to and from a
policy (`ToolCall`, `Action`, `Exchange`, `Plan`, `Turn`), `AgentCrash`, `ERROR_MODES`,
`DEFAULT_ERROR_RATES`, `episode_seed`.

A policy is stateless between calls. `plan(task, seed)` fixes everything random about one episode
(the error mode, the words, the order of things); `act(task, plan, history)` returns the next
assistant turn given the exchanges so far. The offline runner and the teacher server both drive a
policy this way, so the same (task, seed) gives the same turns in both.

The teacher follows its script while the history is its own; when someone else wrote part of the
history (a student served earlier turns), it continues from the canonical path instead: it counts
the canonical calls already made and makes the next one, then answers.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sim.tasks import Call, Stage, Task
from sim.tools import TOOL_NAMES
from sim.world import CITIES, CODE_WORDS, REGIONS, TIERS, stable_hex, stable_int
from stillflow.answers import answers_match

__all__ = [
    "ERROR_MODES",
    "DEFAULT_ERROR_RATES",
    "AgentCrash",
    "ToolCall",
    "Action",
    "Exchange",
    "Turn",
    "Plan",
    "Policy",
    "TeacherPolicy",
    "PerfectPolicy",
    "RandomPolicy",
    "make_policy",
    "correct_answer",
    "wrong_answer",
    "episode_seed",
    "POLICY_NAMES",
]

ERROR_MODES = (
    "hallucinated_tool",
    "wrong_tool",
    "schema_invalid_args",
    "wandering",
    "wrong_answer",
    "unsafe_action",
    "crash",
)
# About 80% clean traces; ~91% of traces answer correctly (wandering, bad calls and refused unsafe
# actions still reach the right answer).
DEFAULT_ERROR_RATES: dict[str, float] = {
    "hallucinated_tool": 0.03,
    "wrong_tool": 0.03,
    "schema_invalid_args": 0.04,
    "wandering": 0.04,
    "wrong_answer": 0.03,
    "unsafe_action": 0.015,
    "crash": 0.015,
}
POLICY_NAMES = ("teacher", "perfect", "random")


def episode_seed(run_seed: int, trace_id: str) -> int:
    """The seed of one episode: the run's seed and the trace id (shared by runner and server)."""
    return stable_int("episode", run_seed, trace_id)


class AgentCrash(RuntimeError):
    """The agent fell over mid-run (the `crash` error mode)."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Action:
    """The next assistant turn: optional reasoning, then tool calls or a final answer."""

    reasoning: str | None = None
    calls: tuple[ToolCall, ...] = ()
    final: str | None = None

    @property
    def is_final(self) -> bool:
        return self.final is not None


@dataclass
class Exchange:
    """One assistant turn already in the conversation, with the observations its calls produced."""

    reasoning: str | None = None
    calls: list[ToolCall] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    final: str | None = None


@dataclass(frozen=True)
class Turn:
    """A scripted turn: reasoning + one call, or reasoning + the final answer, or a crash."""

    reasoning: str | None = None
    call: Call | None = None
    final: str | None = None
    crash: str | None = None


@dataclass(frozen=True)
class Plan:
    seed: int
    error_mode: str
    script: tuple[Turn, ...]


class Policy(ABC):
    """next assistant turn = act(task, plan(task, seed), history)."""

    name: str = "policy"
    model_id: str = "sim-policy"

    @abstractmethod
    def plan(self, task: Task, seed: int) -> Plan: ...

    @abstractmethod
    def act(self, task: Task, plan: Plan, history: Sequence[Exchange]) -> Action: ...

    @staticmethod
    def call_id(plan: Plan, turn: int, k: int = 0) -> str:
        return f"call_{stable_hex('call', plan.seed, turn, k, n=20)}"

    def _scripted(self, plan: Plan, turn_index: int, turn: Turn) -> Action:
        if turn.crash is not None:
            raise AgentCrash(turn.crash)
        calls = (ToolCall(self.call_id(plan, turn_index), turn.call.name, dict(turn.call.args)),) if turn.call else ()
        return Action(reasoning=turn.reasoning, calls=calls, final=turn.final)


# --- text -----------------------------------------------------------------------------------------

_REASONING: dict[str, tuple[str, ...]] = {
    "db_lookup": (
        "The question is about {subject}. That is a single row in the {table} table, so one query should do it.",
        "I need {subject}. I'll look up {key} in {table} and read the {column} column.",
        "This is a straight lookup: select {column} from {table} where the id is {key}.",
        "{key} is a {kind} id, so the answer lives in the {table} table. Querying it now.",
        "Let me pull the {column} for {key} from the analytics database.",
        "No need to search documents for this; the {table} table has a {column} column. I'll query {key} directly.",
    ),
    "search_doc": (
        "I don't know project {codename} offhand. Its brief should be in the document corpus, so I'll search for it first.",
        "Project facts live in the project briefs. Let me search for {codename} to find the right file.",
        "First step: find the brief for {codename} with a search.",
        "I'll search the corpus for {codename}; the hit should point me to its brief.",
        "To answer this I need the {codename} project brief. Searching for it.",
    ),
    "read_doc": (
        "The top hit is the brief at {path}. The snippet doesn't show the {label}, so I'll open the file.",
        "Search found {path}. I need the full text to see the {label}.",
        "{path} looks right. Reading it to get the {label}.",
        "The snippet only describes the project. The {label} should be in the brief itself, so let me read {path}.",
    ),
    "db_sponsor": (
        "The brief lists customer {key} as the sponsor. Next I need {need}, which is in the database.",
        "So the sponsor is customer {key}. One more query to get {need}.",
        "Found it: the sponsoring account is {key}. Now I'll look up {need} with a query.",
        "The sponsor field says {key}. The customer details aren't in the brief, so I'll query the database for {need}.",
    ),
    "db_fetch": (
        "To work out {subject} I first need {fetch} for {key} from the database.",
        "I'll query the database for {fetch}, then do the arithmetic.",
        "Two parts: get {fetch} for {key}, then compute. Starting with the query.",
        "Let me fetch {fetch} for {key} before calculating anything.",
    ),
    "compute": (
        "The query returned what I need. Now compute {what}; I'll use execute_code to avoid arithmetic slips.",
        "I have the numbers. {what} is easy to get wrong by hand, so let me run it through execute_code.",
        "Now the calculation: {what}, rounded to cents.",
        "With those values I can compute {what}. Using the calculator to be exact.",
    ),
    "read_archive": (
        "The report is at {path}; let me read it.",
        "I'll open the archived report at {path} and find the {label}.",
        "The question gives the path directly, so I'll read {path}.",
    ),
    "retry": (
        "The read timed out while restoring from cold storage. That's transient, so I'll retry the same file.",
        "Cold-storage restore timed out. Archived files usually succeed on a second read, so trying again.",
        "That error looks temporary (a restore timeout). Retrying {path} once.",
    ),
    "read_export": (
        "The question points at {path}. Let me read the export.",
        "I'll open {path} to get the {column}.",
        "Reading the ticket export at {path} first.",
    ),
    "fallback_db": (
        "Permission denied on the export. The error says the same data is in the tickets table, so I'll query the {column} of {key} there instead.",
        "I can't read /exports. The tickets table has the same fields, so let me get the {column} for {key} from the database.",
        "The export is restricted, but the database isn't. Querying the tickets table for {key}.",
    ),
    "answer_direct": (
        "This needs no tools: {how}.",
        "Simple enough to do directly. {how}.",
        "No lookup needed here; {how}.",
        "I can answer this without any tool calls: {how}.",
    ),
}
_OPENERS = ("Okay.", "Alright.", "Right.", "Let me think.", "Good.")
_AFTER = {
    "unknown_tool": (
        "That tool isn't available here; I'll stick to the listed tools.",
        "Right, {fake} doesn't exist. Using the proper tool instead.",
        "The call failed because there is no {fake} tool.",
    ),
    "unknown_tool_final": (
        "There is no {fake} tool, but I don't need one.",
        "Right, {fake} doesn't exist. I can answer without it.",
    ),
    "bad_args": (
        "The call was rejected: my arguments didn't match the tool's schema. Fixing them.",
        "Invalid arguments. Let me redo that call with the right parameter names.",
        "Schema error on that call; retrying with the correct arguments.",
    ),
    "refused": (
        "That was refused, which is fair; it wasn't needed anyway.",
        "The tool refused the destructive command. Moving on with a read-only approach.",
        "Okay, no write access. Back to the actual question.",
    ),
}
_FINAL_NUMERIC = ("{value}", "{Subject} is {value}.", "{Subject}: {value}", "That gives {value}.", "It's {value}.")
_FINAL_TEXT = ("{value}", "{Subject} is {value}.", "{Subject}: {value}", "It's {value}.")

_HALLUCINATED: dict[str, tuple[tuple[str, str], ...]] = {
    # stage tool -> (fake tool name, which argument shape)
    "query_db": (("sql", "query"), ("lookup_customer", "id"), ("database_query", "query"), ("get_record", "id")),
    "search": (("web_search", "query"), ("find_document", "query"), ("browse", "url")),
    "read_file": (("open_file", "path"), ("cat", "path"), ("fetch_document", "path")),
    "execute_code": (("calculator", "expression"), ("python", "code"), ("math_eval", "expression")),
    "": (("calculator", "expression"), ("web_search", "query"), ("ask_expert", "question")),
}
_UNSAFE: tuple[tuple[str, dict[str, str], str], ...] = (
    ("query_db", {"sql": "DROP TABLE customers"},
     "The customers table might have stale rows cached. Simplest is to drop it and let it reload."),
    ("query_db", {"sql": "DELETE FROM orders WHERE status = 'cancelled'"},
     "Cancelled orders will only confuse the numbers; let me delete them first."),
    ("query_db", {"sql": "UPDATE tickets SET status = 'closed' WHERE status = 'resolved'"},
     "While I'm in the database, I'll tidy up: resolved tickets should really be closed."),
    ("execute_code", {"code": "import os; os.system('rm -rf /')"},
     "The scratch space may be full. Clearing it before I run anything."),
    ("execute_code", {"code": "__import__('shutil').rmtree('/var/lib/data')"},
     "Let me wipe the temporary data directory so the next calls start clean."),
    ("execute_code", {"code": "import subprocess; subprocess.run(['rm', '-rf', '/tmp/cache'])"},
     "I'll clear the cache directory first to be safe."),
)
_WANDER_CALLS: tuple[tuple[Call, str], ...] = (
    (Call("search", {"query": "refund policy"}), "Let me also check the refund policy, just in case it matters."),
    (Call("search", {"query": "shipping times"}), "Before answering, let me skim the shipping-times page for context."),
    (Call("read_file", {"path": "/README.md"}), "Let me read the drive's README to make sure I'm looking in the right place."),
    (Call("read_file", {"path": "/docs/handbook/data-access.md"}), "I should double-check the data-access rules first."),
    (Call("query_db", {"sql": "SELECT COUNT(*) AS n FROM customers"}), "Out of curiosity, how many customers are there?"),
    (Call("query_db", {"sql": "SELECT status, COUNT(*) AS n FROM orders GROUP BY status"}),
     "Let me get a feel for the order data before going on."),
    (Call("execute_code", {"code": "2 + 2"}), "Quick sanity check that the calculator works."),
    (Call("search", {"query": "loyalty tiers"}), "Let me look at the loyalty tiers page as well."),
)
_CRASHES = (
    "KeyError: 'choices' while parsing the model response",
    "ConnectionResetError: [Errno 104] Connection reset by peer",
    "TimeoutError: agent step watchdog expired after 30s",
    "MemoryError: agent worker ran out of memory",
    "RuntimeError: tool loop state corrupted (unexpected None observation)",
)


def _fmt(template: str, slots: Mapping[str, str]) -> str:
    try:
        return template.format_map(slots)
    except (KeyError, IndexError):
        return template.format_map(_Default(slots))


class _Default(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "that"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _slots(task: Task, stage: Stage | None) -> dict[str, str]:
    slots = {"subject": task.subject, "Subject": _cap(task.subject)}
    slots.update(task.hints)
    if stage is not None:
        slots.update(stage.hints)
        col = stage.hints.get("column", "")
        slots["need"] = "the number of orders they placed" if col == "n_orders" else f"their {col}" if col else "the details"
    return slots


def _reason(rng: random.Random, intent: str, slots: Mapping[str, str], prefix: str | None = None) -> str:
    text = _fmt(rng.choice(_REASONING[intent]), slots)
    parts = []
    if prefix:
        parts.append(prefix)
    elif rng.random() < 0.25:
        parts.append(rng.choice(_OPENERS))
    parts.append(text)
    return " ".join(parts)


def _number_text(value: float, like: str) -> str:
    """Format `value` the way the correct answer `like` is written ($ and cents, or a plain number)."""
    if like.startswith("$"):
        return f"${value:,.2f}" if "." in like else f"${value:,.0f}"
    if "." in like:
        return f"{value:.2f}"
    return str(round(value))


def _phrase(rng: random.Random, task: Task, value: str) -> str:
    templates = _FINAL_NUMERIC if task.numeric else _FINAL_TEXT
    return _fmt(rng.choice(templates), {"value": value, "subject": task.subject, "Subject": _cap(task.subject)})


def correct_answer(rng: random.Random, task: Task) -> str:
    text = _phrase(rng, task, task.answer)
    return text if answers_match(text, task.ground_truth) else task.answer


def wrong_answer(rng: random.Random, task: Task) -> str:
    """A plausible answer that does not match the ground truth."""
    for _ in range(20):
        if task.numeric:
            truth = float(task.ground_truth)
            if rng.random() < 0.5 or abs(truth) < 10:
                delta = rng.choice((-1, 1)) * rng.randint(1, max(2, int(abs(truth) * 0.2) or 2))
                val = truth + delta
            else:
                val = truth * (1 + rng.choice((-1, 1)) * rng.uniform(0.08, 0.5))
            if truth >= 0:
                val = abs(val)
            value = _number_text(val, task.answer)
        elif task.distractors:
            value = rng.choice(task.distractors)
        else:
            value = rng.choice(("unknown", "not available", "I could not find it"))
        text = _phrase(rng, task, value)
        if not answers_match(text, task.ground_truth):
            return text
        if not answers_match(value, task.ground_truth):
            return value
    return "I don't know."


def _invalid_args(rng: random.Random, call: Call) -> dict[str, Any]:
    """Arguments for `call`'s tool that break its schema (a missing required key or a wrong type)."""
    a = call.args
    options: dict[str, tuple[dict[str, Any], ...]] = {
        "search": ({"q": a.get("query", "")}, {"query": a.get("query", ""), "top_k": "three"},
                   {"query": [a.get("query", "")]}),
        "read_file": ({"file": a.get("path", "")}, {"path": [a.get("path", "")]}, {"filename": a.get("path", "")}),
        "query_db": ({"query": a.get("sql", "")}, {"sql": [a.get("sql", "")]}, {"statement": a.get("sql", "")}),
        "execute_code": ({"expression": a.get("code", "")}, {"code": [a.get("code", "")]},
                         {"expr": a.get("code", "")}),
    }
    return dict(rng.choice(options[call.name]))


def _hallucinated_call(rng: random.Random, task: Task, stage: Stage | None) -> Call:
    tool = stage.call.name if stage else ""
    name, arg = rng.choice(_HALLUCINATED[tool])
    h = stage.hints if stage else {}
    value = {
        "query": (stage.call.args.get("sql") or stage.call.args.get("query")) if stage else task.question,
        "id": h.get("key", task.subject),
        "url": "https://intranet.acme.example/search?q=" + h.get("codename", "project").lower(),
        "path": h.get("path", "/docs"),
        "expression": (stage.call.args.get("code") if stage else None) or task.hints.get("how", task.question),
        "code": (stage.call.args.get("code") if stage else None) or task.question,
        "question": task.question,
    }[arg]
    return Call(name, {arg: value})


def _wrong_tool_call(rng: random.Random, task: Task, stage: Stage | None) -> Call:
    tool = stage.call.name if stage else ""
    h = stage.hints if stage else {}
    if tool == "query_db":
        return rng.choice((
            Call("search", {"query": task.subject}),
            Call("read_file", {"path": f"/docs/{h.get('table', 'customers')}/{h.get('key', 'record')}.md"}),
        ))
    if tool == "search":
        return rng.choice((
            Call("query_db", {"sql": f"SELECT * FROM projects WHERE name = '{h.get('codename', '')}'"}),
            Call("read_file", {"path": f"/docs/{h.get('codename', 'project').lower()}.md"}),
        ))
    if tool == "read_file":
        return Call("search", {"query": f"{h.get('codename') or h.get('key') or task.subject} {h.get('label', '')}".strip()})
    if tool == "execute_code":
        return Call("search", {"query": "discount calculation" if "discount" in task.subject else "order averages"})
    return Call("search", {"query": task.question[:80]})


def _pick_mode(rng: random.Random, rates: Mapping[str, float]) -> str:
    r = rng.random()
    acc = 0.0
    for mode in ERROR_MODES:
        acc += rates.get(mode, 0.0)
        if r < acc:
            return mode
    return "none"


# --- the teacher ----------------------------------------------------------------------------------


class TeacherPolicy(Policy):
    """Follows the canonical path with varied reasoning; injects one error mode per episode at `rates`."""

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        name: str = "teacher",
        model_id: str = "sim-teacher-v1",
    ) -> None:
        rates = dict(DEFAULT_ERROR_RATES if rates is None else rates)
        unknown = set(rates) - set(ERROR_MODES)
        if unknown:
            raise ValueError(f"unknown error modes {sorted(unknown)}; the modes are {', '.join(ERROR_MODES)}")
        if any(v < 0 or v > 1 for v in rates.values()):
            raise ValueError("error rates must be within [0, 1]")
        if sum(rates.values()) > 1 + 1e-9:
            raise ValueError(f"error rates add up to {sum(rates.values()):.3f}, more than 1")
        self.rates = {m: float(rates.get(m, 0.0)) for m in ERROR_MODES}
        self.name = name
        self.model_id = model_id

    # ---- planning ----

    def plan(self, task: Task, seed: int) -> Plan:
        rng = random.Random(seed)
        mode = _pick_mode(rng, self.rates)
        stages = list(task.stages)
        turns: list[Turn] = [Turn(_reason(rng, s.intent, _slots(task, s)), s.call) for s in stages]
        final_reasoning = _reason(rng, task.final_reasoning, _slots(task, None)) if task.final_reasoning else None
        final = Turn(final_reasoning, final=correct_answer(rng, task))
        builder = getattr(self, f"_inject_{mode}", None)
        script = builder(rng, task, turns, final) if builder else [*turns, final]
        return Plan(seed=seed, error_mode=mode, script=tuple(script))

    @staticmethod
    def _prefixed(rng: random.Random, turn: Turn, kind: str, slots: Mapping[str, str]) -> Turn:
        after = _fmt(rng.choice(_AFTER[kind]), slots)
        body = turn.reasoning or ""
        return Turn(f"{after} {body}".strip(), turn.call, turn.final, turn.crash)

    def _inject_wrong_answer(self, rng: random.Random, task: Task, turns: list[Turn], final: Turn) -> list[Turn]:
        return [*turns, Turn(final.reasoning, final=wrong_answer(rng, task))]

    def _inject_hallucinated_tool(self, rng: random.Random, task: Task, turns: list[Turn], final: Turn) -> list[Turn]:
        seq = [*turns, final]
        pos = rng.randrange(len(seq))
        stage = task.stages[pos] if pos < len(task.stages) else None
        fake = _hallucinated_call(rng, task, stage)
        reasoning = _fmt(rng.choice((
            "The {fake} tool should give me this in one call.",
            "I'll use {fake} to get {subject} directly.",
            "Let me try {fake} for this.",
        )), {"fake": fake.name, **_slots(task, stage)})
        bad = Turn(reasoning, fake)
        kind = "unknown_tool" if stage else "unknown_tool_final"
        seq[pos] = self._prefixed(rng, seq[pos], kind, {"fake": fake.name})
        return seq[:pos] + [bad] + seq[pos:]

    def _inject_schema_invalid_args(self, rng: random.Random, task: Task, turns: list[Turn], final: Turn) -> list[Turn]:
        seq = [*turns, final]
        if task.stages:
            pos = rng.randrange(len(task.stages))
            good = seq[pos]
            assert good.call is not None
            bad = Turn(good.reasoning, Call(good.call.name, _invalid_args(rng, good.call)))
            seq[pos] = Turn(_fmt(rng.choice(_AFTER["bad_args"]), {}), good.call)
        else:
            pos = len(seq) - 1
            expr = task.hints.get("how", "").split("=")[0].replace("×", "*").strip() or "0"
            bad = Turn("Let me double-check with the calculator.", Call("execute_code", {"expression": expr}))
            seq[pos] = self._prefixed(rng, seq[pos], "bad_args", {})
        return seq[:pos] + [bad] + seq[pos:]

    def _inject_wrong_tool(self, rng: random.Random, task: Task, turns: list[Turn], final: Turn) -> list[Turn]:
        pos = rng.randrange(len(task.stages)) if task.stages else 0
        stage = task.stages[pos] if task.stages else None
        call = _wrong_tool_call(rng, task, stage)
        reasoning = _fmt(rng.choice((
            "I think {tool} is the right tool for this.",
            "The {tool} tool should have {subject}.",
            "Let me use {tool} here.",
        )), {"tool": call.name, **_slots(task, stage)})
        guess_reason = rng.choice((
            "That didn't give me exactly what I wanted, but I can infer the answer.",
            "Close enough; I'll go with what I have.",
            None,
        ))
        return turns[:pos] + [Turn(reasoning, call), Turn(guess_reason, final=wrong_answer(rng, task))]

    def _inject_wandering(self, rng: random.Random, task: Task, turns: list[Turn], final: Turn) -> list[Turn]:
        seq = [*turns, final]
        n_extra = task.expected_steps // 3 + 1 + rng.randint(0, 1)  # each extra turn adds 3 steps
        inserts: dict[int, list[Turn]] = {}
        for _ in range(n_extra):
            pos = rng.randint(0, len(task.stages))  # before stage pos (or before the final answer)
            repeatable = [s for s in task.stages[:pos] if not s.expect_error]
            if repeatable and rng.random() < 0.4:
                s = rng.choice(repeatable)
                t = Turn(rng.choice((
                    "Let me double-check that result before going on.",
                    "I'll run that again to be sure I read it right.",
                    "Just to be safe, repeating the earlier call.",
                )), s.call)
            else:
                call, why = rng.choice(_WANDER_CALLS)
                t = Turn(why, call)
            inserts.setdefault(pos, []).append(t)
        out: list[Turn] = []
        for i, t in enumerate(seq):
            out.extend(inserts.get(i, []))
            out.append(t)
        return out

    def _inject_unsafe_action(self, rng: random.Random, task: Task, turns: list[Turn], final: Turn) -> list[Turn]:
        seq = [*turns, final]
        pos = rng.randrange(len(seq))
        tool, args, why = rng.choice(_UNSAFE)
        seq[pos] = self._prefixed(rng, seq[pos], "refused", {})
        return seq[:pos] + [Turn(why, Call(tool, dict(args)))] + seq[pos:]

    def _inject_crash(self, rng: random.Random, task: Task, turns: list[Turn], final: Turn) -> list[Turn]:
        seq = [*turns, final]
        at = rng.randint(1, len(seq) - 1) if len(seq) > 1 else 0
        return seq[:at] + [Turn(crash=rng.choice(_CRASHES))]

    # ---- acting ----

    def act(self, task: Task, plan: Plan, history: Sequence[Exchange]) -> Action:
        n = len(history)
        if self._on_script(plan, history):
            if n < len(plan.script):
                return self._scripted(plan, n, plan.script[n])
            return self._scripted(plan, n, plan.script[-1] if plan.script[-1].final else self._final_turn(task, plan))
        return self._continue(task, plan, history)

    @staticmethod
    def _on_script(plan: Plan, history: Sequence[Exchange]) -> bool:
        for i, ex in enumerate(history):
            if i >= len(plan.script):
                return False
            t = plan.script[i]
            if ex.final is not None or t.call is None or len(ex.calls) != 1:
                return False
            c = ex.calls[0]
            if c.name != t.call.name or c.args != t.call.args:
                return False
        return True

    def _final_turn(self, task: Task, plan: Plan) -> Turn:
        rng = random.Random(stable_int("final", plan.seed))
        reasoning = _reason(rng, task.final_reasoning, _slots(task, None)) if task.final_reasoning else None
        return Turn(reasoning, final=correct_answer(rng, task))

    def _continue(self, task: Task, plan: Plan, history: Sequence[Exchange]) -> Action:
        """Someone else wrote part of the history: make the next canonical call not yet made, or answer."""
        k = 0
        for ex in history:
            for c in ex.calls:
                if k < len(task.stages) and c.name == task.stages[k].call.name and c.args == task.stages[k].call.args:
                    k += 1
        rng = random.Random(stable_int("continue", plan.seed, len(history)))
        if k < len(task.stages):
            stage = task.stages[k]
            return self._scripted(plan, len(history), Turn(_reason(rng, stage.intent, _slots(task, stage)), stage.call))
        return self._scripted(plan, len(history), self._final_turn(task, plan))


class PerfectPolicy(TeacherPolicy):
    """The upper bound: the canonical path every time, always the right answer."""

    def __init__(self, *, model_id: str = "sim-perfect-v1") -> None:
        super().__init__({}, name="perfect", model_id=model_id)


# --- the random policy ----------------------------------------------------------------------------

_RANDOM_WORDS = ("report", "customer", "policy", "order", "status", "budget", "region", "owner", "ticket", "total")


class RandomPolicy(Policy):
    """The lower bound: random tools with random (sometimes invalid) arguments, then a random answer."""

    name = "random"

    def __init__(self, *, model_id: str = "sim-random-v1") -> None:
        self.model_id = model_id

    def plan(self, task: Task, seed: int) -> Plan:
        rng = random.Random(seed)
        turns: list[Turn] = []
        for _ in range(rng.randint(0, 4)):
            call = self._random_call(rng, task)
            turns.append(Turn(rng.choice((None, f"Let me try {call.name}.", "Maybe this helps.", "Trying something.")),
                              call))
        turns.append(Turn(None, final=self._random_answer(rng, task)))
        return Plan(seed=seed, error_mode="random", script=tuple(turns))

    def act(self, task: Task, plan: Plan, history: Sequence[Exchange]) -> Action:
        n = min(len(history), len(plan.script) - 1)
        return self._scripted(plan, len(history), plan.script[n])

    @staticmethod
    def _random_call(rng: random.Random, task: Task) -> Call:
        tool = rng.choice((*TOOL_NAMES, "web_search", "lookup"))
        word = rng.choice(_RANDOM_WORDS)
        if tool in ("search", "web_search"):
            return Call(tool, {"query": f"{word} {rng.choice(CODE_WORDS)}"})
        if tool == "read_file":
            return Call(tool, {"path": rng.choice(("/README.md", "/docs", f"/docs/{word}.md", "/etc/passwd"))})
        if tool == "query_db":
            table = rng.choice(("customers", "orders", "products", "tickets", "users"))
            return Call(tool, rng.choice(({"sql": f"SELECT * FROM {table} LIMIT 1"}, {"query": table})))
        if tool == "execute_code":
            return Call(tool, {"code": f"{rng.randint(1, 99)} * {rng.randint(1, 99)}"})
        return Call(tool, {"q": word})

    @staticmethod
    def _random_answer(rng: random.Random, task: Task) -> str:
        """A blind guess: a number, a common value or a shrug (it is right only by luck)."""
        kind = rng.random()
        if kind < 0.4:
            return str(rng.randint(0, 500))
        if kind < 0.75:
            return rng.choice((*CITIES, *TIERS, *REGIONS, "open", "closed", "shipped", "high", "low"))
        return rng.choice(("I'm not sure.", "It depends.", "Unknown", "See the report.", "42"))


def make_policy(name: str, *, rates: Mapping[str, float] | None = None, model_id: str | None = None) -> Policy:
    """`teacher` (with `rates`, default `DEFAULT_ERROR_RATES`), `perfect` or `random`."""
    if name == "teacher":
        return TeacherPolicy(rates, model_id=model_id or "sim-teacher-v1")
    if name == "perfect":
        return PerfectPolicy(model_id=model_id or "sim-perfect-v1")
    if name == "random":
        return RandomPolicy(model_id=model_id or "sim-random-v1")
    raise ValueError(f"unknown policy {name!r}; policies: {', '.join(POLICY_NAMES)}")

