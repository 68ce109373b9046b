"""Identifier swaps: copies of training conversations with the question's ids renamed, so a small
student learns to copy ids instead of memorising them.

Exports `identifier_pool(conversations)`, `swap_identifiers(messages, rng, pool)` and
`augment_rows(rows, copies, seed)`.

A tiny student sees each id (an order "O-04886", a project "Viper-74", a ticket "T-00004") in one or
two conversations, so it can learn "Viper-74 → /docs/projects/viper-74.md" by heart instead of "copy
the name from the question". A swapped copy renames, consistently across the whole conversation
(question, reasoning, tool-call arguments, tool results, answer; lower-case forms in paths too), every
id of the question that has letters and digits: the digits become other digits of the same length, a
name part of three letters or more becomes another name of the same kind seen elsewhere in the corpus
(short prefixes such as "O-" or "C-" are kept: they say which table to query). Numbers without
letters (prices, quantities, years) are never touched, so arithmetic in the conversation stays true.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["identifier_pool", "swap_identifiers", "augment_rows"]

# a name part (letters, optional dash) followed by digits: "Viper-74", "O-04886", "T-00004"
_ID_RX = re.compile(r"\b([A-Z][A-Za-z]*-?)(\d{2,})\b")


def _question(messages: list[dict[str, Any]]) -> str:
    return next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")


def identifier_pool(conversations: Iterable[list[dict[str, Any]]]) -> list[str]:
    """Name parts of three letters or more that appear in ids of the questions (e.g. "Viper-")."""
    names: set[str] = set()
    for messages in conversations:
        for m in _ID_RX.finditer(_question(messages)):
            if len(m.group(1).rstrip("-")) >= 3:
                names.add(m.group(1))
    return sorted(names)


def _mapping(question: str, rng: random.Random, pool: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _ID_RX.finditer(question):
        old = m.group(0)
        if old in out:
            continue
        name, digits = m.group(1), m.group(2)
        new_digits = "".join(rng.choice("0123456789") for _ in digits)
        if len(name.rstrip("-")) >= 3 and pool:
            candidates = [p for p in pool if p != name and p.endswith("-") == name.endswith("-")]
            new_name = rng.choice(candidates) if candidates else name
        else:
            new_name = name
        out[old] = new_name + new_digits
    return out


def _replace(text: str, mapping: dict[str, str]) -> str:
    for old, new in mapping.items():
        text = text.replace(old, new).replace(old.lower(), new.lower())
    return text


def swap_identifiers(messages: list[dict[str, Any]], rng: random.Random, pool: list[str]) -> list[dict[str, Any]]:
    """A copy of `messages` with the question's ids renamed everywhere (see the module docstring)."""
    mapping = _mapping(_question(messages), rng, pool)
    if not mapping:
        return copy.deepcopy(messages)
    out = []
    for m in messages:
        m2 = dict(m)
        if isinstance(m2.get("content"), str):
            m2["content"] = _replace(m2["content"], mapping)
        if m2.get("tool_calls"):
            calls = []
            for tc in m2["tool_calls"]:
                tc2 = dict(tc)
                fn = dict(tc2.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    fn["arguments"] = _replace(args, mapping)
                elif isinstance(args, dict):
                    fn["arguments"] = json.loads(_replace(json.dumps(args, ensure_ascii=False), mapping))
                tc2["function"] = fn
                calls.append(tc2)
            m2["tool_calls"] = calls
        out.append(m2)
    return out


def augment_rows(rows: list[dict[str, Any]], copies: int, seed: int = 0) -> list[dict[str, Any]]:
    """`rows` (trl SFT rows) plus `copies` swapped copies of each row that has ids to swap."""
    if copies <= 0:
        return list(rows)
    rng = random.Random(seed)
    pool = identifier_pool(r["messages"] for r in rows)
    extra = []
    for _ in range(copies):
        for r in rows:
            if _ID_RX.search(_question(r["messages"])):
                extra.append({**r, "messages": swap_identifiers(r["messages"], rng, pool)})
    return list(rows) + extra
