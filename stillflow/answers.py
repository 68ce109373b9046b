"""Answer checking: does a final answer match the ground truth?

Shared by the simulator (task success), the stream scorer (correctness) and the trainer's evaluation,
so that all three judge an answer the same way. Normalised text comparison; numbers with tolerance.
"""

from __future__ import annotations

import math
import re
import unicodedata

__all__ = ["normalise", "extract_numbers", "answers_match"]

_NUM = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_PUNCT = re.compile(r"[^\w\s.\-]")
_SPACE = re.compile(r"\s+")
_FILLER = re.compile(r"^(?:the answer is|answer|final answer|result)\s*[:\-]?\s*", re.IGNORECASE)


def normalise(text: str) -> str:
    """Lower-case, NFKC, drop filler prefixes, punctuation (but . and -), collapse spaces."""
    t = unicodedata.normalize("NFKC", text).strip().lower()
    t = _FILLER.sub("", t)
    t = _PUNCT.sub(" ", t)
    t = _SPACE.sub(" ", t).strip(" .")
    return t


def extract_numbers(text: str) -> list[float]:
    out = []
    for m in _NUM.finditer(text):
        try:
            out.append(float(m.group(0).replace(",", "")))
        except ValueError:  # pragma: no cover - the pattern only matches numbers
            continue
    return out


def _is_number(text: str) -> bool:
    m = _NUM.fullmatch(text.strip().replace(" ", ""))
    return m is not None


def answers_match(answer: str | None, truth: str | None, *, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    """True when `answer` states the ground truth.

    - numeric truth: the answer's last number equals it within tolerance (units and words around it
      are ignored, "about 42.0" matches "42");
    - text truth: the normalised truth equals the normalised answer, or appears in it as whole words
      (so "The capital is Paris." matches "paris").
    """
    if answer is None or truth is None:
        return False
    t = normalise(truth)
    a = normalise(answer)
    if not t:
        return not a
    if _is_number(truth.strip()):
        want = extract_numbers(truth)[0]
        got = extract_numbers(answer)
        if not got:
            return False
        return math.isclose(got[-1], want, rel_tol=rel_tol, abs_tol=abs_tol)
    if a == t:
        return True
    return re.search(rf"(?<![\w]){re.escape(t)}(?![\w])", a) is not None
