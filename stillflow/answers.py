"""Answer checking: does a final answer match the ground truth?

Shared by the simulator (task success), the stream scorer (correctness) and the trainer's evaluation,
so that all three judge an answer the same way.

Exports `normalise`, `extract_numbers`, `truth_items` and `answers_match`. The rules:
- **one number** (`42`, `88.52`, `£1,050.00`, `12%`): the answer's last number equals it within tolerance
  (units, currency marks and words around it are ignored: "about $42.0 in total" matches `42`);
- **several numbers** (`0 4`, `3, 7, 12`, `[3, 7]`): the answer states exactly those numbers, in any order and
  with any separators — every one of them, and no other (a count of them, "the 2 files are 0 and 4", is
  not an item);
- **several items** (`["a", "b"]`, `Paris and Rome`, `red; green`): every item appears in the answer as whole
  words, and the answer's list holds nothing else: the text between the items is only separators, and no
  further item is joined on before the first or after the last ("Paris, Rome and Berlin" does not match);
- **text**: the normalised truth equals the normalised answer, or appears in it as whole words (so "The
  capital is Paris." matches `paris`).
Numbers are standalone: digits inside a word or an id (`Orca-34`, `user_task_0`, `v2`) are not numbers, a
date (`2024-03-15`, `15/03/2024`) or a time (`10:30`) is one token and never three numbers.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

__all__ = ["normalise", "extract_numbers", "truth_items", "answers_match"]

# a number not glued to a word: not after a letter, digit, '_' or '.', nor after "<word char>-" (an id)
_NUM = re.compile(r"(?<![\w.])(?<!\w-)[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\.?\d)")
# dates and times are single tokens: masked before numbers are read
_DATE_TIME = re.compile(
    r"(?<!\d)(?:\d{4}-\d{1,2}-\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
    r"|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}|\d{1,2}:\d{2}(?::\d{2})?)(?!\d)"
)
_PUNCT = re.compile(r"[^\w\s.\-]")
_PUNCT_BUT_SEPS = re.compile(r"[^\w\s.\-,;&|/]")  # the same, keeping what separates the items of a list
_SPACE = re.compile(r"\s+")
_FILLER = re.compile(r"^(?:the answer is|answer|final answer|result)\s*[:\-]?\s*", re.IGNORECASE)
# what may stand around a single number in a truth: currency marks and a percent sign (not spaces: `0 4`
# is two numbers)
_NUMBER_DRESS = re.compile(r"\s*[$£€¥₹%]\s*")
# what joins the items of a listed truth
_LIST_SEP = re.compile(r"\s*(?:,|;|&|\||\band\b|\bplus\b)\s*", re.IGNORECASE)
# what an answer may put between two items
_ONLY_SEPS = re.compile(r"(?:\s|,|;|&|\||/|\band\b|\bplus\b|\bas well as\b|\balso\b|\bthen\b)*", re.IGNORECASE)
# a further item joined on right after the list ("and Berlin", ", Berlin." at the end) or right before it
_JOINED_AFTER = re.compile(
    r"^\s*(?:(?:,|;|&)\s*(?:and\s+)?|(?:and|plus)\s+)[\w-]+(?:\s+[\w-]+)?\s*(?:$|[.!?,;]|\band\b)"
    r"|^\s*(?:&|and|plus)\s+\w", re.IGNORECASE)
_JOINED_BEFORE = re.compile(r"\w\s*(?:,|;|&)\s*$|\w\s+(?:and|plus)\s+$", re.IGNORECASE)


def normalise(text: str) -> str:
    """Lower-case, NFKC, drop filler prefixes, punctuation (but . and -), collapse spaces."""
    t = unicodedata.normalize("NFKC", text).strip().lower()
    t = _FILLER.sub("", t)
    t = _PUNCT.sub(" ", t)
    t = _SPACE.sub(" ", t).strip(" .")
    return t


def _number(token: str) -> float | None:
    try:
        value = float(token.replace(",", ""))
    except ValueError:  # pragma: no cover - the pattern only matches numbers
        return None
    return value if math.isfinite(value) else None


def extract_numbers(text: str) -> list[float]:
    """The standalone numbers of `text`, in order (dates, times and digits inside ids are not numbers)."""
    text = _DATE_TIME.sub(" § ", unicodedata.normalize("NFKC", text))
    out = []
    for m in _NUM.finditer(text):
        value = _number(m.group(0))
        if value is not None:
            out.append(value)
    return out


@dataclass(frozen=True)
class _Truth:
    kind: str  # "number", "numbers", "items" or "text"
    numbers: tuple[float, ...] = ()
    items: tuple[str, ...] = ()  # normalised


def _json_list(truth: str) -> list[object] | None:
    t = truth.strip()
    if not (t.startswith("[") and t.endswith("]")):
        return None
    try:
        value = json.loads(t)
    except ValueError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                                 for v in value):
        return value
    return None


def _parse_truth(truth: str) -> _Truth:
    listed = _json_list(truth)
    if listed is not None:
        if all(isinstance(v, int | float) for v in listed):
            nums = tuple(float(v) for v in listed)  # type: ignore[arg-type]
            return _Truth("number", nums) if len(nums) == 1 else _Truth("numbers", nums)
        parts = [str(v) for v in listed]
        if len(parts) == 1:
            return _parse_truth(parts[0])
        return _Truth("items", items=tuple(p for p in (normalise(x) for x in parts) if p))
    text = unicodedata.normalize("NFKC", truth).strip()
    if _DATE_TIME.search(text) is None:
        bare = _NUMBER_DRESS.sub("", text).strip()
        if _NUM.fullmatch(bare):
            value = _number(bare)
            if value is not None:
                return _Truth("number", (value,))
        # only numbers and list separators: a list of numbers
        rest = _LIST_SEP.sub(" ", _NUM.sub(" ", _NUMBER_DRESS.sub(" ", text)))
        nums = extract_numbers(text)
        if len(nums) >= 2 and not rest.strip():
            return _Truth("numbers", tuple(nums))
    parts = [normalise(p) for p in _LIST_SEP.split(text)]
    parts = [p for p in parts if p]
    if len(parts) >= 2:
        return _Truth("items", items=tuple(parts))
    return _Truth("text", items=(normalise(truth),))


def truth_items(truth: str) -> list[str]:
    """How a ground truth is read: its numbers or items (one element for a single number or text)."""
    t = _parse_truth(truth)
    if t.kind in ("number", "numbers"):
        return [f"{n:g}" for n in t.numbers]
    return list(t.items)


def _close(a: float, b: float, rel_tol: float, abs_tol: float) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def _numbers_match(got: list[float], want: tuple[float, ...], rel_tol: float, abs_tol: float) -> bool:
    def stated(x: float, among: Iterable[float]) -> bool:
        return any(_close(x, y, rel_tol, abs_tol) for y in among)

    count = float(len(set(want)))
    # every number of the truth, and no other (but a count of them: "the 2 files are 0 and 4")
    return all(stated(w, got) for w in want) and all(stated(g, want) or g == count for g in got)


def _word(item: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w]){re.escape(item)}(?![\w])")


def _items_match(answer: str, items: tuple[str, ...]) -> bool:
    # the answer normalised as the items are, but with its list separators kept (they matter here)
    a = _SPACE.sub(" ", _PUNCT_BUT_SEPS.sub(" ", unicodedata.normalize("NFKC", answer).lower())).strip()
    spans = []
    for item in dict.fromkeys(items):
        m = _word(item).search(a)
        if m is None:
            return False
        spans.append((m.start(), m.end()))
    spans.sort()
    for (_, end), (start, _) in pairwise(spans):
        if start < end or not _ONLY_SEPS.fullmatch(a[end:start]):
            return False  # overlapping, or something else stated between two items
    tail, head = a[spans[-1][1]:], a[: spans[0][0]]
    return _JOINED_AFTER.match(tail) is None and _JOINED_BEFORE.search(head) is None


def answers_match(answer: str | None, truth: str | None, *, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    """True when `answer` states the ground truth (the rules are in the module doc)."""
    if answer is None or truth is None:
        return False
    t = _parse_truth(truth)
    if t.kind == "number":
        got = extract_numbers(answer)
        return bool(got) and _close(got[-1], t.numbers[0], rel_tol, abs_tol)
    if t.kind == "numbers":
        return _numbers_match(extract_numbers(answer), t.numbers, rel_tol, abs_tol)
    if t.kind == "items":
        return _items_match(answer, t.items)
    want = t.items[0]
    a = normalise(answer)
    if not want:
        return not a
    if a == want:
        return True
    return _word(want).search(a) is not None
