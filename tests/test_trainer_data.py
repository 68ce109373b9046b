"""Training data: exported files in both shapes, dedupe, the split by task, the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer_data import generate_sim_data, write_export
from trainer.data import (
    DataError,
    PairRecord,
    SFTRecord,
    TrainingData,
    data_manifest,
    heldout_of,
    load_jsonl,
    split_data,
    task_key,
)


def _data(n_tasks: int = 60, runs: int = 2):
    examples, pairs, _ = generate_sim_data(n_tasks=n_tasks, runs_per_task=runs, seed=7)
    return examples, pairs


def test_load_jsonl_events_and_trl_rows(tmp_path: Path) -> None:
    examples, pairs = _data()
    write_export(tmp_path / "events", examples, pairs)
    data = load_jsonl(tmp_path / "events")
    assert len(data.sft) == len(examples) and len(data.pairs) == len(pairs)
    assert data.sft[0].task_id == examples[0].task_id and data.sft[0].family == examples[0].metadata["family"]

    trl = tmp_path / "trl"
    trl.mkdir()
    (trl / "sft.jsonl").write_text("".join(json.dumps({"messages": e.messages, "tools": e.tools}) + "\n"
                                           for e in examples))
    (trl / "dpo.jsonl").write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                                       "tools": p.tools}) + "\n" for p in pairs)
                                   + "not json\n")
    rows = load_jsonl(trl)
    assert len(rows.sft) == len(examples) and rows.sft[0].task_id is None
    assert len(rows.pairs) == len(pairs) and rows.invalid == 1
    # without a task id, a row's task is its opening: same question → same task
    assert task_key(rows.sft[0]).startswith("q-")


def test_missing_export_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"sft\.jsonl"):
        load_jsonl(tmp_path)


def test_dedupe_by_id(tmp_path: Path) -> None:
    examples, pairs = _data(20, 1)
    write_export(tmp_path, examples + examples[:5], pairs + pairs[:1])
    data = load_jsonl(tmp_path)
    assert len(data.sft) == len(examples)
    assert data.duplicates == 5 + (1 if pairs else 0)


def _rec(i: int, task: str, family: str | None = None) -> SFTRecord:
    return SFTRecord(id=f"ex-{i}", task_id=task, family=family,
                     messages=[{"role": "user", "content": f"q {task}"}, {"role": "assistant", "content": "a"}])


def test_split_is_by_task_never_by_example() -> None:
    records = [_rec(i, f"task-{i % 50}", family=("a", "b")[i % 2]) for i in range(500)]
    pairs = [PairRecord(id=f"p-{i}", task_id=f"task-{i % 50}", prompt=[{"role": "user", "content": "q"}],
                        chosen=[{"role": "assistant", "content": "x"}], rejected=[{"role": "assistant", "content": "y"}])
             for i in range(100)]
    split = split_data(TrainingData(records, pairs, "test"), 0.2)
    train, held = split.train_tasks, split.heldout_tasks
    assert train and held and not train & held
    assert len(split.train_sft) + len(split.heldout_sft) == 500
    for r in split.heldout_sft:
        assert heldout_of(r.task_id, 0.2)  # type: ignore[arg-type]
    # every example of a task is on one side, pairs follow their task
    assert {p.task for p in split.heldout_pairs} <= held and {p.task for p in split.train_pairs} <= train
    # stable: the same split again
    again = split_data(TrainingData(list(reversed(records)), pairs, "test"), 0.2)
    assert again.heldout_tasks == held


def test_holdout_families_go_to_heldout_whole() -> None:
    records = [_rec(i, f"task-{i}", family=("lookup", "recovery", "no_tools")[i % 3]) for i in range(300)]
    split = split_data(TrainingData(records, [], "test"), 0.1, ["recovery"])
    assert all(r.family != "recovery" for r in split.train_sft)
    assert sum(r.family == "recovery" for r in split.heldout_sft) == 100
    assert any(r.family == "lookup" for r in split.heldout_sft)  # the fraction still applies elsewhere


def test_manifest_ids_counts_and_sha256() -> None:
    examples, pairs = _data(40, 2)
    from trainer.data import from_events

    data = from_events(examples, pairs)
    split = split_data(data, 0.25)
    m = data_manifest(data, split)
    assert m["counts"]["train_sft"] == len(split.train_sft) and m["counts"]["heldout_sft"] == len(split.heldout_sft)
    assert sorted(m["ids"]["train_sft"]) == sorted(r.id for r in split.train_sft)
    assert all(len(v) == 64 for v in m["sha256"].values())
    assert m["split"]["by"] == "task"
    # the digest depends on content, not order
    again = data_manifest(from_events(list(reversed(examples)), pairs), split_data(from_events(examples, pairs), 0.25))
    assert again["sha256"] == m["sha256"]
    changed = [e.model_copy(update={"messages": [*e.messages[:-1], {"role": "assistant", "content": "changed"}]})
               if i == 0 else e for i, e in enumerate(examples)]
    data2 = from_events(changed, pairs)
    assert data_manifest(data2, split_data(data2, 0.25))["sha256"] != m["sha256"]


@pytest.mark.integration
async def test_read_topics_up_to_the_watermark_dedupes(settings) -> None:
    from stillflow.contracts import encode
    from stillflow.kafka import make_producer
    from trainer.data import Watermark, end_offsets, read_topics

    examples, pairs = _data(30, 2)
    assert pairs
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for e in examples + examples[:4]:  # redelivered
            await producer.send_and_wait(settings.topics.dataset_sft, encode(e), key=e.example_id.encode())
        for p in pairs:
            await producer.send_and_wait(settings.topics.dataset_dpo, encode(p), key=p.pair_id.encode())
        await producer.send_and_wait(settings.topics.dataset_sft, b"not json", key=b"x")
        ends = await end_offsets(settings)
        # written after the watermark: not part of this run
        late = examples[0].model_copy(update={"example_id": "sft-late", "event_id": "sft-late"})
        await producer.send_and_wait(settings.topics.dataset_sft, encode(late), key=b"sft-late")
    finally:
        await producer.stop()
    data = await read_topics(settings, Watermark(ends))
    assert len(data.sft) == len(examples) and len(data.pairs) == len(pairs)
    assert data.duplicates == 4 and data.invalid == 1
    assert "sft-late" not in {r.id for r in data.sft}
    assert data.watermark["offsets"] == ends
    everything = await read_topics(settings)
    assert "sft-late" in {r.id for r in everything.sft}


def test_general_rows_for_blending(tmp_path: Path) -> None:
    from trainer.job import load_general_rows

    path = tmp_path / "general.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                     {"role": "assistant", "content": f"hello {i}"}]}) + "\n"
                            for i in range(20)) + json.dumps({"text": "not a conversation"}) + "\n")
    rows = load_general_rows(path, 5, seed=1)
    assert len(rows) == 5 and all(json.loads(r["tools"]) == [] for r in rows)
    assert rows == load_general_rows(path, 5, seed=1) and rows != load_general_rows(path, 5, seed=2)
