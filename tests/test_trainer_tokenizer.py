"""The tiny student's tokenizer and chat template: round trips, digits, tool calls, the assistant mask."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest

pytest.importorskip("transformers")

from stillflow.chatformat import IM_END, TOOL_CALL_END, TOOL_CALL_START, OutputFormatError, parse_assistant
from trainer.tokenizer import train_tokenizer


@lru_cache(maxsize=1)
def _conversations() -> list[dict]:
    from tests.trainer_data import generate_sim_data

    examples, _, _ = generate_sim_data(n_tasks=80, runs_per_task=1, seed=3)
    return [{"messages": e.messages, "tools": e.tools} for e in examples]


@lru_cache(maxsize=2)
def _tokenizer(pretokenize: str = "words"):
    return train_tokenizer(_conversations(), vocab_size=1024, pretokenize=pretokenize)


@pytest.mark.parametrize("pretokenize", ["words", "phrases"])
def test_byte_level_round_trip_and_digits_split(pretokenize: str) -> None:
    tok = _tokenizer(pretokenize)
    for text in ["Order O-01234 costs $1,234.56 — ünïcödé ✓ 中文", "SELECT email FROM customers WHERE id = 'C-00042'"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    pieces = tok.convert_ids_to_tokens(tok.encode("C-98765 and 2024", add_special_tokens=False))
    digits = [p for p in pieces if any(ch.isdigit() for ch in p)]
    assert digits and all(len(p.replace("Ġ", "")) == 1 for p in digits), pieces


def test_special_and_tool_call_tokens_are_single_ids() -> None:
    tok = _tokenizer()
    for marker in ("<|im_start|>", IM_END, TOOL_CALL_START, TOOL_CALL_END):
        assert len(tok.encode(marker, add_special_tokens=False)) == 1
    assert tok.eos_token == IM_END
    assert tok.pad_token is not None and tok.pad_token != tok.eos_token


def test_template_renders_tools_and_tool_calls() -> None:
    tok = _tokenizer()
    conv = next(c for c in _conversations() if any(m.get("tool_calls") for m in c["messages"]))
    text = tok.apply_chat_template(conv["messages"], tools=conv["tools"], tokenize=False)
    assert "# Tools" in text and "- query_db(sql: string)" in text and "top_k?: integer" in text
    call = next(m for m in conv["messages"] if m.get("tool_calls"))["tool_calls"][0]["function"]
    rendered = f'{TOOL_CALL_START}{{"name": "{call["name"]}", "arguments": {call["arguments"]}}}{TOOL_CALL_END}'
    assert rendered in text
    assert "<|im_start|>tool\n" in text


def test_generation_mask_covers_exactly_the_assistant_turns() -> None:
    tok = _tokenizer()
    for conv in _conversations()[:20]:
        out = tok.apply_chat_template(conv["messages"], tools=conv["tools"], tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids, mask = out["input_ids"], out["assistant_masks"]
        masked = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
        # what the assistant says, turn by turn, each closed by the end-of-turn token
        expected = ""
        for m in conv["messages"]:
            if m["role"] != "assistant":
                continue
            body = m.get("content") or ""
            for k, tc in enumerate(m.get("tool_calls") or []):
                sep = "\n" if (m.get("content") or k > 0) else ""
                fn = tc["function"]
                body += f'{sep}{TOOL_CALL_START}{{"name": "{fn["name"]}", "arguments": {fn["arguments"]}}}{TOOL_CALL_END}'
            expected += body + IM_END
        assert masked == expected
        # nothing of the system prompt, the question or a tool result is in the mask
        unmasked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
        user = next(m["content"] for m in conv["messages"] if m["role"] == "user")
        assert user in unmasked and "<|im_start|>assistant\n" in unmasked


def test_generation_prompt_is_a_prefix_of_the_conversation() -> None:
    tok = _tokenizer()
    conv = next(c for c in _conversations() if sum(m["role"] == "assistant" for m in c["messages"]) >= 2)
    full = tok.apply_chat_template(conv["messages"], tools=conv["tools"], tokenize=False)
    for i, m in enumerate(conv["messages"]):
        if m["role"] == "assistant":
            prompt = tok.apply_chat_template(conv["messages"][:i], tools=conv["tools"], tokenize=False,
                                             add_generation_prompt=True)
            assert full.startswith(prompt)


def test_parse_assistant_reads_back_rendered_turns() -> None:
    turn = parse_assistant('Let me check.\n<tool_call>{"name": "query_db", "arguments": {"sql": "SELECT 1"}}</tool_call>'
                           + IM_END)
    assert turn.content == "Let me check." and turn.calls[0].name == "query_db"
    assert turn.calls[0].arguments == {"sql": "SELECT 1"}
    msg = turn.message(["call_1"])
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"sql": "SELECT 1"}
    final = parse_assistant("It is 42." + IM_END)
    assert final.is_final and final.content == "It is 42."
    with pytest.raises(OutputFormatError, match="not JSON"):
        parse_assistant('<tool_call>{"name": "search", "arguments": {"query": }</tool_call>')
    with pytest.raises(OutputFormatError, match="never closed"):
        parse_assistant('<tool_call>{"name": "search", "arguments": {"query": "x"}}')
