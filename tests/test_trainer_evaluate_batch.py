"""The evaluation's episodes in lockstep: each turn of the episodes in flight is generated in one batch, and
every episode comes out as it does alone (greedy: the same turns, the same confidences)."""

from __future__ import annotations

import pytest

from sim.environment import SimEvalEnvironment
from trainer.settings import StudentSection

pytest.importorskip("transformers")

TINY = StudentSection(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96, vocab_size=500)


@pytest.fixture(scope="module")
def runtime():
    import torch

    from tests.trainer_data import generate_sim_data
    from trainer.data import from_events
    from trainer.evaluate import StudentRuntime
    from trainer.student import tiny_student

    examples, pairs, _ = generate_sim_data(n_tasks=12, runs_per_task=1, seed=5)
    data = from_events(examples, pairs)
    torch.manual_seed(0)
    student = tiny_student([{"messages": r.messages, "tools": r.tools} for r in data.sft], TINY, seed=3)
    student.model.eval()
    return StudentRuntime(student.model, student.tokenizer, codec=student.codec, fmt=student.fmt)


def test_a_batch_gives_each_request_its_turn_alone(runtime) -> None:
    from trainer.environment import task_opening, task_tools

    env = SimEvalEnvironment()
    tasks = env.sample_tasks(6, seed=2)
    requests = [(task_opening(t), task_tools(t)) for t in tasks]
    alone = [runtime.generate(m, t, 20) for m, t in requests]
    together = runtime.generate_batch(requests, 20)
    assert len({len(runtime.encode(*r)) for r in requests}) > 1  # prompts of different lengths: padding is used
    for a, b in zip(alone, together, strict=True):
        assert (a.text, a.prompt_tokens, a.completion_tokens, a.finished) == \
            (b.text, b.prompt_tokens, b.completion_tokens, b.finished)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_lockstep_episodes_equal_one_by_one_in_task_order(runtime) -> None:
    from trainer.evaluate import run_student_episode, run_student_episodes

    env = SimEvalEnvironment()
    tasks = env.sample_tasks(7, seed=4)
    one = [run_student_episode(runtime, env, t, max_turns=2, max_new_tokens=16, workload=t.family) for t in tasks]
    done: list[int] = []
    batched = run_student_episodes(runtime, env, tasks, batch_size=3, max_turns=2, max_new_tokens=16,
                                   workloads=[t.family for t in tasks], on_done=lambda i, ep: done.append(i))
    assert sorted(done) == list(range(7))
    for a, b in zip(one, batched, strict=True):
        assert a.task.task_id == b.task.task_id and a.trace.workload == b.trace.workload
        assert [s.model_dump(exclude={"timestamp"}) for s in a.trace.steps] == \
            [s.model_dump(exclude={"timestamp"}) for s in b.trace.steps]
        assert (a.trace.final_output, a.trace.error) == (b.trace.final_output, b.trace.error)
        assert a.turn_confidences == pytest.approx(b.turn_confidences, abs=1e-4)


def test_a_batch_that_raises_is_a_crash_of_each_episode_in_it() -> None:
    from trainer.evaluate import run_student_episodes

    class Broken:
        def generate_batch(self, requests, max_new_tokens):
            raise RuntimeError("out of memory")

    env = SimEvalEnvironment()
    eps = run_student_episodes(Broken(), env, env.sample_tasks(3, seed=1), batch_size=2)
    assert [e.trace.error for e in eps] == ["generation failed: RuntimeError: out of memory"] * 3
