"""One tool-call format from training to serving: every template renders an assistant turn that the shared
parser (`stillflow.chatformat.parse_assistant`) reads back as the same message, over conversations of every
sim family; transformers' own `parse_response` reads the same spec the same way; the spec survives a save."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.tasks import FAMILIES
from stillflow.chatformat import (
    CHATML,
    TurnFormat,
    load_turn_format,
    parse_assistant,
    save_turn_format,
)
from tests.trainer_data import generate_sim_data
from trainer.chat_template import (
    GEMMA_FORMAT,
    build_chat_template,
    build_gemma_template,
    choose_template,
    own_template_format,
    trainable_template,
)
from trainer.data import _sft_from_event, sft_rows

QWEN_TEMPLATE = (Path(__file__).parent / "fixtures" / "qwen2_5_chat_template.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def conversations() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for family in FAMILIES:
        examples, _, _ = generate_sim_data(n_tasks=6, runs_per_task=1, families=[family])
        got = sft_rows(_sft_from_event(e) for e in examples)
        assert got, family
        rows += got
    return rows


@pytest.fixture(scope="module")
def tokenizer_factory(conversations: list[dict[str, Any]]) -> Any:
    from trainer.tokenizer import train_tokenizer

    base = train_tokenizer(({"messages": r["messages"], "tools": json.loads(r["tools"])} for r in conversations[:20]),
                           vocab_size=400)

    def make(template: str, **specials: str) -> Any:
        import copy

        tok = copy.deepcopy(base)
        tok.chat_template = template
        for k, v in specials.items():
            setattr(tok, k, v)
        return tok

    return make


def _message_of(msg: dict[str, Any]) -> tuple[str, list[tuple[str, Any]]]:
    calls = []
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or tc
        args = fn.get("arguments")
        calls.append((fn["name"], json.loads(args) if isinstance(args, str) else args))
    return (msg.get("content") or "").strip(), calls


def _turns(tok: Any, row: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(prompt, the rendered assistant turn, the message) for every assistant turn of the conversation."""
    messages, tools = row["messages"], json.loads(row["tools"]) or None
    out = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(messages[:i], tools=tools, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages[: i + 1], tools=tools, tokenize=False)
        assert full.startswith(prompt), "the template renders a prefix differently once a turn follows"
        out.append((prompt, full[len(prompt):], msg))
    return out


TEMPLATES = {
    "stillflow-chatml": (lambda: build_chat_template(), {}, CHATML),
    "stillflow-gemma": (lambda: build_gemma_template(), {"bos_token": "<bos>", "eos_token": "<eos>"}, GEMMA_FORMAT),
}


@pytest.mark.parametrize("name", [*TEMPLATES, "qwen2.5-own"])
def test_round_trip_every_family(name: str, conversations: list[dict[str, Any]], tokenizer_factory: Any) -> None:
    if name == "qwen2.5-own":
        tok = tokenizer_factory(QWEN_TEMPLATE, eos_token="<|im_end|>")
        fmt = own_template_format(tok)
        assert fmt is not None and fmt.template == "own" and fmt.end_of_turn == "<|im_end|>"
        assert fmt.generation_prompt == "<|im_start|>assistant\n"
    else:
        build, specials, fmt = TEMPLATES[name]
        tok = tokenizer_factory(build(), **specials)
    n_turns = n_calls = 0
    for row in conversations:
        for _prompt, turn, msg in _turns(tok, row):
            assert turn.rstrip().endswith(fmt.end_of_turn), turn[-40:]
            parsed = parse_assistant(turn, fmt)
            want_content, want_calls = _message_of(msg)
            assert parsed.content == want_content
            assert [(c.name, c.arguments) for c in parsed.calls] == want_calls
            # and the OpenAI message it becomes says the same
            assert _message_of(parsed.message()) == (want_content, want_calls)
            n_turns += 1
            n_calls += len(want_calls)
    assert n_turns >= 6 * len(FAMILIES) and n_calls > 20


@pytest.mark.parametrize("name", [*TEMPLATES, "qwen2.5-own"])
def test_transformers_reads_the_same_spec(name: str, conversations: list[dict[str, Any]],
                                          tokenizer_factory: Any) -> None:
    """transformers' `parse_response`, given the spec we save (`TurnFormat.response_template()`), reads
    the rendered turns as our parser does."""
    if name == "qwen2.5-own":
        tok = tokenizer_factory(QWEN_TEMPLATE, eos_token="<|im_end|>")
        fmt = own_template_format(tok)
    else:
        build, specials, fmt = TEMPLATES[name]
        tok = tokenizer_factory(build(), **specials)
    if not hasattr(tok, "parse_response"):
        pytest.skip("this transformers has no parse_response")
    checked = 0
    for row in conversations[::3]:
        for prompt, turn, _msg in _turns(tok, row):
            ours = parse_assistant(turn, fmt).message()
            theirs = tok.parse_response(turn, fmt.response_template(), prefix=prompt)
            assert (theirs.get("content") or "").strip() == ours["content"]
            # (a template that renders arguments given as JSON text as a JSON string: both read the same object)
            assert [(c["function"]["name"], _obj(c["function"]["arguments"])) for c in theirs.get("tool_calls") or []] == \
                [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in ours.get("tool_calls", [])]
            checked += 1
    assert checked > 10


def _obj(args: Any) -> Any:
    return json.loads(args) if isinstance(args, str) else args


def test_templates_without_hermes_calls_are_not_kept(tokenizer_factory: Any) -> None:
    # a template that drops tool calls (plain ChatML) is not "own": the student gets stillflow's
    plain = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tok = tokenizer_factory(plain)
    assert own_template_format(tok) is None
    assert choose_template(tok) == CHATML and "<tool_call>" in tok.chat_template
    gem = tokenizer_factory(plain, bos_token="<bos>")
    assert choose_template(gem, gemma=True) == GEMMA_FORMAT and "<start_of_turn>" in gem.chat_template
    qwen = tokenizer_factory(QWEN_TEMPLATE, eos_token="<|im_end|>")
    assert choose_template(qwen).template == "own" and qwen.chat_template == QWEN_TEMPLATE
    assert trainable_template(qwen)  # trl has its training version (assistant-only loss)
    # a template that writes Hermes calls but that trl cannot mark for the loss: stillflow's instead
    odd = QWEN_TEMPLATE.replace("You are Qwen, created by Alibaba Cloud.", "You are a bot.")
    other = tokenizer_factory(odd, eos_token="<|im_end|>")
    assert own_template_format(other) is not None and not trainable_template(other)
    assert choose_template(other) == CHATML and other.chat_template != odd


def test_turn_format_file(tmp_path: Path) -> None:
    assert load_turn_format(tmp_path) == CHATML  # a version from before the file: a ChatML student
    save_turn_format(tmp_path, GEMMA_FORMAT)
    assert load_turn_format(tmp_path) == GEMMA_FORMAT
    (tmp_path / "stillflow_turns.json").write_text('{"spec": "stillflow.turn_format/1", "end_of_turn": ""}')
    with pytest.raises(ValueError, match="end_of_turn must be non-empty"):
        load_turn_format(tmp_path)
    with pytest.raises(ValueError, match=r"not a stillflow\.turn_format/1"):
        TurnFormat.from_json({"end_of_turn": "x"})


def test_gemma_turns_stop_at_either_end() -> None:
    text = 'Looking it up.\n<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call><eos>'
    parsed = parse_assistant(text, GEMMA_FORMAT)
    assert parsed.content == "Looking it up." and parsed.calls[0].arguments == {"query": "x"}
    assert parse_assistant("42<end_of_turn>\n<start_of_turn>user", GEMMA_FORMAT).content == "42"
