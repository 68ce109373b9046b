"""Greedy turns with their token log-probabilities, one prompt or many at once: the one function the router's
student runtime and the trainer's evaluator both generate with.

Exports `Generated`, `generate_greedy(model, prompts, *, pad_id, stop_ids, max_new_tokens, device)`, and the
two ends of a turn every student runtime needs: `encode_prompt(tokenizer, codec, messages, tools)` (the
conversation, value-slot encoded when the student has slots, through its chat template with the generation
prompt) and `decode_turn(tokenizer, codec, ids, table)`.

Many prompts are left-padded into one batch with one KV cache (the attention mask keeps each row to its own
tokens; a row that stopped is padding from then on). Each prompt still gets exactly its own turn: its tokens
up to its first stop token (or its own cap), and the log-probability of each of them under the model. torch
is imported inside the function: `stillflow` is the light package the agent SDK imports, and only the
router's and the trainer's extras bring torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Generated", "generate_greedy", "encode_prompt", "decode_turn"]


@dataclass(frozen=True)
class Generated:
    ids: list[int]  # the new tokens, the stop token included when there is one
    logprobs: tuple[float, ...]  # one per token in `ids`
    finished: bool  # stopped at a stop token, not at the cap


def encode_prompt(tokenizer: Any, codec: Any, messages: list[dict[str, Any]],
                  tools: list[dict[str, Any]] | None) -> tuple[list[int], dict[str, str]]:
    """The prompt's token ids, and the value-slot table its turn decodes with (empty without a codec)."""
    table: dict[str, str] = {}
    if codec is not None:
        messages, table = codec.encode(messages)
    out = tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True, tokenize=True,
                                        return_dict=True)
    return list(out["input_ids"]), table


def decode_turn(tokenizer: Any, codec: Any, ids: list[int], table: dict[str, str]) -> str:
    """A turn's text as the student's tokens spell it, value slots filled back in."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return codec.decode(text, table) if codec is not None else text


def generate_greedy(model: Any, prompts: Sequence[Sequence[int]], *, pad_id: int, stop_ids: Sequence[int],
                    max_new_tokens: int | Sequence[int], device: Any = "cpu") -> list[Generated]:
    """One greedy turn per prompt (token ids). `max_new_tokens`: one cap for all, or one per prompt (the batch
    runs to the largest; each row is cut at its own)."""
    import torch

    if not prompts:
        return []
    caps = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(caps) != len(prompts) or min(caps) < 1:
        raise ValueError("max_new_tokens: one positive cap, or one per prompt")
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max(caps), do_sample=False,
                             eos_token_id=list(stop_ids), pad_token_id=pad_id, output_scores=True,
                             return_dict_in_generate=True)
        new = out.sequences[:, width:]
        # per step, not one [batch, steps, vocab] tensor: a pretrained student's vocabulary is 262k wide
        logp = torch.stack([torch.log_softmax(sc.float(), dim=-1).gather(1, new[:, t:t + 1]).squeeze(1)
                            for t, sc in enumerate(out.scores)], dim=1)
    stops = set(stop_ids)
    result = []
    for i, ids in enumerate(new.tolist()):
        end = next((k + 1 for k, tok in enumerate(ids) if tok in stops), None)
        cut = min(end if end is not None else len(ids), caps[i])
        result.append(Generated(ids=ids[:cut], logprobs=tuple(float(x) for x in logp[i, :cut].tolist()),
                                finished=end is not None and end <= caps[i]))
    return result
