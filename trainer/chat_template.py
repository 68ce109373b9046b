"""The students' chat templates: ChatML for tiny students, Gemma's turns for Gemma bases, or the model's own.

Exports `build_chat_template(tool_descriptions=False)` (ChatML), `build_gemma_template()` (Gemma 3's
turn markers), `GEMMA_FORMAT`, `own_template_format(tokenizer)` (the `TurnFormat` of a model whose own
template already writes Hermes tool calls, else None) and `choose_template(tokenizer)` (what a
pretrained student gets). The markers and the parser that reads the output back (`parse_assistant`,
`TurnFormat`, `OutputFormatError`) live in `stillflow.chatformat`, which the router shares.

The template is ChatML with tools (as Qwen2 renders them, made compact for a small model):

    <|im_start|>system
    {system prompt}
    # Tools
    - query_db(sql: string)
    - search(query: string, top_k?: integer)
    <|im_end|>
    <|im_start|>user
    {question}<|im_end|>
    <|im_start|>assistant
    {reasoning}
    <tool_call>{"name": "query_db", "arguments": {"sql": "SELECT ..."}}</tool_call><|im_end|>
    <|im_start|>tool
    {observation}<|im_end|>
    <|im_start|>assistant
    {final answer}<|im_end|>

Every assistant turn, its `<|im_end|>` included, is wrapped in `{% generation %}`, so
`apply_chat_template(..., return_assistant_tokens_mask=True)` marks exactly the assistant tokens
(assistant-only loss) and the model learns to stop. Tool-call arguments may be given as JSON text
(OpenAI) or as objects; they are rendered as JSON objects either way.
"""

from __future__ import annotations

import json
from typing import Any

from stillflow.chatformat import CHATML, TOOL_CALL_START, TurnFormat, parse_assistant

__all__ = ["build_chat_template", "build_gemma_template", "GEMMA_FORMAT", "own_template_format", "choose_template",
           "trainable_template"]

_TOOLS_SIGNATURE = """
{%- for tool in tools -%}
{%- set fn = tool['function'] if tool['function'] is defined and tool['function'] else tool -%}
{%- set params = fn['parameters'] or {} -%}
{%- set props = params['properties'] or {} -%}
{%- set required = params['required'] or [] -%}
{{- '- ' + fn['name'] + '(' -}}
{%- for pname, pspec in props.items() -%}
{{- pname -}}{%- if pname not in required -%}{{- '?' -}}{%- endif -%}
{%- if pspec and pspec['type'] -%}{{- ': ' + pspec['type'] -}}{%- endif -%}
{%- if not loop.last -%}{{- ', ' -}}{%- endif -%}
{%- endfor -%}
{{- ')' -}}
{%- if DESCRIBE and fn['description'] -%}{{- ': ' + fn['description'] -}}{%- endif -%}
{{- '\\n' -}}
{%- endfor -%}
"""

# What every student writes in its turn: its text, then its calls in the Hermes form (arguments given as JSON
# text, as OpenAI does, or as objects); shared by the ChatML and the Gemma templates.
_ASSISTANT_TURN = """
{{- message['content'] or '' -}}
{%- if message['tool_calls'] -%}
{%- for tc in message['tool_calls'] -%}
{%- set f = tc['function'] if tc['function'] is defined and tc['function'] else tc -%}
{%- if message['content'] or not loop.first -%}{{- '\\n' -}}{%- endif -%}
{{- '<tool_call>{"name": ' + (f['name'] | tojson) + ', "arguments": ' -}}
{%- if f['arguments'] is string -%}{{- f['arguments'] -}}
{%- else -%}{{- (f['arguments'] or {}) | tojson -}}{%- endif -%}
{{- '}</tool_call>' -}}
{%- endfor -%}
{%- endif -%}
"""

_TEMPLATE = """
{%- set ns = namespace(system='', first=0) -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set ns.system = messages[0]['content'] or '' -%}
{%- set ns.first = 1 -%}
{%- endif -%}
{%- if ns.system or tools -%}
{{- '<|im_start|>system\\n' + ns.system -}}
{%- if tools -%}
{{- '\\n# Tools\\n' -}}
TOOLS_SIGNATURE
{%- endif -%}
{{- '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages[ns.first:] -%}
{%- if message['role'] == 'assistant' -%}
{{- '<|im_start|>assistant\\n' -}}
{%- generation -%}
ASSISTANT_TURN
{{- '<|im_end|>' -}}
{%- endgeneration -%}
{{- '\\n' -}}
{%- else -%}
{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""


def build_chat_template(*, tool_descriptions: bool = False) -> str:
    """The Jinja chat template (see the module docstring). `tool_descriptions`: also render each
    tool's description after its signature (longer prompts; useful for bigger students)."""
    tools = _TOOLS_SIGNATURE.replace("DESCRIBE", "true" if tool_descriptions else "false").strip()
    return _TEMPLATE.replace("ASSISTANT_TURN", _ASSISTANT_TURN.strip()).replace("TOOLS_SIGNATURE", tools).strip()


# Gemma 3 has two roles (user, model) and no system turn: the system prompt and the tools open the first
# user turn, tool results come back as a user turn the model reads (in <tool_response> tags, as Hermes
# does), and the model's turns carry the same Hermes tool calls as ChatML students. `{% generation %}`
# wraps what the model writes, its <end_of_turn> included (assistant-only loss, and it learns to stop).
_GEMMA_TEMPLATE = """
{{- bos_token -}}
{%- set ns = namespace(system='', first=0) -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set ns.system = messages[0]['content'] or '' -%}
{%- set ns.first = 1 -%}
{%- endif -%}
{%- set body = messages[ns.first:] -%}
{%- for message in body -%}
{%- set prev = body[loop.index0 - 1]['role'] if not loop.first else '' -%}
{%- set next = body[loop.index0 + 1]['role'] if not loop.last else '' -%}
{%- if message['role'] == 'assistant' -%}
{{- '<start_of_turn>model\\n' -}}
{%- generation -%}
ASSISTANT_TURN
{{- '<end_of_turn>' -}}
{%- endgeneration -%}
{{- '\\n' -}}
{%- elif message['role'] == 'tool' -%}
{%- if prev != 'tool' -%}{{- '<start_of_turn>user\\n' -}}{%- endif -%}
{{- '<tool_response>\\n' + (message['content'] or '') + '\\n</tool_response>' -}}
{%- if next == 'tool' -%}{{- '\\n' -}}{%- else -%}{{- '<end_of_turn>\\n' -}}{%- endif -%}
{%- else -%}
{{- '<start_of_turn>user\\n' -}}
{%- if loop.first and (ns.system or tools) -%}
{{- ns.system -}}
{%- if tools -%}
{{- '\\n\\n# Tools\\nCall a tool with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.\\n' -}}
TOOLS_SIGNATURE
{%- endif -%}
{{- '\\n' -}}
{%- endif -%}
{{- (message['content'] or '') + '<end_of_turn>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<start_of_turn>model\\n' -}}
{%- endif -%}
"""

GEMMA_FORMAT = TurnFormat(end_of_turn="<end_of_turn>", stops=("<eos>",), template="stillflow-gemma",
                          generation_prompt="<start_of_turn>model\n")


def build_gemma_template(*, tool_descriptions: bool = True) -> str:
    """Gemma 3's turns with stillflow's tool calls (see above). Tool descriptions on by default: a
    pretrained model reads them."""
    tools = _TOOLS_SIGNATURE.replace("DESCRIBE", "true" if tool_descriptions else "false").strip()
    return _GEMMA_TEMPLATE.replace("ASSISTANT_TURN", _ASSISTANT_TURN.strip()).replace("TOOLS_SIGNATURE", tools).strip()


_PROBE_ARGS = {"city": "Zürich", "n": 2}
_PROBE_TOOLS = [{"type": "function", "function": {"name": "probe_tool", "description": "a probe",
                                                   "parameters": {"type": "object",
                                                                  "properties": {"city": {"type": "string"}}}}}]


def own_template_format(tokenizer: Any) -> TurnFormat | None:
    """The `TurnFormat` of the tokenizer's own chat template when it renders tool calls as Hermes'
    `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (Qwen 2.5/3, Hermes); None otherwise.

    Found by rendering a probe conversation and reading it back: the text after the final answer up to
    the line end is the end-of-turn marker, and the rendered call must parse back to the probe's call."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    call = {"id": "call_0", "type": "function",
            "function": {"name": "probe_tool", "arguments": json.dumps(_PROBE_ARGS, ensure_ascii=False)}}
    base = [{"role": "system", "content": "sys"}, {"role": "user", "content": "question"}]
    with_call = [*base, {"role": "assistant", "content": "", "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": "call_0", "name": "probe_tool", "content": "OBSERVED"},
                 {"role": "assistant", "content": "FINAL_ANSWER_7"}]
    try:
        text = tokenizer.apply_chat_template(with_call, tools=_PROBE_TOOLS, tokenize=False)
        prompt = tokenizer.apply_chat_template(base, tools=_PROBE_TOOLS, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that cannot render tools or calls
        return None
    if TOOL_CALL_START not in text or "FINAL_ANSWER_7" not in text or not text.startswith(prompt):
        return None
    tail = text.split("FINAL_ANSWER_7", 1)[1]
    end = tail.split("\n", 1)[0].strip()
    if not end or "FINAL" in end:
        return None
    eos = getattr(tokenizer, "eos_token", None)
    # the generation prompt: what the template writes after the prompt's last turn for the model to continue
    plain = tokenizer.apply_chat_template(base, tools=_PROBE_TOOLS, tokenize=False)
    opener = prompt[len(plain):] if prompt.startswith(plain) and len(prompt) > len(plain) else ""
    if not opener:
        return None
    fmt = TurnFormat(end_of_turn=end, stops=(eos,) if eos and eos != end else (), template="own",
                     generation_prompt=opener)
    turn = text[len(prompt):]  # the model's first turn, then the rest
    try:
        parsed = parse_assistant(turn, fmt)
    except ValueError:
        return None
    if [(c.name, c.arguments) for c in parsed.calls] != [("probe_tool", _PROBE_ARGS)]:
        return None
    return fmt


def trainable_template(tokenizer: Any) -> bool:
    """The tokenizer's template marks what the model writes (`{% generation %}`), or trl has a training
    version of it (Qwen 2.5/3, Llama 3, Gemma, ...: `trl.chat_template_utils.get_training_chat_template`),
    so that the loss can be on the assistant's turns only."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "endgeneration" in template:  # {% generation %} ... {% endgeneration %}, any whitespace control
        return True
    try:
        from trl.chat_template_utils import get_training_chat_template
    except ImportError:  # pragma: no cover - the trainer's extra brings trl
        return False
    try:
        return bool(get_training_chat_template(tokenizer))
    except ValueError:  # trl knows no training version of this template
        return False


def choose_template(tokenizer: Any, *, gemma: bool = False, tool_descriptions: bool = True) -> TurnFormat:
    """Give a pretrained student its template and return its turn format: its own template when that
    already writes Hermes tool calls and can mark the assistant's turns for the loss, else stillflow's
    (Gemma's turns for a Gemma model, ChatML otherwise, the latter with its markers added to the
    vocabulary by the caller)."""
    own = None if gemma else own_template_format(tokenizer)
    if own is not None and trainable_template(tokenizer):
        return own
    if gemma or "<start_of_turn>" in tokenizer.get_vocab():
        tokenizer.chat_template = build_gemma_template(tool_descriptions=tool_descriptions)
        return GEMMA_FORMAT
    tokenizer.chat_template = build_chat_template(tool_descriptions=tool_descriptions)
    return CHATML
