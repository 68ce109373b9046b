"""Run policies in the tool loop and record `AgentTrace`s: one episode, an offline batch, a live fleet.

Exports
- `Episode`: drives one episode turn by turn (`advance()` → the new steps); `run_episode(...)` runs it whole;
- `SimClock` (seeded, from a fixed epoch: offline traces are byte-identical per seed), `WallClock`;
- `run_offline(n, policy, ...)` → `RunReport` (optionally writing JSONL), `write_jsonl`, `trace_id_for`;
- `run_fleet(...)` → `FleetReport`: N concurrent agents at a target rate for a duration, emitting live
  through an emitter (`stillflow.sdk.TraceEmitter` or anything with `emit_step`/`emit_outcome`),
  in-process or against a chat-completions endpoint (`sim.openai_agent`), printing progress.

Trace shape: reasoning steps, a tool_call step (tool_name, tool_args, tool_call_id) followed by its
observation step (same tool_name and tool_call_id, tool_result), one output step whose content is
the final answer (= `final_output`). A crash keeps the steps so far, success False, the error text.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol

from sim.conversation import TokenMeter, action_message
from sim.policies import Action, AgentCrash, Exchange, Plan, Policy, episode_seed
from sim.tasks import SYSTEM_PROMPT, Suite, Task, get_suite
from sim.tools import TOOL_SPECS, ToolBox
from sim.world import get_world, stable_int
from stillflow.answers import answers_match
from stillflow.contracts import AgentTrace, TraceOutcomeEvent, TraceStep, utcnow

__all__ = [
    "EPOCH",
    "Clock",
    "SimClock",
    "WallClock",
    "Episode",
    "run_episode",
    "trace_id_for",
    "RunReport",
    "run_offline",
    "iter_offline",
    "write_jsonl",
    "Emitter",
    "FleetReport",
    "run_fleet",
    "SimAgent",
]

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    def now(self) -> datetime: ...
    def model_turn(self) -> datetime: ...
    def tool_call(self) -> datetime: ...


class SimClock:
    """Simulated time: starts at `start`, advances by seeded model and tool latencies."""

    def __init__(self, start: datetime, seed: int) -> None:
        self.start = start
        self._t = start
        self._rng = random.Random(stable_int("clock", seed))

    def now(self) -> datetime:
        return self._t

    def model_turn(self) -> datetime:
        self._t += timedelta(milliseconds=self._rng.randint(350, 1600))
        return self._t

    def tool_call(self) -> datetime:
        self._t += timedelta(milliseconds=self._rng.randint(15, 300))
        return self._t


class WallClock:
    """Real time (online runs)."""

    def __init__(self) -> None:
        self.start = utcnow()

    def now(self) -> datetime:
        return utcnow()

    model_turn = now
    tool_call = now


def trace_id_for(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}"


class Episode:
    """One agent episode: the tool loop around a policy.

    `advance()` asks the policy for the next turn, runs its tool calls and returns the steps it added;
    it returns [] once `done`. A crash (the policy raising) ends the episode with `error` set.
    """

    def __init__(
        self,
        task: Task,
        policy: Policy,
        *,
        trace_id: str,
        seed: int,
        agent_id: str = "agent-0",
        toolbox: ToolBox | None = None,
        clock: Clock | None = None,
        max_turns: int = 16,
        price_per_1k_tokens: float = 0.01,
        start: datetime | None = None,
    ) -> None:
        self.task = task
        self.policy = policy
        self.trace_id = trace_id
        self.agent_id = agent_id
        self.toolbox = toolbox or ToolBox(get_world(task.world_seed))
        self.plan: Plan = policy.plan(task, episode_seed(seed, trace_id))
        self.clock: Clock = clock or SimClock(start or EPOCH, self.plan.seed)
        self.started = self.clock.now()
        self.max_turns = max_turns
        self.price = price_per_1k_tokens
        self.history: list[Exchange] = []
        self.steps: list[TraceStep] = []
        self.final_output = ""
        self.error: str | None = None
        self.done = False
        self.meter = TokenMeter()
        self.meter.add_context({"role": "system", "content": SYSTEM_PROMPT})
        self.meter.add_context({"role": "user", "content": task.question})

    def advance(self) -> list[TraceStep]:
        if self.done:
            return []
        if len(self.history) >= self.max_turns:
            self.error = f"no final answer after {self.max_turns} turns"
            self.done = True
            return []
        try:
            action = self.policy.act(self.task, self.plan, self.history)
        except AgentCrash as exc:
            self.error = f"AgentCrash: {exc}"
            self.done = True
            return []
        return self._apply(action)

    def _apply(self, action: Action) -> list[TraceStep]:
        t = self.clock.model_turn()
        new: list[TraceStep] = []
        self.meter.bill_turn(action_message(action))
        if action.reasoning:
            new.append(TraceStep(step_type="reasoning", content=action.reasoning, timestamp=t))
        ex = Exchange(reasoning=action.reasoning, calls=list(action.calls))
        if action.final is not None:
            new.append(TraceStep(step_type="output", content=action.final, timestamp=t))
            ex.final = action.final
            self.final_output = action.final
            self.done = True
        else:
            for call in action.calls:
                new.append(TraceStep(step_type="tool_call", tool_name=call.name, tool_args=call.args,
                                     tool_call_id=call.id, timestamp=t))
                result = self.toolbox.execute(call.name, call.args)
                t = self.clock.tool_call()
                new.append(TraceStep(step_type="observation", tool_name=call.name, tool_call_id=call.id,
                                     tool_result=result.text, timestamp=t))
                ex.results.append(result.text)
                self.meter.add_context({"role": "tool", "content": result.text})
        self.history.append(ex)
        self.steps.extend(new)
        return new

    def run(self) -> AgentTrace:
        while not self.done:
            self.advance()
        return self.trace()

    def trace(self, *, wall_time_seconds: float | None = None) -> AgentTrace:
        end = self.steps[-1].timestamp if self.steps else self.started
        wall = wall_time_seconds if wall_time_seconds is not None else (end - self.started).total_seconds()
        success = self.error is None and self.done and answers_match(self.final_output, self.task.ground_truth)
        tokens = self.meter.total
        return AgentTrace(
            trace_id=self.trace_id,
            task_id=self.task.task_id,
            agent_id=self.agent_id,
            input_text=self.task.question,
            system_prompt=SYSTEM_PROMPT,
            tools=list(TOOL_SPECS),
            steps=list(self.steps),
            final_output=self.final_output,
            success=success,
            error=self.error,
            model_id=self.policy.model_id,
            total_tokens=tokens,
            wall_time_seconds=max(0.0, wall),
            ground_truth=self.task.ground_truth,
            expected_steps=self.task.expected_steps,
            cost_usd=round(tokens / 1000 * self.price, 6),
            workload=self.task.family,  # the sim's agents do one job per task family
            metadata={
                "family": self.task.family,
                "split": self.task.split,
                "error_mode": self.plan.error_mode,
                "policy": self.policy.name,
                "subtype": self.task.subtype,
            },
            timestamp=self.started,
        )


def run_episode(
    task: Task,
    policy: Policy,
    *,
    seed: int = 0,
    trace_id: str | None = None,
    agent_id: str = "agent-0",
    start: datetime | None = None,
    max_turns: int = 16,
    price_per_1k_tokens: float = 0.01,
) -> AgentTrace:
    """Run one episode offline (simulated clock) and return its trace."""
    ep = Episode(
        task,
        policy,
        trace_id=trace_id or trace_id_for(f"sim{seed}", 0),
        seed=seed,
        agent_id=agent_id,
        start=start,
        max_turns=max_turns,
        price_per_1k_tokens=price_per_1k_tokens,
    )
    return ep.run()


# --- offline batches ------------------------------------------------------------------------------


@dataclass
class RunReport:
    """Counts over a batch of traces."""

    n: int = 0
    n_success: int = 0
    elapsed_s: float = 0.0
    by_mode: Counter[str] = field(default_factory=Counter)
    success_by_mode: Counter[str] = field(default_factory=Counter)
    by_family: Counter[str] = field(default_factory=Counter)
    success_by_family: Counter[str] = field(default_factory=Counter)
    total_tokens: int = 0
    cost_usd: float = 0.0
    out_path: str | None = None

    def add(self, trace: AgentTrace) -> None:
        self.n += 1
        mode = trace.metadata.get("error_mode", "unknown")
        fam = trace.metadata.get("family", "unknown")
        self.by_mode[mode] += 1
        self.by_family[fam] += 1
        self.total_tokens += trace.total_tokens
        self.cost_usd += trace.cost_usd
        if trace.success:
            self.n_success += 1
            self.success_by_mode[mode] += 1
            self.success_by_family[fam] += 1

    @property
    def success_rate(self) -> float:
        return self.n_success / self.n if self.n else 0.0

    @property
    def clean_rate(self) -> float:
        return self.by_mode.get("none", 0) / self.n if self.n else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_success": self.n_success,
            "success_rate": round(self.success_rate, 6),
            "clean_rate": round(self.clean_rate, 6),
            "elapsed_s": round(self.elapsed_s, 4),
            "by_mode": dict(sorted(self.by_mode.items())),
            "success_by_mode": dict(sorted(self.success_by_mode.items())),
            "by_family": dict(sorted(self.by_family.items())),
            "success_by_family": dict(sorted(self.success_by_family.items())),
            "total_tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "out_path": self.out_path,
        }

    def format(self) -> str:
        rate = self.n / self.elapsed_s if self.elapsed_s > 0 else float("inf")
        lines = [
            f"{self.n} traces in {self.elapsed_s:.2f} s ({rate:,.0f}/s)"
            + (f" -> {self.out_path}" if self.out_path else ""),
            f"success rate: {self.success_rate:.1%} ({self.n_success}/{self.n}); "
            f"clean (no injected error): {self.clean_rate:.1%}",
            f"tokens: {self.total_tokens:,}  cost: ${self.cost_usd:,.4f}",
            "error modes:",
        ]
        for mode, count in sorted(self.by_mode.items(), key=lambda kv: (-kv[1], kv[0])):
            ok = self.success_by_mode.get(mode, 0)
            lines.append(f"  {mode:<20} {count:>6}  ({count / self.n:6.1%})  succeeded {ok}")
        lines.append("families:")
        for fam, count in sorted(self.by_family.items()):
            ok = self.success_by_family.get(fam, 0)
            lines.append(f"  {fam:<20} {count:>6}  success {ok / count:6.1%}")
        return "\n".join(lines)


def write_jsonl(traces: Iterable[AgentTrace], fp: IO[str]) -> int:
    n = 0
    for t in traces:
        fp.write(t.model_dump_json())
        fp.write("\n")
        n += 1
    return n


def _pick_tasks(suite: Suite, n: int, seed: int, split: str, families: Sequence[str] | None) -> list[Task]:
    return suite.sample(random.Random(stable_int("tasks", seed)), n, split=split, families=families)


def iter_offline(
    n: int,
    policy: Policy,
    *,
    seed: int = 0,
    world_seed: int = 0,
    split: str = "train",
    families: Sequence[str] | None = None,
    start: datetime = EPOCH,
    rate: float = 10.0,
    max_turns: int = 16,
    price_per_1k_tokens: float = 0.01,
    agents: int = 8,
) -> Iterable[AgentTrace]:
    """`n` traces, deterministic in every field for a given seed (trace ids ``sim<seed>-<i>``)."""
    suite = get_suite(world_seed)
    tasks = _pick_tasks(suite, n, seed, split, families)
    arrivals = random.Random(stable_int("arrivals", seed))
    t = start
    for i, task in enumerate(tasks):
        t += timedelta(milliseconds=round(arrivals.expovariate(rate) * 1000))
        ep = Episode(
            task,
            policy,
            trace_id=trace_id_for(f"sim{seed}", i),
            seed=seed,
            agent_id=f"agent-{i % agents}",
            toolbox=ToolBox(suite.world),
            start=t,
            max_turns=max_turns,
            price_per_1k_tokens=price_per_1k_tokens,
        )
        yield ep.run()


def run_offline(
    n: int,
    policy: Policy,
    *,
    out: str | Path | None = None,
    on_trace: Callable[[AgentTrace], None] | None = None,
    **kwargs: Any,
) -> RunReport:
    """Run `n` episodes offline; write them to `out` (JSONL) if given; return the counts."""
    report = RunReport(out_path=str(out) if out else None)
    t0 = time.perf_counter()
    fp = open(out, "w", encoding="utf-8") if out else None  # noqa: SIM115 - closed below
    try:
        for trace in iter_offline(n, policy, **kwargs):
            report.add(trace)
            if fp:
                fp.write(trace.model_dump_json())
                fp.write("\n")
            if on_trace:
                on_trace(trace)
    finally:
        if fp:
            fp.close()
    report.elapsed_s = time.perf_counter() - t0
    return report


# --- the fleet ------------------------------------------------------------------------------------


class Emitter(Protocol):
    """What the fleet needs of `stillflow.sdk.TraceEmitter`."""

    async def emit_step(self, *, trace_id: str, task_id: str, seq: int, step: TraceStep,
                        agent_id: str | None = None) -> Any: ...

    async def emit_outcome(self, outcome: TraceOutcomeEvent) -> Any: ...


@dataclass
class FleetReport(RunReport):
    started: int = 0
    agent_errors: int = 0  # episodes that died outside the policy (connection errors, ...)
    target_rate: float = 0.0
    traces: list[AgentTrace] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "started": self.started, "agent_errors": self.agent_errors,
                "target_rate": self.target_rate}

    def format(self) -> str:
        head = (f"fleet: started {self.started}, finished {self.n}, agent errors {self.agent_errors}, "
                f"achieved {self.n / self.elapsed_s if self.elapsed_s else 0:.1f}/s (target {self.target_rate:g}/s)")
        return head + "\n" + super().format()

    def progress_line(self, elapsed: float, in_flight: int) -> str:
        rate = self.n / elapsed if elapsed > 0 else 0.0
        return (
            f"[{elapsed:6.1f}s] started {self.started}  done {self.n}  in flight {in_flight}  "
            f"rate {rate:.1f}/s (target {self.target_rate:g}/s)  success {self.success_rate:.1%}  "
            f"agent errors {self.agent_errors}"
        )


async def run_fleet(
    policy: Policy | None = None,
    *,
    agents: int = 8,
    rate: float = 5.0,
    duration_s: float = 60.0,
    max_traces: int | None = None,
    seed: int = 0,
    world_seed: int = 0,
    split: str = "train",
    families: Sequence[str] | None = None,
    emitter: Emitter | None = None,
    out: str | Path | None = None,
    run_id: str | None = None,
    turn_delay_s: float = 0.0,
    max_turns: int = 16,
    price_per_1k_tokens: float = 0.01,
    openai_client: Any = None,
    model: str = "teacher",
    progress: Callable[[str], None] | None = None,
    progress_interval_s: float = 2.0,
    keep_traces: bool = False,
    task_pool: int | None = None,
) -> FleetReport:
    """Start traces at `rate`/s for `duration_s` (or until `max_traces`) on `agents` concurrent agents.

    In-process (default): each agent runs `policy` in the tool loop, emitting every step as it
    happens and the outcome at the end; `turn_delay_s` is its think time per turn. OpenAI mode
    (`openai_client` given): each agent talks to that chat-completions endpoint and runs the tool
    calls locally (`sim.openai_agent.run_openai_episode`). Trace ids are ``<run_id>-<i>``; the run id
    is random unless given (so two fleets never collide on the topics). `task_pool` draws every task
    from a fixed set of that many (seeded), so tasks recur the way a narrow production job repeats
    itself; several traces of one task are what preference pairs are mined from.
    """
    if policy is None and openai_client is None:
        raise ValueError("give a policy (in-process) or an openai client (OpenAI mode)")
    if agents < 1 or rate <= 0:
        raise ValueError("agents must be >= 1 and rate > 0")
    import uuid

    run_id = run_id or f"fleet-{uuid.uuid4().hex[:10]}"
    suite = get_suite(world_seed)
    report = FleetReport(target_rate=rate, out_path=str(out) if out else None)
    queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=agents)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    fp = open(out, "w", encoding="utf-8") if out else None  # noqa: SIM115 - closed below
    in_flight = 0
    pool = (suite.sample(random.Random(stable_int("fleet-pool", seed)), task_pool, split=split, families=families)
            if task_pool else None)

    async def schedule() -> None:
        i = 0
        while max_traces is None or i < max_traces:
            due = t0 + i / rate
            if due - t0 >= duration_s:
                break
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await queue.put(i)
            i += 1
        for _ in range(agents):
            await queue.put(None)

    async def one(i: int, agent_id: str) -> AgentTrace:
        # the task of trace i depends on (seed, run id, i) only, not on which agent is free first
        rng = random.Random(stable_int("fleet-task", seed, run_id, i))
        task = pool[rng.randrange(len(pool))] if pool else suite.sample(rng, 1, split=split, families=families)[0]
        trace_id = trace_id_for(run_id, i)
        if openai_client is not None:
            from sim.openai_agent import run_openai_episode

            return await run_openai_episode(
                openai_client, task, model=model, trace_id=trace_id, agent_id=agent_id, emitter=emitter,
                max_turns=max_turns, price_per_1k_tokens=price_per_1k_tokens, world=suite.world,
            )
        assert policy is not None
        ep = Episode(task, policy, trace_id=trace_id, seed=seed, agent_id=agent_id, toolbox=ToolBox(suite.world),
                     clock=WallClock(), max_turns=max_turns, price_per_1k_tokens=price_per_1k_tokens)
        t_start = time.perf_counter()
        while not ep.done:
            new = ep.advance()
            if emitter is not None:
                first = len(ep.steps) - len(new)
                for seq, step in enumerate(new, first):
                    await emitter.emit_step(trace_id=trace_id, task_id=task.task_id, seq=seq, step=step,
                                            agent_id=agent_id)
            if turn_delay_s and not ep.done:
                await asyncio.sleep(turn_delay_s)
            elif not ep.done:
                await asyncio.sleep(0)
        trace = ep.trace(wall_time_seconds=time.perf_counter() - t_start)
        if emitter is not None:
            await emitter.emit_outcome(TraceOutcomeEvent.from_trace(trace))
        return trace

    async def agent(k: int) -> None:
        nonlocal in_flight
        agent_id = f"agent-{k}"
        while True:
            i = await queue.get()
            if i is None:
                return
            report.started += 1
            in_flight += 1
            try:
                trace = await one(i, agent_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an agent that dies outside the policy: count it, keep going
                report.agent_errors += 1
                if progress:
                    progress(f"agent {agent_id}: episode {i} failed: {type(exc).__name__}: {exc}")
                continue
            finally:
                in_flight -= 1
            report.add(trace)
            if keep_traces:
                report.traces.append(trace)
            if fp:
                fp.write(trace.model_dump_json())
                fp.write("\n")

    async def ticker() -> None:
        while True:
            await asyncio.sleep(progress_interval_s)
            if progress:
                progress(report.progress_line(loop.time() - t0, in_flight))

    tick = asyncio.create_task(ticker())
    try:
        await asyncio.gather(schedule(), *(agent(k) for k in range(agents)))
    finally:
        tick.cancel()
        if fp:
            fp.close()
    report.elapsed_s = loop.time() - t0
    if progress:
        progress(report.progress_line(report.elapsed_s, 0))
    return report



# --- the SDK's collector protocol ---------------------------------------------------------------


@dataclass(frozen=True)
class AgentResult:
    output: str
    success: bool


class SimAgent:
    """A sim episode in the shape `stillflow.sdk.TraceCollector` records: `run(task)` drives
    `step(state)` once per trace step and returns `output` and `success`; a crash raises.

    >>> agent = SimAgent(policy, task, trace_id="t-1")
    >>> trace = await TraceCollector(emitter, tools=TOOL_SPECS, system_prompt=SYSTEM_PROMPT).collect(
    ...     agent, task, trace_id=agent.trace_id, metadata=agent.metadata, reraise=False)

    (The collector does not know token counts or cost; `Episode`/`run_fleet` record those.)
    """

    def __init__(
        self,
        policy: Policy,
        task: Task,
        *,
        trace_id: str,
        seed: int = 0,
        agent_id: str = "agent-0",
        max_turns: int = 16,
        turn_delay_s: float = 0.0,
    ) -> None:
        self.trace_id = trace_id
        self.agent_id = agent_id
        self.model_id = policy.model_id
        self.turn_delay_s = turn_delay_s
        self.episode = Episode(task, policy, trace_id=trace_id, seed=seed, agent_id=agent_id, clock=WallClock(),
                               max_turns=max_turns)
        self.metadata = {"family": task.family, "split": task.split, "error_mode": self.episode.plan.error_mode,
                         "policy": policy.name, "subtype": task.subtype}
        self.workload = task.family  # read by TraceCollector

    async def step(self, pending: deque[TraceStep]) -> TraceStep:
        """The next step the agent took (the collector records each one as it returns)."""
        return pending.popleft()

    async def run(self, task: Task) -> AgentResult:
        ep = self.episode
        pending: deque[TraceStep] = deque()
        while True:
            if not pending:
                if ep.done:
                    break
                pending.extend(ep.advance())
                if self.turn_delay_s and not ep.done:
                    await asyncio.sleep(self.turn_delay_s)
                continue
            await self.step(pending)
        if ep.error is not None:
            raise AgentCrash(ep.error)
        return AgentResult(ep.final_output, answers_match(ep.final_output, task.ground_truth))
