"""The task suite: families, sizes, stable ids and answers, the split, and canonical paths that work."""

from __future__ import annotations

import random
import re

import pytest

from sim.tasks import FAMILIES, HELDOUT_FRACTION, Suite, get_suite, split_of
from sim.tools import ERROR_PREFIX, ToolBox
from sim.world import World, get_world
from stillflow.answers import extract_numbers, normalise
from stillflow.contracts import NAME_PATTERN

EXPECTED_STEPS = {"lookup": 4, "search_read": 7, "query_compute": 7, "multi_hop": 10, "no_tools": 2, "recovery": 7}


@pytest.fixture(scope="module")
def suite() -> Suite:
    return get_suite(0)


def test_six_families_each_with_at_least_10000_instances(suite: Suite) -> None:
    assert tuple(suite.families) == FAMILIES
    assert len(FAMILIES) >= 6
    for name, size in suite.sizes().items():
        assert size >= 10_000, name


@pytest.mark.parametrize("family", FAMILIES)
def test_10000_distinct_instances(suite: Suite, family: str) -> None:
    fam = suite.families[family]
    tasks = [fam.instance(i) for i in range(10_000)]
    assert len({t.question for t in tasks}) == 10_000
    assert len({t.task_id for t in tasks}) == 10_000
    assert all(re.match(NAME_PATTERN, t.task_id) for t in tasks[:200])
    assert {t.expected_steps for t in tasks} == {EXPECTED_STEPS[family]}


def test_task_ids_look_like_family_and_index(suite: Suite) -> None:
    t = suite.instance("lookup", 123)
    assert t.task_id == "lookup-000123"
    assert suite.get("lookup-000123") == t
    for bad in ("lookup-999999", "nope-000001", "lookup", "lookup-12x", "lookup-123"):
        with pytest.raises(KeyError):
            suite.get(bad)
    with pytest.raises(IndexError):
        suite.instance("lookup", suite.families["lookup"].size)


def test_same_task_id_same_question_and_answer_in_a_fresh_build() -> None:
    fresh = Suite(World.build(0))
    cached = get_suite(0)
    rng = random.Random(5)
    for family in FAMILIES:
        for _ in range(30):
            i = rng.randrange(fresh.families[family].size)
            assert fresh.instance(family, i) == cached.instance(family, i)


def test_answers_do_not_depend_on_the_run_seed_but_do_on_the_world_seed() -> None:
    other = get_suite(3)
    t3 = other.instance("lookup", 5)
    t0 = get_suite(0).instance("lookup", 5)
    assert t3.task_id == "w3.lookup-000005" and t3.world_seed == 3
    assert other.get("w3.lookup-000005") == t3
    with pytest.raises(KeyError):
        other.get("lookup-000005")
    assert (t3.question, t3.ground_truth) != (t0.question, t0.ground_truth)


def test_split_is_a_stable_hash_with_about_10_percent_heldout(suite: Suite) -> None:
    ids = [suite.families[f].task_id(i) for f in FAMILIES for i in range(5_000)]
    heldout = sum(split_of(t) == "heldout" for t in ids) / len(ids)
    assert abs(heldout - HELDOUT_FRACTION) < 0.01
    # pinned values: the split must never change between processes or releases (no `hash()`)
    assert [i for i in range(70) if split_of(f"lookup-{i:06d}") == "heldout"] == [1, 12, 51, 66, 68]
    assert {t: split_of(t) for t in PINNED_SPLITS} == PINNED_SPLITS
    assert suite.instance("lookup", 7).split == split_of("lookup-000007")


PINNED_SPLITS = {"lookup-000000": "train", "lookup-000001": "heldout", "multi_hop-004242": "train"}


def test_iter_split_and_sample_respect_the_split(suite: Suite) -> None:
    held = list(suite.iter_split("heldout", family="no_tools", limit=25))
    assert len(held) == 25 and all(t.split == "heldout" and t.family == "no_tools" for t in held)
    assert [t.index for t in held] == sorted(t.index for t in held)
    sample = suite.sample(random.Random(1), 60, split="train", families=["lookup", "recovery"])
    assert {t.family for t in sample} == {"lookup", "recovery"}
    assert all(t.split == "train" for t in sample)
    again = suite.sample(random.Random(1), 60, split="train", families=["lookup", "recovery"])
    assert [t.task_id for t in again] == [t.task_id for t in sample]
    with pytest.raises(KeyError):
        suite.sample(random.Random(1), 1, families=["nope"])
    with pytest.raises(ValueError):
        suite.sample(random.Random(1), 1, split="test")


def _contains_truth(text: str, truth: str) -> bool:
    try:
        want = float(truth)
    except ValueError:
        return re.search(rf"(?<!\w){re.escape(normalise(truth))}(?!\w)", normalise(text)) is not None
    return any(abs(n - want) <= 1e-6 * max(1.0, abs(want)) for n in extract_numbers(text))


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "no_tools"])
def test_canonical_path_reaches_the_ground_truth(suite: Suite, family: str) -> None:
    """Run each canonical path against the world: the planned errors happen, the last observation
    contains the ground truth — so the ground truth is what the world says."""
    world = get_world(0)
    rng = random.Random(family)
    fam = suite.families[family]
    for _ in range(150):
        task = fam.instance(rng.randrange(fam.size))
        box = ToolBox(world)
        last = ""
        for stage in task.stages:
            last = box.execute(stage.call.name, stage.call.args).text
            assert last.startswith(ERROR_PREFIX) == stage.expect_error, (task.task_id, stage, last)
        assert _contains_truth(last, task.ground_truth), (task.task_id, task.ground_truth, last)


def test_no_tools_tasks_answer_from_the_question(suite: Suite) -> None:
    fam = suite.families["no_tools"]
    for i in range(0, fam.size, 97):
        t = fam.instance(i)
        assert t.stages == () and t.final_reasoning == "answer_direct"
        if t.subtype == "add":
            a, b = map(int, re.findall(r"\d+", t.question))
            assert int(t.ground_truth) == a + b


def test_recovery_family_has_both_recovery_kinds(suite: Suite) -> None:
    fam = suite.families["recovery"]
    kinds = {fam.instance(i).subtype for i in range(200)}
    assert kinds == {"retry", "fallback"}
    retry = next(fam.instance(i) for i in range(200) if fam.instance(i).subtype == "retry")
    assert retry.stages[0].call == retry.stages[1].call  # the same call again
    fallback = next(fam.instance(i) for i in range(200) if fam.instance(i).subtype == "fallback")
    assert [s.call.name for s in fallback.stages] == ["read_file", "query_db"]  # an alternative tool
