"""Value slots (stillflow.slots): what the tiny student reads and writes instead of raw ids and numbers."""

from __future__ import annotations

import json

import pytest

from stillflow.slots import FORMAT_FILE, SlotCodec, load_format, save_format


def _conv() -> list[dict]:
    return [
        {"role": "system", "content": "You are an assistant. Files live under /docs."},
        {"role": "user", "content": "What is the total of order O-01533 after applying a 10% discount?"},
        {"role": "assistant", "content": "Fetching O-01533 first.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {
                "name": "query_db", "arguments": json.dumps({"sql": "SELECT quantity FROM orders WHERE id = 'O-01533'"})}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "query_db", "content": "quantity | price\n3 | 98.36\n(1 row)"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c2", "type": "function", "function": {
                "name": "execute_code", "arguments": {"code": "round(3 * 98.36 * (1 - 0.1), 2)"}}}]},
        {"role": "tool", "tool_call_id": "c2", "name": "execute_code", "content": "265.57"},
        {"role": "assistant", "content": "The total of O-01533 after a 10% discount: $265.57 (computed 265.57)"},
    ]


def test_values_in_what_the_model_reads_are_tagged_in_order_of_first_appearance() -> None:
    messages, table = SlotCodec(8).encode(_conv())
    assert list(table.values()) == ["O-01533", "10", "98.36", "265.57"]
    assert list(table) == ["<v0>", "<v1>", "<v2>", "<v3>"]
    assert messages[1]["content"] == "What is the total of order <v0>O-01533 after applying a <v1>10% discount?"
    # a single digit is copied as it is; the system prompt is never touched
    assert messages[3]["content"] == "quantity | price\n3 | <v2>98.36\n(1 row)"
    assert messages[0] == _conv()[0]


def test_copies_in_what_the_model_writes_become_the_slot_alone_and_computed_values_stay_literal() -> None:
    messages, _ = SlotCodec(8).encode(_conv())
    first = messages[2]
    assert first["content"] == "Fetching <v0> first."
    assert json.loads(first["tool_calls"][0]["function"]["arguments"]) == {
        "sql": "SELECT quantity FROM orders WHERE id = '<v0>'"}
    # arguments given as an object stay an object; "0.1" is derived from 10%, not a copy
    assert messages[4]["tool_calls"][0]["function"]["arguments"] == {"code": "round(3 * <v2> * (1 - 0.1), 2)"}
    assert messages[6]["content"] == "The total of <v0> after a <v1>% discount: $<v3> (computed <v3>)"


def test_the_input_is_never_modified() -> None:
    conv = _conv()
    before = json.dumps(conv, sort_keys=True)
    SlotCodec(8).encode(conv)
    assert json.dumps(conv, sort_keys=True) == before


def test_decode_puts_values_back_and_leaves_unknown_slots_as_written() -> None:
    _, table = SlotCodec(8).encode(_conv())
    assert SlotCodec.decode("SELECT * FROM orders WHERE id = '<v0>' -- <v3>", table) == (
        "SELECT * FROM orders WHERE id = 'O-01533' -- 265.57")
    assert SlotCodec.decode("answer: <v7>", table) == "answer: <v7>"


def test_numbering_is_stable_as_the_conversation_grows() -> None:
    codec = SlotCodec(8)
    conv = _conv()
    for k in range(2, len(conv) + 1):
        _, table = codec.encode(conv[:k])
        _, full = codec.encode(conv)
        assert list(full.items())[: len(table)] == list(table.items())


def test_paths_emails_dates_and_ids_inside_paths() -> None:
    text = ("[1] Project Nova-34 (/docs/projects/nova-34.md)\nowner ana.ng@example.com, report "
            "/archive/reports/2021-08-31.txt of 2021-08-31, budget $1,130,000.")
    messages, table = SlotCodec(16).encode([{"role": "tool", "content": text}])
    assert list(table.values()) == ["Nova-34", "/docs/projects/nova-34.md", "ana.ng@example.com",
                                    "/archive/reports/2021-08-31.txt", "2021-08-31", "1,130,000"]
    assert messages[0]["content"].endswith("budget $<v5>1,130,000.")


def test_a_copy_glued_to_a_longer_identifier_is_not_replaced() -> None:
    conv = [{"role": "user", "content": "Project Nova-34 or 34?"},
            {"role": "assistant", "content": "Nova-345 is not Nova-34; 34 is 34."}]
    messages, table = SlotCodec(8).encode(conv)
    assert list(table.values()) == ["Nova-34", "34"]
    assert messages[1]["content"] == "Nova-345 is not <v0>; <v1> is <v1>."


def test_slots_run_out_and_later_values_stay_literal() -> None:
    messages, table = SlotCodec(2).encode([{"role": "user", "content": "A-11 B-22 C-33"}])
    assert list(table.values()) == ["A-11", "B-22"]
    assert messages[0]["content"] == "<v0>A-11 <v1>B-22 C-33"


def test_a_slot_like_string_in_the_input_cannot_pass_for_a_slot() -> None:
    messages, table = SlotCodec(4).encode([{"role": "user", "content": "print <v0> and X-12"}])
    assert messages[0]["content"] == "print < v0> and <v0>X-12"
    assert table == {"<v0>": "X-12"}


def test_dpo_rows_share_the_prompt_numbering() -> None:
    codec = SlotCodec(8)
    row = {"prompt": [{"role": "user", "content": "Status of T-00004?"}],
           "chosen": [{"role": "assistant", "content": "T-00004 is open"}],
           "rejected": [{"role": "assistant", "content": "T-00005 is open"}], "tools": "[]"}
    enc = codec.encode_dpo_row(row)
    assert enc["chosen"][0]["content"] == "<v0> is open"
    assert enc["rejected"][0]["content"] == "T-00005 is open"
    assert enc["tools"] == "[]"


def test_the_format_file_round_trips_and_bad_files_are_refused(tmp_path) -> None:
    save_format(tmp_path, SlotCodec(12))
    assert load_format(tmp_path).n == 12
    save_format(tmp_path, None)
    assert load_format(tmp_path) is None
    (tmp_path / FORMAT_FILE).write_text('{"value_slots": 4, "version": 9}')
    with pytest.raises(ValueError, match="version 9"):
        load_format(tmp_path)
    (tmp_path / FORMAT_FILE).write_text("not json")
    with pytest.raises(ValueError, match="not a stillflow format file"):
        load_format(tmp_path)
    with pytest.raises(ValueError):
        SlotCodec(0)


def test_typed_slots_number_each_kind_of_value_apart() -> None:
    codec = SlotCodec(4, typed=True)
    assert len(codec.tokens) == 5 * 4 and "<p0>" in codec.tokens and "<i3>" in codec.tokens
    conv = [{"role": "user", "content": "Which tier has the sponsor of project Nova-34?"},
            {"role": "tool", "content": "[1] Project Nova-34 (/docs/projects/nova-34.md)\n"
                                        "[2] Project Lark-34 (/docs/projects/lark-34.md)"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {
                "name": "read_file", "arguments": '{"path": "/docs/projects/nova-34.md"}'}}]},
            {"role": "tool", "content": "- Launch year: 2020\n- Sponsor: customer C-00713"},
            {"role": "assistant", "content": "The sponsor is C-00713, since 2020."}]
    messages, table = codec.encode(conv)
    # the top hit is always the first path, whatever ids came before it
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == '{"path": "<p0>"}'
    assert messages[4]["content"] == "The sponsor is <i2>, since <n0>."
    assert table == {"<i0>": "Nova-34", "<p0>": "/docs/projects/nova-34.md", "<i1>": "Lark-34",
                     "<p1>": "/docs/projects/lark-34.md", "<n0>": "2020", "<i2>": "C-00713"}
    assert codec.decode("read <p1> for <i2>", table) == "read /docs/projects/lark-34.md for C-00713"


def test_typed_format_round_trips(tmp_path) -> None:
    save_format(tmp_path, SlotCodec(8, typed=True))
    loaded = load_format(tmp_path)
    assert loaded.typed and loaded.n == 8


def test_cells_of_tool_results_are_values_too() -> None:
    """With cells, what an answer copies from a tool result gets a slot even when it is a word or one digit."""
    codec = SlotCodec(16, cells=True)
    conv = [{"role": "user", "content": "What loyalty tier is customer C-01087 on, and how many orders?"},
            {"role": "tool", "content": "tier | orders\nbronze | 2\n(1 row)"},
            {"role": "tool", "content": '{"city": "Oslo", "open": 3, "who": "Tara Tanaka", "note": "a note of more than four words", "id": "C-01087"}'},
            {"role": "tool", "content": "[1] Title (/docs/a.md)\n    a snippet with 3 words\nSummary"},
            {"role": "tool", "content": "# Project Aspen-62\nAspen-62 is an initiative.\n- Status: planning\n"
                                        "- Budget: $3,430,000\n- Sponsor: customer C-00660"},
            {"role": "assistant", "content": "C-01087 is bronze with 2 orders, in Oslo (3 open)."}]
    messages, table = codec.encode(conv)
    assert messages[1]["content"] == "<v1>tier | <v2>orders\n<v3>bronze | <v4>2\n(1 row)"
    # JSON: short strings and single digits after a key; prose stays prose; a known value keeps its slot
    assert messages[2]["content"] == ('{"city": "<v5>Oslo", "open": <v6>3, "who": "<v7>Tara Tanaka", '
                                      '"note": "a note of more than four words", "id": "<v0>C-01087"}')
    # a search result is not JSON because it starts with "["; a short line (a heading) is a cell
    assert messages[3]["content"] == "[1] Title (<v8>/docs/a.md)\n    a snippet with 3 words\n<v9>Summary"
    # `key: value` lines: the value is the cell; text around a value is prose
    assert messages[4]["content"] == ("# Project <v10>Aspen-62\n<v10>Aspen-62 is an initiative.\n- Status: <v11>planning\n"
                                      "- Budget: $<v12>3,430,000\n- Sponsor: customer <v13>C-00660")
    assert messages[5]["content"] == "<v0> is <v3> with <v4> <v2>, in <v5> (<v6> open)."
    assert codec.decode(messages[5]["content"], table) == conv[5]["content"]
    # the user's message is never read as cells, and without cells nothing of this is tagged
    assert SlotCodec(16).encode(conv)[0][1]["content"] == conv[1]["content"]


def test_cell_slots_are_format_version_2_and_typed_cells_are_words(tmp_path) -> None:
    save_format(tmp_path, SlotCodec(8, cells=True))
    assert json.loads((tmp_path / FORMAT_FILE).read_text())["version"] == 2
    assert load_format(tmp_path).cells
    save_format(tmp_path, SlotCodec(8))  # a version-1 file (what earlier students have) reads without cells
    assert json.loads((tmp_path / FORMAT_FILE).read_text())["version"] == 1
    assert not load_format(tmp_path).cells
    typed = SlotCodec(4, typed=True, cells=True)
    assert "<w3>" in typed.tokens and "<w0>" not in SlotCodec(4, typed=True).tokens
    _, table = typed.encode([{"role": "tool", "content": "status\nresolved\n(1 row)"}])
    assert table == {"<w0>": "status", "<w1>": "resolved"}
