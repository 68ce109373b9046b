"""The router's batched student generation: a request's turn does not depend on what else is in its batch, the
batcher forms batches while one runs, keeps versions apart, and refuses beyond its bound instead of queueing."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest

from router.runtime import StudentBatcher, StudentBusy, StudentModel, load_version
from tests.router_student import AFTER_CALL, ANSWER, OPENING, TOOLS, memorised_student, registry_with

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudentModel, StudentModel]:
    reg = registry_with(tmp_path_factory.mktemp("registry"), memorised_student(), 2)
    return load_version(reg, "v0001"), load_version(reg, "v0002")


def _requests(n: int = 32) -> list[tuple[list[dict], list[dict] | None, int]]:
    """32 requests of different lengths: the two memorised turns, and variants the student never saw (longer
    or shorter questions, extra history, no tools), with different token caps."""
    out = []
    for i in range(n):
        base = copy.deepcopy(OPENING if i % 2 == 0 else AFTER_CALL)
        if i % 4 in (2, 3):
            base[1]["content"] += " " + " ".join(["please"] * (i % 7 + 1))
        if i % 5 == 4:
            base = [*base, {"role": "user", "content": f"and item {i}?"}]
        tools = None if i % 8 == 7 else TOOLS
        out.append((base, tools, 24 + (i % 3) * 8))
    return out


def test_32_requests_batched_give_the_turns_they_get_alone(students) -> None:
    model, _ = students
    reqs = _requests()
    alone = [model.generate(m, t, cap) for m, t, cap in reqs]
    batched = model.generate_batch(reqs)
    assert [b.batch_size for b in batched] == [32] * 32
    for a, b in zip(alone, batched, strict=True):
        assert a.text == b.text and a.finished == b.finished and a.completion_tokens == b.completion_tokens
        assert a.prompt_tokens == b.prompt_tokens
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4
    assert any(a.text.strip() == ANSWER or ANSWER in a.text for a in alone)  # the memorised turn is among them
    caps = {cap for _m, _t, cap in reqs}
    assert len(caps) == 3 and all(b.completion_tokens <= cap for b, (_m, _t, cap) in zip(batched, reqs, strict=True))


async def test_the_batcher_forms_batches_while_one_runs(students) -> None:
    model, _ = students
    reqs = _requests()
    alone = [model.generate(m, t, cap) for m, t, cap in reqs]
    batcher = StudentBatcher(batch_size=16, max_wait_s=0.001, max_queue=32)
    sizes: list[int] = []
    batcher.on_batch = lambda size, _s: sizes.append(size)
    try:
        turns = await asyncio.gather(*(batcher.generate(model, m, t, cap) for m, t, cap in reqs))
    finally:
        batcher.shutdown()
    assert [t.text for t in turns] == [a.text for a in alone]
    assert sum(sizes) == 32 and max(sizes) == 16 and len(sizes) <= 4  # not one at a time
    assert batcher.pending == 0


async def test_versions_are_never_mixed_in_a_batch(students) -> None:
    v1, v2 = students
    reqs = _requests(12)
    batcher = StudentBatcher(batch_size=16, max_wait_s=0.005, max_queue=32)
    seen: list[int] = []
    batcher.on_batch = lambda size, _s: seen.append(size)
    try:
        calls = [batcher.generate(v1 if i % 2 else v2, m, t, cap) for i, (m, t, cap) in enumerate(reqs)]
        turns = await asyncio.gather(*calls)
    finally:
        batcher.shutdown()
    assert len(seen) >= 2 and sum(seen) == 12
    for i, ((m, t, cap), turn) in enumerate(zip(reqs, turns, strict=True)):
        own = (v1 if i % 2 else v2).generate(m, t, cap)
        assert turn.text == own.text


async def test_beyond_the_bound_requests_are_refused_at_once(students) -> None:
    model, _ = students
    batcher = StudentBatcher(batch_size=2, max_wait_s=0.0, max_queue=1)  # 2 running + 1 waiting
    m, t, cap = _requests(1)[0]
    try:
        results = await asyncio.wait_for(asyncio.gather(
            *(batcher.generate(model, m, t, cap) for _ in range(10)), return_exceptions=True), 60)
    finally:
        batcher.shutdown()
    busy = [r for r in results if isinstance(r, StudentBusy)]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert len(done) == 3 and len(busy) == 7 and "limit 3" in str(busy[0])
    assert batcher.pending == 0


async def test_a_failing_batch_fails_each_of_its_requests_and_the_batcher_goes_on(students, monkeypatch) -> None:
    model, _ = students
    batcher = StudentBatcher(batch_size=4, max_wait_s=0.0, max_queue=8)
    m, t, cap = _requests(1)[0]
    real = model.generate_batch
    calls = {"n": 0}

    def flaky(requests):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(requests)

    monkeypatch.setattr(model, "generate_batch", flaky)
    try:
        first = await asyncio.gather(*(batcher.generate(model, m, t, cap) for _ in range(3)), return_exceptions=True)
        again = await batcher.generate(model, m, t, cap)
    finally:
        batcher.shutdown()
    assert all(isinstance(r, RuntimeError) for r in first)
    assert again.text == real([(m, t, cap)])[0].text


def test_alone_is_a_batch_of_one(students, tmp_path: Path) -> None:
    model, _ = students
    m, t, cap = _requests(1)[0]
    assert model.generate(m, t, cap).batch_size == 1


def test_torch_threads_are_set_only_for_the_routers_own_process() -> None:
    """A router built inside another program (this test session) leaves torch's process-wide threads alone:
    setting them in the service once slowed every later test of the session to one thread."""
    import os

    import torch

    from router.runtime import default_threads
    from router.service import RouterService
    from router.settings import RouterSettings, with_router

    before = torch.get_num_threads()
    RouterService(with_router(RouterSettings(), kafka=False, threads=1, teacher_only=True))
    StudentBatcher()
    assert torch.get_num_threads() == before
    assert default_threads("cpu") == max(1, (os.cpu_count() or 2) // 2) and default_threads("cuda") is None
