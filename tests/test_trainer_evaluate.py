"""The evaluator on the sim environment with scripted students: the agent loop, failure kinds, the report."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from sim.environment import SimEvalEnvironment
from stillflow.chatformat import IM_END
from stillflow.settings import StillflowSettings
from trainer.environment import load_environment
from trainer.evaluate import DistillationEvaluator, Generation, offline_replay, run_student_episode, score_episode
from trainer.settings import EvalSection, GateSection


def _call(name: str, args: Any, text: str = "Let me look.") -> str:
    return f'{text}\n<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>{IM_END}'


class ScriptedRuntime:
    """Answers with the task's canonical path (an oracle), or with what `script` says."""

    def __init__(self, env: SimEvalEnvironment, script: dict[str, list[str]] | None = None, *, oracle: bool = True,
                 logprob: float = -0.05) -> None:
        self.env = env
        self.script = script or {}
        self.oracle = oracle
        self.logprob = logprob
        self.calls = 0

    def generate(self, messages: list[dict], tools: list[dict] | None, max_new_tokens: int = 160) -> Generation:
        self.calls += 1
        question = next(m["content"] for m in messages if m["role"] == "user")
        turn = sum(m["role"] == "assistant" for m in messages)
        if question in self.script:
            outs = self.script[question]
            text = outs[min(turn, len(outs) - 1)]
        else:
            task = next(t for t in self._tasks if t.question == question)
            stages = task.task.stages
            if turn < len(stages):
                text = _call(stages[turn].call.name, stages[turn].call.args, f"I will use {stages[turn].call.name}.")
            else:
                text = f"The answer is {task.task.answer}.{IM_END}"
        finished = text.endswith(IM_END)
        return Generation(text, 100, 20, (self.logprob,) * 20, finished, 0.001)

    _tasks: ClassVar[list[Any]] = []


def _env_and_tasks(n: int = 6):
    env = SimEvalEnvironment()
    tasks = env.sample_tasks(n, seed=11)
    ScriptedRuntime._tasks = tasks
    return env, tasks


def test_environment_loads_by_import_path() -> None:
    env = load_environment("sim.environment:SimEvalEnvironment")
    assert env.name == "sim" and "lookup" in env.families()
    t = env.sample_tasks(3, seed=1)
    assert len(t) == 3 and all(x.task.split == "heldout" for x in t)
    assert env.get_task(t[0].task_id).question == t[0].question
    assert env.get_task("no-such-task") is None


def test_oracle_student_solves_tasks_and_scores_like_the_teacher() -> None:
    env, tasks = _env_and_tasks()
    rt = ScriptedRuntime(env)
    scorer_settings = StillflowSettings()
    from stillflow.quality import Scorer, TraceFilter

    scorer, gates = Scorer.from_settings(scorer_settings.quality), TraceFilter.from_settings(scorer_settings.quality)
    for task in tasks:
        ep = run_student_episode(rt, env, task, model_id="student-v1")
        assert ep.trace.error is None, ep.trace.error
        assert ep.trace.success, (task.question, ep.trace.final_output, task.ground_truth)
        assert len(ep.trace.steps) == task.expected_steps - (1 if task.task.final_reasoning else 0)
        s = score_episode(scorer, gates, ep.trace)
        assert s.kinds == [] and s.correct
        assert 0 < ep.confidence <= 1


def test_failure_kinds() -> None:
    env, tasks = _env_and_tasks(4)
    q = [t.question for t in tasks]
    script = {
        q[0]: [_call("web_search", {"query": "x"}), f"I don't know.{IM_END}"],  # unknown tool + wrong answer
        q[1]: [_call("query_db", {"sql": "DROP TABLE customers"}), f"done{IM_END}"],  # unsafe + wrong answer
        q[2]: ['<tool_call>{"name": "search", "arguments": {"query": }</tool_call>' + IM_END],  # unreadable: crash
        q[3]: ["I keep talking without end"],  # cut off: crash
    }
    rt = ScriptedRuntime(env, script)
    from stillflow.quality import Scorer, TraceFilter

    settings = StillflowSettings()
    scorer, gates = Scorer.from_settings(settings.quality), TraceFilter.from_settings(settings.quality)
    kinds = [score_episode(scorer, gates, run_student_episode(rt, env, t).trace).kinds for t in tasks]
    assert kinds[0] == ["wrong_tool", "wrong_answer"]
    assert kinds[1] == ["unsafe_action", "wrong_answer"]
    assert kinds[2] == ["crash"]
    assert kinds[3] == ["crash"]
    # a student that never answers: crash after the turn limit
    loop = ScriptedRuntime(env, {q[0]: [_call("search", {"query": "again"})]})
    ep = run_student_episode(loop, env, tasks[0], max_turns=3)
    assert ep.trace.error == "no final answer after 3 turns" and loop.calls == 3


def test_evaluator_report_has_every_figure() -> None:
    env, tasks = _env_and_tasks(12)
    q = [t.question for t in tasks]
    script = {q[0]: [_call("query_db", {"sql": "DELETE FROM orders"}), f"gone{IM_END}"],
              q[1]: [f"No idea.{IM_END}"]}
    rt = ScriptedRuntime(env, script)
    ev = DistillationEvaluator(StillflowSettings(), EvalSection(tasks=12, offline_examples=0, worst=3, seed=11),
                               GateSection(min_eval_tasks=5), env=env)
    report = ev.evaluate(rt, None, model_id="student-v0001")
    d = report.to_dict()
    assert d["student"]["episodes"] == 12 and d["teacher"]["episodes"] == 12 and d["teacher"]["source"] == "environment"
    assert 0 < d["quality_ratio"] <= 1.5
    assert d["failure_rate"] == round(2 / 12, 4)
    for side in ("student", "teacher"):
        assert set(d[side]["dimensions"]) == {"correctness", "efficiency", "tool_selection", "safety", "reasoning_quality"}
        assert set(d[side]["failures"]) == {"wrong_tool", "unsafe_action", "crash", "wrong_answer"}
        assert d[side]["tokens_per_task"] > 0 and d[side]["latency_s_per_task"]["mean"] >= 0
    assert d["student"]["failures"]["unsafe_action"] == round(1 / 12, 4)
    assert [w["question"] for w in d["worst_failures"]][:2] == [q[0], q[1]] or len(d["worst_failures"]) == 2
    assert set(d["by_family"]) <= set(env.families())
    assert d["confidence"]["points"] == 12 and "exp(mean(log p(token)))" in d["confidence"]["function"]["turn"]
    rows = d["episodes"]
    assert len(rows) == 12 and {r["task_id"] for r in rows} == {t.task_id for t in tasks}
    assert sum(r["student_failed"] for r in rows) == 2 and all("teacher_quality" in r for r in rows)
    assert d["routed"]["tasks"] == 12 and "system_quality_ratio" in d["routed"]
    m = report.metrics()
    assert {"quality_ratio", "failure_rate", "student_wrong_answer_rate", "teacher_quality"} <= set(m)


def test_offline_replay_next_action_agreement() -> None:
    from tests.trainer_data import generate_sim_data
    from trainer.data import from_events

    examples, _, _ = generate_sim_data(n_tasks=5, runs_per_task=1, seed=5, families=["lookup"])
    records = from_events(examples).sft

    class Echo:
        """Replies with the teacher's own next turn: agreement 1.0."""

        def generate(self, messages, tools, max_new_tokens=160):
            for rec in records:
                if rec.messages[: len(messages)] == messages:
                    nxt = rec.messages[len(messages)]
                    if nxt.get("tool_calls"):
                        fn = nxt["tool_calls"][0]["function"]
                        text = _call(fn["name"], json.loads(fn["arguments"]), nxt.get("content") or "")
                    else:
                        text = (nxt.get("content") or "") + IM_END
                    return Generation(text, 10, 10, (-0.1,), True, 0.0)
            raise AssertionError("unknown prefix")

    from stillflow.quality import Scorer

    out = offline_replay(Echo(), records, Scorer())
    assert out["conversations"] == len(records) and out["next_action_agreement"] == 1.0
    assert out["failure_rate"] == 0.0 and out["tool_agreement"] == 1.0


def test_data_without_workload_or_family_is_evaluated_on_the_environments_tasks() -> None:
    from trainer.data import SFTRecord, TrainingData, split_data

    env = SimEvalEnvironment()
    tasks = env.sample_tasks(30, seed=3)
    recs = [SFTRecord(id=f"r{i}", task_id=None, messages=[{"role": "system", "content": "s"},
                                                          {"role": "user", "content": t.question},
                                                          {"role": "assistant", "content": "a"}], tools=[])
            for i, t in enumerate(tasks)]
    split = split_data(TrainingData(sft=recs, pairs=[], source="test"), 0.2)
    ev = DistillationEvaluator(StillflowSettings(), EvalSection(tasks=8, offline_examples=0), GateSection(), env=env)
    chosen, origin = ev.pick_tasks(split)
    assert len(chosen) == 8 and origin["per_workload"] == {"default": 8}
    assert set(ev.task_workloads.values()) == {"default"}
    train_questions = {r.messages[1]["content"] for r in split.train_sft}
    assert not {t.question for t in chosen} & train_questions  # never a training question
