"""Value slots: how a tiny student copies ids, paths and numbers (trainer and router share this).

Exports `SlotCodec` (`encode(messages)` → `(messages, table: slot token → value)`, `decode(text, table)`,
`tokens`), `save_format(dir, codec)` / `load_format(dir)` (the `stillflow_format.json` beside the
weights) and `FORMAT_FILE`.

Why: an agent copies all the time — an order id from the question into SQL, a path from a search hit
into `read_file`, a price from a query result into the calculator, the result into the answer. A small
model trained from scratch does not learn to copy a digit string reliably within a CPU budget (it
needs an induction circuit that holds the place across repeated digits). Delexicalisation — the
classic remedy of small semantic parsers — turns the copy into picking one token: every value in what
the model reads (user and tool messages) is tagged with a slot token, `<v3>245.98`, numbered in order of
first appearance in the conversation; in what the model writes (assistant turns, tool-call arguments)
an exact copy of a tagged value is the slot token alone, `<v3>`, and `decode` puts the value back. The
value stays visible after its tag, so the model can still reason about it (10% → 0.1); a value that
first appears in an assistant turn (a computed one) stays literal. Numbering depends only on the
conversation so far, so re-encoding a longer conversation keeps every earlier slot.

Typed slots (`SlotCodec(n, typed=True)`) number each kind of value apart (`<i0>` the first id, `<p0>` the
first path, `<n0>` the first number, `<d0>`, `<e0>`), so e.g. a search's top hit is always `<p0>`.

Values: e-mail addresses, absolute paths, dates (YYYY-MM-DD), ids (letters, a dash, digits:
`C-00519`, `Nova-34`) and numbers with at least two digits (`2020`, `1,130,000`, `98.36`); single
digits are cheap to copy as they are. At most `n` slots per conversation; later values stay literal.

Cells (`cells=True`, format version 2): in tool results, a short cell is a value as a whole, whatever it
looks like: a field of a ` | `-separated row (database results), the value of a `key: value` line
(`- Status: planning`), a short line (`Tara Tanaka`), a JSON string or single digit after a key
(`"tier": "bronze"`). Short: at most 4 words and 40 characters, no sentence punctuation, no value of a
known kind inside (`Daily report 2022-05-16` is text around a date). Answers mostly copy such a cell
(`bronze`, `low`, `2`, `Anya Fischer`); without a slot the tiny student wrote a plausible other one
(`silver`). Headers and headings are tagged too; the cost is a slot, never a wrong value.

Pure Python (the router imports it without torch).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["FORMAT_FILE", "SlotCodec", "load_format", "save_format"]

FORMAT_FILE = "stillflow_format.json"

# One pass, leftmost match wins, alternatives in priority order (a path swallows the id in it). The group
# name is the value's kind (typed slots: `<p0>` is the first path, `<i0>` the first id, ...).
_VALUE_RX = re.compile(
    r"(?P<e>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"                   # e-mail
    r"|(?P<p>(?<![\w/.])/[\w.\-]+(?:/[\w.\-]+)*)"             # absolute path
    r"|(?P<d>\b\d{4}-\d{2}-\d{2}\b)"                          # date
    r"|(?P<i>\b[A-Za-z]+-\d+\b)"                              # id
    r"|(?P<n>(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d{2,}|\d)(?:\.\d+)?(?![\w]))"  # number (filtered below)
)
KINDS = ("e", "p", "d", "i", "n")
CELL_KIND = "w"  # typed slots: a cell that is no other kind of value (a word: `bronze`, `low`)
_SLOT_RX = re.compile(r"<([vepdinw])(\d+)>")
_CELL_MAX, _CELL_WORDS = 40, 4  # longer cells are text, not an answer to copy
_CELL_SEP = " | "
_NOT_CELL = re.compile(r"[()?!;]|\.(?:\s|$)")  # sentence punctuation: prose
# `- Owner: Anya Fischer`, `orders shipped: 79`: a short key, then its value (a cell when short)
_KEY_VALUE_RX = re.compile(r"^(\s*(?:[-*]\s+)?[A-Za-z][\w ./-]{0,30}?:\s+)(\S.*)$")
# a JSON scalar after a key: a string, or a single digit (longer numbers are values anyway)
_JSON_CELL_RX = re.compile(r'(?<=:)(\s*)(?:"([^"\\]{1,40})"|(-?\d(?:\.\d+)?))(?=\s*[,}\]])')
# a copy inside an assistant turn: not glued to more of an identifier on either side
_BEFORE = r"(?<![\w./@-])"
_AFTER = r"(?![\w/@]|[.,-]\w)"


def _cell_kind(value: str) -> str | None:
    """The slot kind of a cell that is a value as a whole, None when it is prose (or a value of a known
    kind that the ordinary tagging numbers: a cell `C-00660` is an id like any other)."""
    if not value or len(value) > _CELL_MAX or len(value.split()) > _CELL_WORDS:
        return None
    known = _VALUE_RX.fullmatch(value)
    if known is not None:
        return None if _is_value(value) else known.lastgroup  # a single digit is a value in a cell
    if any(_is_value(m.group(0)) for m in _VALUE_RX.finditer(value)) or _NOT_CELL.search(value):
        return None  # text around a value (`Daily report 2022-05-16`), or a sentence
    return CELL_KIND


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _is_value(text: str) -> bool:
    # a single digit is copied as it is
    return not (text[0].isdigit() and len(re.sub(r"\D", "", text)) < 2)


class SlotCodec:
    """Tags values with slot tokens for a model and puts them back in what it writes (module docstring).
    `typed`: one numbering per kind of value (`<i0>` the first id, `<p0>` the first path, `<n0>` the first
    number, `<d0>`, `<e0>`), n of each; untyped: one numbering for all (`<v0>`, `<v1>`, ...)."""

    def __init__(self, n: int = 32, *, typed: bool = False, cells: bool = False) -> None:
        if not 1 <= n <= 1000:
            raise ValueError(f"slot count must be 1..1000, not {n}")
        self.n = n
        self.typed = typed
        self.cells = cells

    @property
    def tokens(self) -> list[str]:
        """The slot tokens the tokenizer must hold, one id each."""
        kinds = (*KINDS, CELL_KIND) if self.typed and self.cells else KINDS if self.typed else ("v",)
        return [f"<{kind}{k}>" for kind in kinds for k in range(self.n)]

    def to_dict(self) -> dict[str, Any]:
        # version 1 readers know no cells: a cell codec is version 2, so that they refuse it
        return {"value_slots": self.n, "typed": self.typed, "cells": self.cells, "version": 2 if self.cells else 1}

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, messages: Iterable[dict[str, Any]], table: dict[str, str] | None = None
               ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """(the messages as the model sees them, the slot table: slot token → value, in order of first
        appearance). Messages are copied, never modified. `table`: continue numbering from an earlier
        encode (DPO: the prompt's table for each completion)."""
        table = dict(table or {})
        index = {v: tok for tok, v in table.items()}
        out: list[dict[str, Any]] = []
        copy, copy_size = None, 0  # the copier of the table as it was; rebuilt only once the table grew
        for m in messages:
            m = dict(m)
            role = m.get("role")
            if role in ("user", "tool"):
                if isinstance(m.get("content"), str):
                    cells = self.cells and role == "tool"
                    m["content"] = (self._tag_cells if cells else self._tag)(m["content"], table, index)
            elif role == "assistant":
                if len(table) != copy_size:
                    copy, copy_size = self._copier(table), len(table)
                if copy is not None:
                    if isinstance(m.get("content"), str):
                        m["content"] = copy(m["content"])
                    if m.get("tool_calls"):
                        m["tool_calls"] = [self._call(tc, copy) for tc in m["tool_calls"]]
            out.append(m)
        return out, table

    @staticmethod
    def _defuse(text: str) -> str:
        # a literal slot-like string in the input must not pass for a slot
        return _SLOT_RX.sub(lambda m: "< " + m.group(1) + m.group(2) + ">", text) if "<" in text else text

    def _slot(self, value: str, kind: str, table: dict[str, str], index: dict[str, str]) -> str | None:
        """The slot token of `value` (a new one when it is new), None when the slots ran out."""
        tok = index.get(value)
        if tok is None:
            kind = kind if self.typed else "v"
            used = sum(1 for t in table if t[1] == kind) if self.typed else len(table)
            if used >= self.n:
                return None
            tok = index[value] = f"<{kind}{used}>"
            table[tok] = value
        return tok

    def _tag(self, text: str, table: dict[str, str], index: dict[str, str], *, defused: bool = False) -> str:
        if not defused:
            text = self._defuse(text)

        def one(m: re.Match[str]) -> str:
            value = m.group(0).rstrip(".-")
            rest = m.group(0)[len(value):]
            if not value or not _is_value(value):
                return m.group(0)
            tok = self._slot(value, m.lastgroup or "v", table, index)
            return m.group(0) if tok is None else f"{tok}{value}{rest}"

        return _VALUE_RX.sub(one, text)

    def _cell(self, cell: str, table: dict[str, str], index: dict[str, str]) -> str:
        """One field of a tool result: a short cell is a value as a whole (module docstring), anything
        else is prose (its values of the known kinds are tagged)."""
        value = cell.strip()
        kind = _cell_kind(value)
        tok = self._slot(value, kind, table, index) if kind else None
        if tok is None:
            return self._tag(cell, table, index, defused=True)
        lead = cell[: len(cell) - len(cell.lstrip())]
        return f"{lead}{tok}{value}{cell[len(lead) + len(value):]}"

    def _tag_cells(self, text: str, table: dict[str, str], index: dict[str, str]) -> str:
        """A tool result: cells (` | ` fields, the value of a `key: value` line, a short line, JSON
        scalars after a key) are values; the rest is tagged as prose."""
        text = self._defuse(text)
        if text.lstrip()[:1] in ("{", "[") and _is_json(text):
            return self._tag_json(text, table, index)
        lines = []
        for line in text.split("\n"):
            fields = line.split(_CELL_SEP)
            if len(fields) > 1:
                lines.append(_CELL_SEP.join(self._cell(f, table, index) for f in fields))
            elif (kv := _KEY_VALUE_RX.match(line)) is not None:
                lines.append(self._tag(kv.group(1), table, index, defused=True) + self._cell(kv.group(2), table, index))
            else:
                lines.append(self._cell(line, table, index))
        return "\n".join(lines)

    def _tag_json(self, text: str, table: dict[str, str], index: dict[str, str]) -> str:
        out, last = [], 0
        for m in _JSON_CELL_RX.finditer(text):
            out.append(self._tag(text[last:m.start()], table, index, defused=True))
            q = '"' if m.group(2) is not None else ""
            out.append(f"{m.group(1)}{q}{self._cell(m.group(2) if q else m.group(3), table, index)}{q}")
            last = m.end()
        out.append(self._tag(text[last:], table, index, defused=True))
        return "".join(out)

    @staticmethod
    def _copier(table: dict[str, str]) -> Any:
        index = {v: tok for tok, v in table.items()}
        values = sorted(index, key=len, reverse=True)
        rx = re.compile(_BEFORE + "(" + "|".join(re.escape(v) for v in values) + ")" + _AFTER)
        return lambda text: rx.sub(lambda m: index[m.group(1)], text)

    @staticmethod
    def _call(tc: dict[str, Any], copy: Any) -> dict[str, Any]:
        tc = dict(tc)
        fn = dict(tc.get("function") or {})
        args = fn.get("arguments")
        if isinstance(args, str):
            fn["arguments"] = copy(args)
        elif isinstance(args, dict):
            fn["arguments"] = json.loads(copy(json.dumps(args, ensure_ascii=False)))
        tc["function"] = fn
        return tc

    # -- decoding ------------------------------------------------------------------------------

    @staticmethod
    def decode(text: str, table: dict[str, str]) -> str:
        """`text` with every known slot token replaced by its value (an unknown one stays as written:
        the output is wrong and is judged so, never silently repaired)."""
        return _SLOT_RX.sub(lambda m: table.get(m.group(0), m.group(0)), text)

    # -- rows --------------------------------------------------------------------------------------

    def encode_sft_row(self, row: dict[str, Any]) -> dict[str, Any]:
        messages, _ = self.encode(row["messages"])
        return {**row, "messages": messages}

    def encode_dpo_row(self, row: dict[str, Any]) -> dict[str, Any]:
        prompt, table = self.encode(row["prompt"])
        chosen, _ = self.encode(row["chosen"], table)
        rejected, _ = self.encode(row["rejected"], table)
        return {**row, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def save_format(directory: str | Path, codec: SlotCodec | None) -> None:
    """Record beside the weights how conversations are encoded for this model (nothing for plain)."""
    path = Path(directory) / FORMAT_FILE
    if codec is None:
        path.unlink(missing_ok=True)
        return
    path.write_text(json.dumps(codec.to_dict(), indent=2) + "\n", encoding="utf-8")


def load_format(directory: str | Path) -> SlotCodec | None:
    """The codec a saved model was trained with; None when it reads plain text."""
    path = Path(directory) / FORMAT_FILE
    if not path.exists():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        n = int(spec["value_slots"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a stillflow format file ({exc})") from None
    version = spec.get("version")
    if version not in (1, 2):
        raise ValueError(f"{path}: format version {version!r} is not supported (expected 1 or 2)")
    return SlotCodec(n, typed=bool(spec.get("typed", False)), cells=version == 2 and bool(spec.get("cells")))
