"""Training data: materialise, dedupe, split by task, and describe it in a manifest.

Exports
- `SFTRecord`, `PairRecord`, `TrainingData` (records + where they came from + duplicates dropped),
  `DataSplit` (train / held-out, by task) and `DataError`;
- sources: `load_jsonl(path)` (an exported directory with `sft.jsonl` and optional `dpo.jsonl`,
  rows either `SFTExample` / `PreferencePair` events or trl rows `{"messages", "tools"}` /
  `{"prompt", "chosen", "rejected", "tools"}`), `read_topics(settings, watermark)` (the dataset topics
  up to a watermark), `from_events(examples, pairs)`;
- `Watermark` (end offsets per topic-partition; JSON round trip), `end_offsets(settings)`;
- `task_key(record)` (the task id, else a hash of the conversation's opening: system + first user
  message), `heldout_of(task, fraction, salt)`, `split_data(data, fraction, holdout_families, salt)`;
- `sft_rows(records)` / `dpo_rows(records)` (trl rows), `data_manifest(data, split)`.

The split is by task, never by example: every example of a task is on one side. Families named in
`holdout_families` go to the held-out side whole (distribution shift). Rows without a task id are
keyed by their opening messages, so two traces of one question still land on the same side.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stillflow.contracts import ContractError, PreferencePair, SFTExample, decode
from stillflow.settings import StillflowSettings

__all__ = [
    "DataError",
    "SFTRecord",
    "PairRecord",
    "TrainingData",
    "DataSplit",
    "Watermark",
    "task_key",
    "heldout_of",
    "split_data",
    "from_events",
    "load_jsonl",
    "read_topics",
    "end_offsets",
    "sft_rows",
    "dpo_rows",
    "data_manifest",
    "sha256_json",
]


# the workload of records that name none (data exported before workloads, or from agents that never said)
DEFAULT_WORKLOAD = "default"


class DataError(ValueError):
    """Training data that cannot be used (missing file, unreadable row, nothing to train on)."""


def sha256_json(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _opening_key(messages: Sequence[dict[str, Any]]) -> str:
    system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
    user = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
    return "q-" + hashlib.sha256(f"{system}\x00{user}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class SFTRecord:
    id: str
    task_id: str | None
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    family: str | None = None
    score: float | None = None
    model_id: str | None = None
    workload: str | None = None

    @property
    def task(self) -> str:
        return task_key(self)

    @property
    def job(self) -> str:
        """Its workload (`DEFAULT_WORKLOAD` when the data does not say)."""
        return self.workload or DEFAULT_WORKLOAD

    @property
    def question(self) -> str:
        return next((m.get("content") or "" for m in self.messages if m.get("role") == "user"), "")


@dataclass(frozen=True)
class PairRecord:
    id: str
    task_id: str | None
    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    family: str | None = None
    workload: str | None = None

    @property
    def task(self) -> str:
        return task_key(self)


def task_key(record: SFTRecord | PairRecord) -> str:
    """The task a record belongs to: its task id, else a hash of its opening (system + first user)."""
    if record.task_id:
        return record.task_id
    msgs = record.messages if isinstance(record, SFTRecord) else record.prompt
    return _opening_key(msgs)


@dataclass
class TrainingData:
    sft: list[SFTRecord]
    pairs: list[PairRecord]
    source: str
    duplicates: int = 0
    invalid: int = 0
    watermark: dict[str, Any] | None = None

    def dedupe(self) -> TrainingData:
        """Drop repeated ids (at-least-once delivery): the first record of an id is kept."""
        seen: set[str] = set()
        sft: list[SFTRecord] = []
        for r in self.sft:
            if r.id not in seen:
                seen.add(r.id)
                sft.append(r)
        seen_p: set[str] = set()
        pairs: list[PairRecord] = []
        for p in self.pairs:
            if p.id not in seen_p:
                seen_p.add(p.id)
                pairs.append(p)
        dropped = (len(self.sft) - len(sft)) + (len(self.pairs) - len(pairs))
        return TrainingData(sft, pairs, self.source, self.duplicates + dropped, self.invalid, self.watermark)


@dataclass
class DataSplit:
    train_sft: list[SFTRecord]
    heldout_sft: list[SFTRecord]
    train_pairs: list[PairRecord]
    heldout_pairs: list[PairRecord]
    heldout_fraction: float
    holdout_families: tuple[str, ...] = ()

    @property
    def train_tasks(self) -> set[str]:
        return {r.task for r in self.train_sft} | {p.task for p in self.train_pairs}

    @property
    def heldout_tasks(self) -> set[str]:
        return {r.task for r in self.heldout_sft} | {p.task for p in self.heldout_pairs}

    @property
    def train_questions(self) -> set[str]:
        return {r.question for r in self.train_sft} | {
            next((m.get("content") or "" for m in p.prompt if m.get("role") == "user"), "") for p in self.train_pairs
        }


def heldout_of(task: str, fraction: float, salt: str = "stillflow") -> bool:
    """Stable per task: about `fraction` of task keys are held out."""
    h = int.from_bytes(hashlib.sha256(f"{salt}\x00{task}".encode()).digest()[:8], "big")
    return (h % 1_000_000) < fraction * 1_000_000


def split_data(
    data: TrainingData,
    fraction: float = 0.1,
    holdout_families: Iterable[str] = (),
    *,
    salt: str = "stillflow",
) -> DataSplit:
    """Train / held-out by task (see the module docstring)."""
    fams = tuple(holdout_families)

    def held(task: str, family: str | None) -> bool:
        return (family is not None and family in fams) or heldout_of(task, fraction, salt)

    # A task is held out if any of its records says so by family (records of one task share a family).
    family_of: dict[str, str] = {}
    for r in data.sft:
        if r.family:
            family_of.setdefault(r.task, r.family)
    for p in data.pairs:
        if p.family:
            family_of.setdefault(p.task, p.family)
    train_sft, held_sft, train_p, held_p = [], [], [], []
    for r in data.sft:
        (held_sft if held(r.task, family_of.get(r.task)) else train_sft).append(r)
    for p in data.pairs:
        (held_p if held(p.task, family_of.get(p.task)) else train_p).append(p)
    return DataSplit(train_sft, held_sft, train_p, held_p, fraction, fams)


# --------------------------------------------------------------------------- sources


def _sft_from_event(ex: SFTExample) -> SFTRecord:
    return SFTRecord(
        id=ex.example_id, task_id=ex.task_id, messages=ex.messages, tools=ex.tools,
        family=ex.metadata.get("family"), score=ex.score, model_id=ex.model_id, workload=ex.workload,
    )


def _pair_from_event(p: PreferencePair) -> PairRecord:
    return PairRecord(
        id=p.pair_id, task_id=p.task_id, prompt=p.prompt, chosen=p.chosen, rejected=p.rejected, tools=p.tools,
        family=p.metadata.get("family"), workload=p.workload,
    )


def from_events(
    examples: Iterable[SFTExample], pairs: Iterable[PreferencePair] = (), *, source: str = "events"
) -> TrainingData:
    return TrainingData([_sft_from_event(e) for e in examples], [_pair_from_event(p) for p in pairs], source).dedupe()


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list):
        raise ValueError("tools must be a list")
    return value


def _sft_from_row(row: dict[str, Any], line: int) -> SFTRecord:
    if "example_id" in row:  # an SFTExample event
        return _sft_from_event(SFTExample.model_validate(row))
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("a row needs a non-empty 'messages' list")
    meta = row.get("metadata") or {}
    rid = row.get("id") or "row-" + sha256_json({"messages": messages, "tools": row.get("tools")})[:32]
    return SFTRecord(id=str(rid), task_id=row.get("task_id"), messages=messages, tools=_tools(row.get("tools")),
                     family=row.get("family") or meta.get("family"), score=row.get("score"),
                     workload=row.get("workload") or meta.get("workload"))


def _pair_from_row(row: dict[str, Any], line: int) -> PairRecord:
    if "pair_id" in row:
        return _pair_from_event(PreferencePair.model_validate(row))
    if "input" in row and "preferred_output" in row:  # OpenAI preference format
        prompt = row["input"].get("messages") or []
        chosen, rejected, tools = row["preferred_output"], row["non_preferred_output"], row["input"].get("tools")
    else:
        prompt, chosen, rejected, tools = row.get("prompt"), row.get("chosen"), row.get("rejected"), row.get("tools")
    if not all(isinstance(x, list) and x for x in (prompt, chosen, rejected)):
        raise ValueError("a pair needs non-empty 'prompt', 'chosen' and 'rejected' message lists")
    rid = row.get("id") or "pair-" + sha256_json({"p": prompt, "c": chosen, "r": rejected})[:32]
    return PairRecord(id=str(rid), task_id=row.get("task_id"), prompt=prompt, chosen=chosen, rejected=rejected,
                      tools=_tools(tools), family=row.get("family") or (row.get("metadata") or {}).get("family"),
                      workload=row.get("workload") or (row.get("metadata") or {}).get("workload"))


def _read_rows(path: Path, parse: Any, first_bad: list[str] | None = None) -> tuple[list[Any], int]:
    out, bad = [], 0
    with path.open(encoding="utf-8") as fp:
        for i, line in enumerate(fp, 1):
            if not line.strip():
                continue
            try:
                out.append(parse(json.loads(line), i))
            except (ValueError, TypeError, KeyError) as exc:
                bad += 1
                if first_bad is not None and not first_bad:
                    first_bad.append(f"{path}:{i}: {str(exc)[:200]}")
                if bad <= 3:
                    import logging

                    logging.getLogger(__name__).warning("%s:%d skipped: %s", path, i, str(exc)[:200])
    return out, bad


def _trace_kind(path: Path) -> str | None:
    """'traces' when the file holds agent traces rather than dataset rows (judged by its first rows)."""
    with path.open("rb") as fp:
        if fp.read(2) == b"\x1f\x8b":
            return "a gzip file (a dataset is plain JSON lines: a .gz is a trace file for `stillflow dataset build`)"
        fp.seek(0)
        seen = 0
        for raw in fp:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError:
                return None
            if not isinstance(row, dict) or "messages" in row or "prompt" in row or "input" in row:
                return None
            if isinstance(row.get("trace"), dict) and "score" in row:
                return "scored traces (ScoredTrace rows)"
            if "task_id" in row and ("steps" in row or "input_text" in row):
                return "agent traces (AgentTrace rows)"
            seen += 1
            if seen >= 3:
                return None
    return None


def load_jsonl(path: str | Path) -> TrainingData:
    """An exported dataset: a directory with `sft.jsonl` (and optionally `dpo.jsonl`), or one SFT file."""
    p = Path(path)
    if p.is_dir():
        sft_path, dpo_path = p / "sft.jsonl", p / "dpo.jsonl"
    else:
        sft_path, dpo_path = p, p.with_name("dpo.jsonl")
    if not sft_path.is_file():
        raise DataError(f"no SFT data: {sft_path} does not exist (expected a directory with sft.jsonl [, dpo.jsonl])")
    kind = _trace_kind(sft_path)
    if kind is not None:
        raise DataError(f"{sft_path} holds {kind}, not a dataset: build one first with `stillflow dataset build "
                        f"--from {sft_path} --out DIR`, then train with `stillflow train --from-jsonl DIR`")
    first_bad: list[str] = []
    sft, bad = _read_rows(sft_path, _sft_from_row, first_bad)
    if not sft and bad:
        raise DataError(f"no SFT example could be read from {sft_path}: all {bad} rows were skipped; the first: "
                        f"{first_bad[0] if first_bad else '?'}")
    pairs: list[PairRecord] = []
    bad_p = 0
    if dpo_path.is_file():
        pairs, bad_p = _read_rows(dpo_path, _pair_from_row)
    data = TrainingData(sft, pairs, f"jsonl:{p}", invalid=bad + bad_p)
    return data.dedupe()


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class Watermark:
    """How far the dataset topics are taken: the end offset (exclusive) per `topic:partition`, and the
    offset of the last window event counted (`windows`)."""

    offsets: dict[str, int] = field(default_factory=dict)
    windows: int = -1

    def to_json(self) -> str:
        return json.dumps({"offsets": dict(sorted(self.offsets.items())), "windows": self.windows}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Watermark:
        if not text:
            return cls()
        obj = json.loads(text)
        return cls({str(k): int(v) for k, v in (obj.get("offsets") or {}).items()}, int(obj.get("windows", -1)))


async def end_offsets(settings: StillflowSettings) -> dict[str, int]:
    """The current end offsets of the SFT and DPO topics (`topic:partition` → offset)."""
    from aiokafka import TopicPartition

    from stillflow.kafka import make_consumer

    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata
        tps = []
        for topic in (settings.topics.dataset_sft, settings.topics.dataset_dpo):
            parts = consumer.partitions_for_topic(topic) or set()
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        ends = await consumer.end_offsets(tps) if tps else {}
        return {f"{tp.topic}:{tp.partition}": int(off) for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def read_topics(settings: StillflowSettings, watermark: Watermark | None = None) -> TrainingData:
    """The dataset topics from the beginning up to `watermark` (its end offsets; None = the end offsets
    now), decoded and deduplicated by id. Undecodable records are counted and skipped (the streams
    service dead-letters them at the source)."""
    from aiokafka import TopicPartition

    from stillflow.kafka import make_consumer

    ends = dict(watermark.offsets) if watermark and watermark.offsets else await end_offsets(settings)
    wm = Watermark(ends, watermark.windows if watermark else -1)
    sft: list[SFTRecord] = []
    pairs: list[PairRecord] = []
    bad = 0
    tps = []
    for key, end in ends.items():
        topic, _, part = key.rpartition(":")
        if end > 0 and topic in (settings.topics.dataset_sft, settings.topics.dataset_dpo):
            tps.append(TopicPartition(topic, int(part)))
    if not tps:
        return TrainingData(sft, pairs, "topics", watermark=json.loads(wm.to_json()))
    consumer = make_consumer(settings.kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    await asyncio.sleep(0)  # let the consumer's background task start (stopping it unstarted raises)
    try:
        if tps:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            remaining = {tp: ends[f"{tp.topic}:{tp.partition}"] for tp in tps}
            while remaining:
                batch = await consumer.getmany(*remaining.keys(), timeout_ms=1000, max_records=2000)
                if not batch:
                    # nothing more arrives below the watermark (compaction/retention): stop at what exists
                    positions = {tp: await consumer.position(tp) for tp in remaining}
                    if all(positions[tp] >= remaining[tp] for tp in remaining):
                        break
                    continue
                for tp, records in batch.items():
                    end = remaining.get(tp)
                    if end is None:
                        continue
                    for rec in records:
                        if rec.offset >= end:
                            break
                        try:
                            if tp.topic == settings.topics.dataset_sft:
                                sft.append(_sft_from_event(decode(rec.value or b"", SFTExample)))
                            else:
                                pairs.append(_pair_from_event(decode(rec.value or b"", PreferencePair)))
                        except ContractError:
                            bad += 1
                    if await consumer.position(tp) >= end:
                        remaining.pop(tp, None)
                        consumer.pause(tp)
    finally:
        await consumer.stop()
    data = TrainingData(sft, pairs, "topics", invalid=bad, watermark=json.loads(wm.to_json()))
    return data.dedupe()


# --------------------------------------------------------------------------- rows and manifest


def sft_rows(records: Iterable[SFTRecord]) -> list[dict[str, Any]]:
    """trl SFT rows; `tools` as JSON text (Arrow cannot hold schemas of different shapes in one column)."""
    return [{"messages": r.messages, "tools": json.dumps(r.tools, ensure_ascii=False)} for r in records]


def dpo_rows(records: Iterable[PairRecord]) -> list[dict[str, Any]]:
    return [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
         "tools": json.dumps(p.tools, ensure_ascii=False)}
        for p in records
    ]


def _digest(records: Sequence[SFTRecord | PairRecord]) -> str:
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.id):
        if isinstance(r, SFTRecord):
            body = {"id": r.id, "messages": r.messages, "tools": r.tools}
        else:
            body = {"id": r.id, "prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "tools": r.tools}
        h.update(json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def data_manifest(data: TrainingData, split: DataSplit, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a version was trained and evaluated on: ids, counts, sha256 per part, the split rule."""

    def fam_counts(records: Iterable[SFTRecord]) -> dict[str, int]:
        return dict(sorted(Counter(r.family or "unknown" for r in records).items()))

    parts = {
        "train_sft": split.train_sft,
        "heldout_sft": split.heldout_sft,
        "train_pairs": split.train_pairs,
        "heldout_pairs": split.heldout_pairs,
    }
    out: dict[str, Any] = {
        "source": data.source,
        "watermark": data.watermark,
        "duplicates_dropped": data.duplicates,
        "invalid_skipped": data.invalid,
        "split": {
            "by": "task",
            "heldout_fraction": split.heldout_fraction,
            "holdout_families": list(split.holdout_families),
            "train_tasks": len(split.train_tasks),
            "heldout_tasks": len(split.heldout_tasks),
        },
        "counts": {k: len(v) for k, v in parts.items()},
        "families": {"train_sft": fam_counts(split.train_sft), "heldout_sft": fam_counts(split.heldout_sft)},
        "workloads": {part: dict(sorted(Counter(r.job for r in split_part).items()))
                      for part, split_part in (("train_sft", split.train_sft), ("heldout_sft", split.heldout_sft))},
        "sha256": {k: _digest(v) for k, v in parts.items()},
        "ids": {k: sorted(r.id for r in v) for k, v in parts.items()},
    }
    if extra:
        out.update(extra)
    return out
