"""`stillflow export`: the dataset topics as JSONL files, deduplicated by record id.

Formats:
- `trl`: `sft.jsonl` rows `{"messages", "tools"}` (SFTTrainer's conversational format) and `dpo.jsonl`
  rows `{"prompt", "chosen", "rejected", "tools"}` (DPOTrainer's conversational preference format);
- `openai`: `sft.jsonl` rows `{"messages", "tools"}` (OpenAI chat fine-tuning) and `dpo.jsonl` rows
  `{"input": {"messages", "tools"}, "preferred_output", "non_preferred_output"}` (OpenAI preference
  fine-tuning).
A `manifest.json` beside them lists counts, the sha256 of each file and the window filter.

The topics are read from the beginning up to the end offsets seen at the start, so an export is a
snapshot that finishes even while the pipeline keeps writing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stillflow.contracts import ContractError, PreferencePair, SFTExample, decode
from stillflow.kafka import read_to_end
from stillflow.settings import StillflowSettings

__all__ = ["ExportReport", "export", "sft_row", "sft_row_of", "dpo_row", "parse_window_id", "jsonl_line",
           "write_lines", "write_jsonl"]


@dataclass
class ExportReport:
    out_dir: Path
    fmt: str
    n_sft: int = 0
    n_dpo: int = 0
    duplicates: int = 0
    undecodable: int = 0
    skipped_before_since: int = 0
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256

    def summary(self) -> str:
        return (f"exported {self.n_sft} SFT examples and {self.n_dpo} preference pairs ({self.fmt}) to "
                f"{self.out_dir}; {self.duplicates} duplicates dropped, {self.undecodable} undecodable skipped"
                + (f", {self.skipped_before_since} before --since" if self.skipped_before_since else ""))


def parse_window_id(window_id: str) -> datetime:
    """`w-<epoch seconds>` → the window's start."""
    try:
        prefix, secs = window_id.split("-", 1)
        if prefix != "w":
            raise ValueError
        return datetime.fromtimestamp(float(secs), UTC)
    except ValueError:
        raise ValueError(f"not a window id: {window_id!r} (expected w-<epoch seconds>, e.g. w-1767225600)") from None


def sft_row(ex: SFTExample, fmt: str) -> dict[str, Any]:
    return sft_row_of(ex.messages, ex.tools, fmt)


def sft_row_of(messages: list[dict[str, Any]], tools: list[dict[str, Any]], fmt: str) -> dict[str, Any]:
    """The row of an SFT example given its parts (the same in both formats)."""
    row: dict[str, Any] = {"messages": messages}
    if tools:
        row["tools"] = tools
    return row


def dpo_row(pair: PreferencePair, fmt: str) -> dict[str, Any]:
    if fmt == "openai":
        inp: dict[str, Any] = {"messages": pair.prompt}
        if pair.tools:
            inp["tools"] = pair.tools
        return {"input": inp, "preferred_output": pair.chosen, "non_preferred_output": pair.rejected}
    row: dict[str, Any] = {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    if pair.tools:
        row["tools"] = pair.tools
    return row


def jsonl_line(row: dict[str, Any]) -> str:
    """One row as the dataset files hold it (sorted keys: the same contents always give the same bytes)."""
    return json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"


def write_lines(path: Path, lines: list[str]) -> str:
    """Write `jsonl_line` lines; returns the file's sha256."""
    data = "".join(lines).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    return write_lines(path, [jsonl_line(r) for r in rows])


async def export(settings: StillflowSettings, *, out_dir: str | Path, fmt: str = "trl", since: str | None = None,
                 timeout_s: float = 10.0) -> ExportReport:
    if fmt not in ("trl", "openai"):
        raise ValueError(f"unknown format {fmt!r}: trl or openai")
    since_dt = parse_window_id(since) if since else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir=out, fmt=fmt)

    def keep(window_start: datetime | None) -> bool:
        if since_dt is None or window_start is None or window_start >= since_dt:
            return True
        report.skipped_before_since += 1
        return False

    async def collect(topic: str, model: type[SFTExample] | type[PreferencePair], id_field: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for raw in await read_to_end(settings, topic, idle_timeout_s=timeout_s):
            try:
                rec = decode(raw, model)
            except ContractError:
                report.undecodable += 1
                continue
            rid = getattr(rec, id_field)
            if rid in out:
                report.duplicates += 1
            elif keep(rec.window_start):
                out[rid] = rec
        return out

    sft = await collect(settings.topics.dataset_sft, SFTExample, "example_id")
    pairs = await collect(settings.topics.dataset_dpo, PreferencePair, "pair_id")
    # Sorted by id: the same topic contents always export to the same bytes.
    sft_rows = [sft_row(sft[k], fmt) for k in sorted(sft)]
    dpo_rows = [dpo_row(pairs[k], fmt) for k in sorted(pairs)]
    report.n_sft, report.n_dpo = len(sft_rows), len(dpo_rows)
    report.files["sft.jsonl"] = write_jsonl(out / "sft.jsonl", sft_rows)
    report.files["dpo.jsonl"] = write_jsonl(out / "dpo.jsonl", dpo_rows)
    manifest = {
        "format": fmt,
        "since": since,
        "counts": {"sft": report.n_sft, "dpo": report.n_dpo, "duplicates_dropped": report.duplicates,
                   "undecodable": report.undecodable},
        "sha256": report.files,
        "sft_ids": sorted(sft),
        "pair_ids": sorted(pairs),
        "topics": {"sft": settings.topics.dataset_sft, "dpo": settings.topics.dataset_dpo},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return report
