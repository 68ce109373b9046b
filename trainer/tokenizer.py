"""A byte-level BPE tokenizer trained on the training corpus, for the tiny student.

Exports `train_tokenizer(conversations, vocab_size=..., tool_descriptions=False)` →
`transformers.PreTrainedTokenizerFast` with the chat template of `trainer.chat_template`,
and `corpus_texts(conversations)` (the strings it learns from).

- byte-level: any text round-trips (no unknown token), `decode(encode(x)) == x`;
- digits are split one by one before BPE (`Digits(individual_digits=True)`), so numbers are
  sequences of digit tokens a small model can copy and compare, never opaque chunks;
- `pretokenize="words"` (default): GPT-2's word-level split, merges stay inside words;
  `pretokenize="phrases"`: identifiers apart (`IDENTIFIER_PATTERN`), merges may cross spaces, so the recurring
  language of prompts, reasoning and tool-call syntax becomes a few long tokens (about half the
  tokens of word-level BPE on agent traces: half the compute per example), while every
  "identifier" (a run without spaces or quotes holding a capital, a digit, `/`, `@` or `$`: names,
  ids, paths, SQL keywords, amounts) is pre-split on its own, so a value is the same tokens wherever
  it appears (in the question, a tool result, a tool call, the answer) and can be copied;
- `<|im_start|>`, `<|im_end|>` (end of turn = EOS), `<|endoftext|>` (padding) are special tokens;
  `<tool_call>` / `</tool_call>` are added tokens, one id each, kept when decoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from stillflow.chatformat import (
    IM_END,
    IM_START,
    PAD,
    SPECIAL_TOKENS,
    TOOL_CALL_END,
    TOOL_CALL_START,
)
from trainer.chat_template import build_chat_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["IDENTIFIER_PATTERN", "corpus_texts", "train_tokenizer"]

# A run without whitespace, quotes or brackets that holds a capital, a digit, '/', '@' or '$'.
IDENTIFIER_PATTERN = r"""[^\s"'`(){}\[\],;:]*[A-Z0-9/@$][^\s"'`(){}\[\],;:]*"""


def corpus_texts(conversations: Iterable[dict[str, Any]], *, tool_descriptions: bool = False) -> Iterator[str]:
    """The text of each conversation as the template renders it, without the special markers
    (they are added tokens, never merged)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    # `{% generation %}` is a transformers extension: render without it for the corpus.
    source = build_chat_template(tool_descriptions=tool_descriptions)
    source = source.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    import json

    env.filters["tojson"] = lambda x, **_: json.dumps(x, ensure_ascii=False)
    template = env.from_string(source)
    for conv in conversations:
        text = template.render(messages=conv.get("messages") or [], tools=conv.get("tools") or None,
                               add_generation_prompt=False)
        for marker in SPECIAL_TOKENS:
            text = text.replace(marker, "\n")
        yield text


def train_tokenizer(
    conversations: Iterable[dict[str, Any]],
    *,
    vocab_size: int = 3072,
    tool_descriptions: bool = False,
    min_frequency: int = 2,
    max_token_length: int = 48,
    pretokenize: str = "words",
    extra_texts: Iterable[str] = (),
    extra_tokens: Iterable[str] = (),
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the rendered conversations (and `extra_texts`);
    `extra_tokens` (e.g. value slots) are added with one id each."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if pretokenize == "phrases":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\n|" + IDENTIFIER_PATTERN), behavior="isolated"),
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pretokenize == "words":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        raise ValueError(f"pretokenize must be 'phrases' or 'words', not {pretokenize!r}")
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, IM_START, IM_END]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=max_token_length,
    )

    def texts() -> Iterator[str]:
        yield from corpus_texts(conversations, tool_descriptions=tool_descriptions)
        yield from extra_texts

    tok.train_from_iterator(texts(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t in (TOOL_CALL_START, TOOL_CALL_END, *extra_tokens)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        model_max_length=1_000_000,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = build_chat_template(tool_descriptions=tool_descriptions)
    return fast
