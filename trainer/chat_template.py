"""The tiny student's chat template.

Exports `build_chat_template(tool_descriptions=False)`. The markers it uses and the parser that reads
the output back (`parse_assistant`, `ParsedTurn`, `OutputFormatError`) live in `stillflow.chatformat`,
which the router shares.

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

__all__ = ["build_chat_template"]

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
    return _TEMPLATE.replace("TOOLS_SIGNATURE", tools).strip()
