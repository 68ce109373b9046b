"""The model registry: versions, sha256 integrity (a tampered version is refused), transitions, events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stillflow.registry import IntegrityError, ModelRegistry, RegistryError, sha256_file


def _model_dir(tmp_path: Path, tag: str) -> Path:
    d = tmp_path / f"src-{tag}"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights " + tag.encode() * 100)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "tag": tag}))
    (d / "tokenizer.json").write_text("{}")
    return d


def _register(reg: ModelRegistry, tmp_path: Path, tag: str, **kw):
    return reg.register(_model_dir(tmp_path, tag), data_watermark={"offsets": {"sft:0": 10}},
                        metrics={"quality_ratio": 0.95, "failure_rate": 0.01}, confidence_threshold=0.8,
                        documents={"eval_report.json": {"quality_ratio": 0.95}}, **kw)


def test_register_writes_a_manifest_with_every_file(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", "student")
    info, event = _register(reg, tmp_path, "a")
    assert info.version == "v0001" and info.status == "candidate" and not info.live
    files = info.manifest["files"]
    assert set(files) == {"model.safetensors", "config.json", "tokenizer.json", "eval_report.json"}
    for name, digest in files.items():
        assert sha256_file(info.path / name) == digest
    assert info.manifest["data_watermark"] == {"offsets": {"sft:0": 10}}
    assert info.manifest["parent_version"] is None
    assert event.status == "candidate" and event.version == "v0001" and event.manifest_sha256 == reg.manifest_sha256("v0001")
    assert event.confidence_threshold == 0.8 and event.metrics["quality_ratio"] == 0.95
    assert reg.verify("v0001") == files


def test_a_version_whose_files_changed_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", "student")
    info, _ = _register(reg, tmp_path, "a")
    (info.path / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(IntegrityError) as err:
        reg.open("v0001")
    msg = str(err.value)
    assert "refusing student v0001" in msg and "model.safetensors: sha256" in msg and "manifest" in msg
    with pytest.raises(IntegrityError):
        reg.promote("v0001")
    assert reg.live() is None


def test_missing_and_unexpected_files_are_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", "student")
    info, _ = _register(reg, tmp_path, "a")
    (info.path / "tokenizer.json").unlink()
    (info.path / "extra.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError) as err:
        reg.verify("v0001")
    assert {"tokenizer.json: missing", "extra.bin: not in the manifest"} <= set(err.value.problems)


def test_promote_reject_rollback_and_their_events(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", "student")
    _register(reg, tmp_path, "a")
    ev = reg.promote("v0001")
    assert ev.status == "promoted" and ev.previous_version is None and reg.live() == "v0001"
    info2, _ = _register(reg, tmp_path, "b")
    assert info2.version == "v0002" and info2.manifest["parent_version"] == "v0001"
    ev = reg.promote("v0002")
    assert ev.previous_version == "v0001" and reg.live() == "v0002"
    _register(reg, tmp_path, "c")
    ev = reg.reject("v0003", ["quality_ratio 0.5 < 0.90"])
    assert ev.status == "rejected" and ev.reasons == ["quality_ratio 0.5 < 0.90"] and reg.status("v0003") == "rejected"
    ev = reg.rollback(reason="bad answers in production")
    assert ev.status == "rolled_back" and ev.version == "v0002" and ev.previous_version == "v0001"
    assert reg.live() == "v0001" and reg.status("v0002") == "rolled_back"
    with pytest.raises(RegistryError, match="no earlier promoted version"):
        reg.rollback()
    assert [i.version for i in reg.list()] == ["v0001", "v0002", "v0003"]
    statuses = [(h["version"], h["status"]) for h in reg.history()]
    assert statuses[-1] == ("v0002", "rolled_back")


def test_unknown_version_and_bad_names(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", "student")
    with pytest.raises(RegistryError, match="no version 'v0009'"):
        reg.promote("v0009")
    with pytest.raises(RegistryError, match="must match"):
        ModelRegistry(tmp_path, "bad name/..")


def test_a_half_written_version_of_a_killed_writer_is_never_listed_and_is_cleaned(tmp_path: Path) -> None:
    """A writer killed mid-copy leaves `.tmp-<version>-<random>` (with or without a manifest): it is not a
    version (not listed, not openable), and the next `register` (under the lock) removes it."""
    reg = ModelRegistry(tmp_path / "reg", "student")
    _register(reg, tmp_path, "a")
    for name, with_manifest in ((".tmp-v0002-dead0001", False), (".tmp-v0003-dead0002", True)):
        left = reg.dir / name
        left.mkdir()
        (left / "model.safetensors").write_bytes(b"half")
        if with_manifest:
            (left / "manifest.json").write_text("{}")
    assert reg.versions() == ["v0001"] and [i.version for i in reg.list()] == ["v0001"]
    with pytest.raises(RegistryError):
        reg.path("v0002")
    info, _ = _register(reg, tmp_path, "b")
    assert info.version == "v0002" and reg.versions() == ["v0001", "v0002"]
    assert not [p for p in reg.dir.iterdir() if p.name.startswith(".tmp-")]
    reg.verify("v0002")


def _register_per_workload(reg: ModelRegistry, tmp_path: Path, tag: str, promoted: dict[str, float]):
    """A version gated per workload: evaluated on lookup (threshold 0.6) and search (0.9), promoted for `promoted`."""
    report = {"quality_ratio": 0.8, "workloads": {"lookup": {"confidence": {"threshold": 0.6}},
                                                  "search": {"confidence": {"threshold": 0.9}}}}
    verdicts = {w: "promoted" if w in promoted else "rejected" for w in ("lookup", "search")}
    return reg.register(_model_dir(tmp_path, tag), metrics={"quality_ratio": 0.8}, confidence_threshold=0.7,
                        documents={"eval_report.json": report},
                        extra={"workloads": promoted, "workload_verdicts": verdicts})


def test_an_operator_promotion_chooses_the_workloads_a_version_serves(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", "student")
    info, _ = _register_per_workload(reg, tmp_path, "a", {})  # the gate promoted it for no workload
    assert info.workloads == {}
    reg.reject(info.version, ["no workload passed the gate"])
    # the gate's promotion keeps the gate's choice (none): an operator's serves every evaluated workload
    event = reg.promote(info.version, reason="the operator", operator=True)
    assert event.workloads == {"lookup": 0.6, "search": 0.9}
    assert reg.served(info.version) == {"lookup": 0.6, "search": 0.9} == reg.info(info.version).workloads
    assert reg.history()[-1]["workloads"] == {"lookup": 0.6, "search": 0.9}

    b, _ = _register_per_workload(reg, tmp_path, "b", {"lookup": 0.6})
    event = reg.promote(b.version, reason="the operator", operator=True, workloads=["search"])
    assert event.workloads == {"search": 0.9} and reg.served(b.version) == {"search": 0.9}
    # a rollback makes the earlier version live again with what it served
    back = reg.rollback(reason="test")
    assert back.previous_version == info.version and reg.served(info.version) == {"lookup": 0.6, "search": 0.9}

    c, _ = _register_per_workload(reg, tmp_path, "c", {"lookup": 0.6})
    with pytest.raises(RegistryError, match=r"not evaluated on billing \(evaluated: lookup, search\)"):
        reg.promote(c.version, operator=True, workloads=["billing"])
    with pytest.raises(RegistryError, match="only an operator"):
        reg.promote(c.version, workloads=["lookup"])
    assert reg.promote(c.version, operator=True).workloads == {"lookup": 0.6}  # the gate's choice stands


def test_a_version_gated_before_workloads_serves_every_workload(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", "student")
    info, _ = _register(reg, tmp_path, "a")
    reg.promote(info.version, operator=True)
    assert reg.served(info.version) is None and reg.evaluated_workloads(info.version) == {}
