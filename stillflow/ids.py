"""Deterministic record ids derived from trace ids, so a redelivered trace yields the same records.

Exports `derived_id` (prefix + parts, hashed when it would pass 128 characters or the id limit),
`example_id_for`, `scored_id_for`, `pair_id_for` and `dead_letter_id_for`.
"""

from __future__ import annotations

import hashlib

from stillflow.contracts import get_limits

__all__ = ["derived_id", "example_id_for", "scored_id_for", "pair_id_for", "dead_letter_id_for"]

# Derived ids stay short whatever ids may be (so they do not change when the id limit is raised).
_MAX_ID = 128


def derived_id(prefix: str, value: str) -> str:
    """`<prefix>-<value>`, or `<prefix>-h<sha256(value)[:40]>` when that would exceed 128 characters (or the
    id limit, if lower)."""
    out = f"{prefix}-{value}"
    if len(out) <= min(_MAX_ID, get_limits().max_id_chars):
        return out
    return f"{prefix}-h{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}"


def example_id_for(trace_id: str) -> str:
    """The SFT example id of a trace: `sft-<trace_id>`."""
    return derived_id("sft", trace_id)


def scored_id_for(trace_id: str) -> str:
    """The event id of a trace's `ScoredTrace`: `scored-<trace_id>`."""
    return derived_id("scored", trace_id)


def dead_letter_id_for(reason: str, trace_id: str) -> str:
    """The event id of a dead letter about a whole trace, e.g. `dlq-incomplete-<trace_id>`."""
    return derived_id(f"dlq-{reason}", trace_id)


def pair_id_for(chosen_trace_id: str, rejected_trace_id: str) -> str:
    """`pair-<sha256(chosen NUL rejected)[:40]>`: one id per ordered pair of traces."""
    digest = hashlib.sha256(f"{chosen_trace_id}\x00{rejected_trace_id}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"pair-{digest[:40]}"
