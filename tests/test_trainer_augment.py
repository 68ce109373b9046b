"""Identifier swaps keep a conversation consistent and leave plain numbers alone."""

from __future__ import annotations

import json
import random

from tests.trainer_data import generate_sim_data
from trainer.augment import augment_rows, identifier_pool, swap_identifiers


def test_swaps_are_consistent_across_the_conversation() -> None:
    examples, _, _ = generate_sim_data(n_tasks=60, runs_per_task=1, seed=8)
    convs = [e.messages for e in examples]
    pool = identifier_pool(convs)
    assert pool and all(len(p.rstrip("-")) >= 3 for p in pool)
    rng = random.Random(1)
    multi = next(e for e in examples if e.metadata.get("family") == "search_read")
    swapped = swap_identifiers(multi.messages, rng, pool)
    q_old = multi.messages[1]["content"]
    q_new = swapped[1]["content"]
    assert q_old != q_new
    old_id = next(w.strip("?.,") for w in q_old.split() if "-" in w and any(c.isdigit() for c in w))
    new_id = next(w.strip("?.,") for w in q_new.split() if "-" in w and any(c.isdigit() for c in w))
    text_new = json.dumps(swapped)
    assert old_id not in text_new and old_id.lower() not in text_new
    assert new_id.lower() in text_new  # the path in read_file follows the new name
    calls = [json.loads(tc["function"]["arguments"]) for m in swapped for tc in m.get("tool_calls") or []]
    assert any(new_id.lower() in json.dumps(c) for c in calls)


def test_plain_numbers_and_table_prefixes_are_kept() -> None:
    messages = [
        {"role": "user", "content": "What is the total of order O-04886 after applying a 15% discount?"},
        {"role": "assistant", "content": "Fetching O-04886.", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "query_db", "arguments": json.dumps({"sql": "SELECT o.quantity FROM orders o WHERE o.id = 'O-04886'"})}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "query_db", "content": "quantity | price\n3 | 241.1"},
        {"role": "assistant", "content": "It's $614.81."},
    ]
    out = swap_identifiers(messages, random.Random(0), ["Viper-"])
    assert "O-04886" not in json.dumps(out) and "O-" in out[0]["content"]
    assert out[2]["content"] == messages[2]["content"] and out[3]["content"] == messages[3]["content"]
    assert "15%" in out[0]["content"]


def test_augment_rows_adds_copies() -> None:
    examples, _, _ = generate_sim_data(n_tasks=20, runs_per_task=1, seed=3)
    rows = [{"messages": e.messages, "tools": "[]"} for e in examples]
    from trainer.augment import _ID_RX

    with_ids = sum(1 for e in examples if _ID_RX.search(e.messages[1]["content"]))
    out = augment_rows(rows, 2, seed=0)
    assert with_ids and len(out) == len(rows) + 2 * with_ids and out[: len(rows)] == rows
    assert augment_rows(rows, 0) == rows
