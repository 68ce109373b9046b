"""`stillflow dataset build` without a broker: what it reads, what it refuses (with the line and the reason),
the stream's order (event time, references carried per task), the outputs, and the trainer's refusal of a
trace file. The identity with the live stream is in test_dataset_build_stream.py."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from sim.policies import make_policy
from sim.runner import iter_offline
from stillflow.contracts import AgentTrace, ScoredTrace, TrajectoryScore
from stillflow.quality.settings import QualitySettings
from streams.dataset_build import BuildError, build_dataset
from streams.settings import StreamsSettings
from tests.helpers import SIM_START, make_trace, real_shaped_row
from trainer.data import DataError, load_jsonl


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _sim(n: int, policy: str, seed: int, prefix: str | None = None, offset_ms: int = 0) -> list[AgentTrace]:
    out = []
    for t in iter_offline(n, make_policy(policy), seed=seed, start=SIM_START + timedelta(milliseconds=offset_ms)):
        out.append(t.model_copy(update={"trace_id": f"{prefix}{t.trace_id}"}) if prefix else t)
    return out


def test_bad_rows_are_reported_by_line_with_their_reason_and_the_rest_is_built(tmp_path: Path) -> None:
    good = [make_trace(i).model_dump(mode="json") for i in range(3)]
    no_task = dict(good[0], trace_id="x-1")
    del no_task["task_id"]
    bad_step = dict(good[0], trace_id="x-2", steps=[{"step_type": "levitate"}])
    rows = [good[0], "not json {", {"messages": [{"role": "user", "content": "hi"}]}, good[1],
            {"trace_id": "t", "task_id": "k", "seq": 0, "step": {"step_type": "output"}}, "[1, 2]", no_task,
            bad_step, "", good[2]]
    src = _write(tmp_path / "traces.jsonl", rows)
    with src.open("ab") as fp:
        fp.write(b'{"trace_id": "\xff"}\n')  # not UTF-8: that line only
    report = build_dataset([src], tmp_path / "out", progress=False)
    problems = {p.line: p.reason for p in report.problems}
    assert set(problems) == {2, 3, 5, 6, 7, 8, 11}, problems
    assert problems[2].startswith("not JSON")
    assert "SFT example" in problems[3] and "stillflow train --from-jsonl" in problems[3]
    assert "step event" in problems[5]
    assert "not an object" in problems[6]
    assert "task_id" in problems[7]
    assert "step_type" in problems[8] and problems[8].startswith("not a valid trace")
    assert "UTF-8" in problems[11]
    m = _manifest(tmp_path / "out")
    assert m["counts"]["rows"] == 10 and m["counts"]["unreadable"] == 7 and m["counts"]["traces"] == 3
    assert [r["line"] for r in _jsonl(tmp_path / "out" / "unreadable.jsonl")] == [2, 3, 5, 6, 7, 8, 11]
    assert m["counts"]["sft"] == 3 and len(_jsonl(tmp_path / "out" / "sft.jsonl")) == 3


def test_nothing_readable_is_an_error_that_names_the_first_problem(tmp_path: Path) -> None:
    src = _write(tmp_path / "x.jsonl", ["nope", "[]"])
    with pytest.raises(BuildError, match=r"no readable trace in 2 rows; the first: .*x.jsonl:1: not JSON"):
        build_dataset([src], tmp_path / "out", progress=False)
    assert len(_jsonl(tmp_path / "out" / "unreadable.jsonl")) == 2
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(BuildError, match="the input is empty"):
        build_dataset([tmp_path / "empty.jsonl"], tmp_path / "out", progress=False)
    with pytest.raises(BuildError, match="no such file"):
        build_dataset([tmp_path / "missing.jsonl"], tmp_path / "out", progress=False)


def test_duplicates_keep_the_first_and_gz_scored_rows_and_missing_fields_are_read(tmp_path: Path) -> None:
    a = make_trace(1).model_dump(mode="json")
    changed = dict(a, final_output="something else")  # the same trace id again: dropped, the first kept
    scored = ScoredTrace(trace=make_trace(2), score=TrajectoryScore(correctness=1, efficiency=1, tool_selection=1,
                                                                     safety=1, reasoning_quality=1, overall=1),
                         passed=True).model_dump(mode="json")
    bare = make_trace(3).model_dump(mode="json")
    del bare["trace_id"], bare["timestamp"]
    with gzip.open(tmp_path / "t.jsonl.gz", "wt") as fp:
        for r in (a, changed, scored, bare):
            fp.write(json.dumps(r) + "\n")
    out = tmp_path / "out"
    build_dataset([tmp_path / "t.jsonl.gz"], out, progress=False)
    c = _manifest(out)["counts"]
    assert (c["traces"], c["duplicates_dropped"], c["scored_rows_unwrapped"], c["derived_trace_ids"],
            c["timestamps_filled"]) == (3, 1, 1, 1, 1)
    sft = _jsonl(out / "sft.jsonl")
    assert any(m["content"] == "answer 1" for r in sft for m in r["messages"] if m["role"] == "assistant")
    assert not any("something else" in json.dumps(r) for r in sft)
    # a derived id is the same on every run
    build_dataset([tmp_path / "t.jsonl.gz"], tmp_path / "again", progress=False)
    assert _manifest(tmp_path / "again")["sft_ids"] == _manifest(out)["sft_ids"]


def test_traces_are_scored_in_event_time_order_with_the_task_reference_carried(tmp_path: Path) -> None:
    # A long correct trace scores lower on efficiency once a short correct trace of its task came before it
    # (the reference is the fewest steps so far). Its place in the file does not matter, its time does.
    settings = StreamsSettings(quality=QualitySettings(min_score=0.84))
    short = make_trace(1, 3, task="T").model_copy(update={"expected_steps": None, "trace_id": "short"})
    long = make_trace(2, 30, task="T").model_copy(update={"expected_steps": None, "trace_id": "long"})
    src = _write(tmp_path / "a.jsonl", [long.model_dump(mode="json"), short.model_dump(mode="json")])
    build_dataset([src], tmp_path / "after", settings=settings, progress=False)
    rejected = {r["trace_id"]: r for r in _jsonl(tmp_path / "after" / "rejected.jsonl")}
    assert list(rejected) == ["long"] and rejected["long"]["gates"] == ["min_score"]
    assert "< min score 0.84" in rejected["long"]["reasons"][0]
    # the long one first in time: no reference yet, it passes
    early = long.model_copy(update={"timestamp": short.timestamp - timedelta(seconds=5)})
    src = _write(tmp_path / "b.jsonl", [short.model_dump(mode="json"), early.model_dump(mode="json")])
    build_dataset([src], tmp_path / "before", settings=settings, progress=False)
    assert _jsonl(tmp_path / "before" / "rejected.jsonl") == []


def test_gates_pairs_and_counts_of_sim_traces_and_the_same_bytes_from_two_workers(tmp_path: Path) -> None:
    teacher = _sim(150, "teacher", 7)
    rand = _sim(150, "random", 7, prefix="rnd-", offset_ms=1)  # the same tasks, a millisecond later
    src = _write(tmp_path / "sim.jsonl", [t.model_dump(mode="json") for t in teacher + rand])
    one = build_dataset([src], tmp_path / "one", workers=1, progress=False)
    two = build_dataset([src], tmp_path / "two", workers=2, progress=False)
    for name in ("sft.jsonl", "dpo.jsonl", "rejected.jsonl", "dead_letters.jsonl", "unreadable.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    m = _manifest(tmp_path / "one")
    rejected = _jsonl(tmp_path / "one" / "rejected.jsonl")
    assert m["counts"]["traces"] == 300 and m["counts"]["rejected"] == len(rejected) > 150
    per_gate: dict[str, int] = {}
    for r in rejected:
        assert r["gates"] and len(r["reasons"]) == len(r["gates"])
        for g in r["gates"]:
            per_gate[g] = per_gate.get(g, 0) + 1
    assert m["rejected_by_gate"] == dict(sorted(per_gate.items())) == dict(sorted(one.rejected_by_gate.items()))
    assert m["counts"]["sft"] == m["counts"]["passed"] == len(_jsonl(tmp_path / "one" / "sft.jsonl"))
    pairs = _jsonl(tmp_path / "one" / "dpo.jsonl")
    assert len(pairs) == m["counts"]["dpo"] == len(m["pair_ids"]) > 20
    assert all(set(p) >= {"prompt", "chosen", "rejected"} for p in pairs)
    assert f"{m['counts']['dpo']} preference pairs" in two.summary()
    # what the trainer reads back
    data = load_jsonl(tmp_path / "one")
    assert len(data.sft) == m["counts"]["sft"] and len(data.pairs) == len(pairs)


def test_openai_format_and_real_shaped_rows(tmp_path: Path) -> None:
    src = _write(tmp_path / "real.jsonl", [real_shaped_row(i) for i in range(3)])
    build_dataset([src], tmp_path / "out", fmt="openai", progress=False)
    rows = _jsonl(tmp_path / "out" / "sft.jsonl")
    assert len(rows) == 3
    tool_msgs = [m["content"] for m in rows[0]["messages"] if m["role"] == "tool"]
    assert tool_msgs == ['{"hits":[{"id":7,"subject":"Launch 🚀"},{"id":9,"subject":null}],"total":2}', "[0,4]",
                         "null"]
    assert _manifest(tmp_path / "out")["sft_ids"][0].startswith("sft-run#")


def test_the_trainer_refuses_a_trace_file_and_names_dataset_build(tmp_path: Path) -> None:
    src = _write(tmp_path / "traces.jsonl", [t.model_dump(mode="json") for t in _sim(3, "teacher", 1)])
    with pytest.raises(DataError, match=r"agent traces .*stillflow dataset build --from .*traces.jsonl --out DIR"):
        load_jsonl(src)
    (tmp_path / "junk").mkdir()
    _write(tmp_path / "junk" / "sft.jsonl", ['{"messages": []}', '{"x": 1}'])
    with pytest.raises(DataError, match=r"no SFT example could be read .* all 2 rows were skipped"):
        load_jsonl(tmp_path / "junk")


@pytest.mark.e2e
def test_cli_builds_reports_progress_and_skipped_lines(tmp_path: Path) -> None:
    src = _write(tmp_path / "t.jsonl", [t.model_dump(mode="json") for t in _sim(40, "random", 2)] + ["oops"])
    run = subprocess.run([sys.executable, "-m", "stillflow.cli", "dataset", "build", "--from", str(src),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "built " in run.stdout and "from 40 traces" in run.stdout and "1 unreadable rows" in run.stdout
    assert "40/40 traces scored" in run.stderr and f"skipped {src}:41: not JSON" in run.stderr
    bad = subprocess.run([sys.executable, "-m", "stillflow.cli", "dataset", "build", "--from", str(tmp_path / "no"),
                          "--out", str(tmp_path / "o2")], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "no such file" in bad.stderr
