"""A pytest plugin that counts fuzzed inputs per decoder and prints the totals in the terminal summary.

Fuzz tests call `count("decoder name")` once per input they feed; the summary ("fuzzed inputs per
decoder") shows in plain `pytest` / `make test` output, no `-s` needed. Registered in tests/conftest.py.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["count", "counts"]

_counts: Counter[str] = Counter()


def count(decoder: str, n: int = 1) -> None:
    _counts[decoder] += n


def counts() -> dict[str, int]:
    return dict(_counts)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not _counts:
        return
    tr = terminalreporter
    tr.section("fuzzed inputs per decoder")
    width = max(len(k) for k in _counts)
    for name in sorted(_counts):
        tr.write_line(f"{name:<{width}}  {_counts[name]:>7}")
    tr.write_line(f"{'total':<{width}}  {sum(_counts.values()):>7}")
