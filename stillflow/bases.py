"""Base models of LoRA students: where they live, what they are (sha256), and the check before use.

A LoRA version in the registry holds its adapter, not a copy of the base it was trained on: it names that
base (`stillflow_base_ref.json`: name, sha256, the path it had at training). The base itself is a plain
HF directory (safetensors, tokenizer) with `stillflow_base.json` beside the weights: its name, where it
came from, and the sha256 of every file. A base's sha256 is the sha256 of that file list
(`base_digest`), so a base is the same base wherever it is copied.

Named bases (`trainer.bases`, e.g. `gemma3-270m`) are converted once into `bases_dir()/<name>`
(`STILLFLOW_BASES_DIR`, default `~/.cache/stillflow/bases`); a `--pretrained PATH` base is used where it
is and described in memory (its directory is not written to).

Exports `BASE_FILE`, `REF_FILE`, `BaseError`, `bases_dir()`, `base_digest(files)`, `hash_files(dir)`,
`describe_base(dir, name, source)` (writes `stillflow_base.json`), `read_base(dir)`,
`verify_base(dir, expect=None)`, `base_ref(dir, ...)`, `read_ref(version_dir)`, `resolve_base(ref)`.
Pure Python (hashlib, the filesystem): the router imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from stillflow.registry import sha256_file

__all__ = [
    "BASE_FILE",
    "REF_FILE",
    "BaseError",
    "bases_dir",
    "base_digest",
    "hash_files",
    "describe_base",
    "read_base",
    "verify_base",
    "base_ref",
    "read_ref",
    "resolve_base",
]

BASE_FILE = "stillflow_base.json"
REF_FILE = "stillflow_base_ref.json"
_SPEC = "stillflow.base/1"


class BaseError(RuntimeError):
    """A base that cannot be used. `kind`: base_missing | base_mismatch | base_unreadable."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def bases_dir() -> Path:
    env = os.environ.get("STILLFLOW_BASES_DIR")
    return Path(env) if env else Path.home() / ".cache" / "stillflow" / "bases"


def base_digest(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\t{files[rel]}\n".encode())
    return h.hexdigest()


def hash_files(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` but `stillflow_base.json` and hidden files."""
    out = {}
    for f in sorted(directory.rglob("*")):
        rel = f.relative_to(directory).as_posix()
        if f.is_file() and rel != BASE_FILE and not any(part.startswith(".") for part in Path(rel).parts):
            out[rel] = sha256_file(f)
    return out


def describe_base(directory: Path, name: str, source: dict[str, Any]) -> dict[str, Any]:
    files = hash_files(directory)
    doc = {"spec": _SPEC, "name": name, "source": source, "files": files, "sha256": base_digest(files)}
    (directory / BASE_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def read_base(directory: Path) -> dict[str, Any] | None:
    path = directory / BASE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BaseError("base_unreadable", f"{path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("spec") != _SPEC or not isinstance(doc.get("files"), dict):
        raise BaseError("base_unreadable", f"{path}: not a {_SPEC} document")
    return doc


def verify_base(directory: Path, expect: str | None = None) -> str:
    """The base's sha256, recomputed from its files; `BaseError` when it differs from `expect` or from
    what its `stillflow_base.json` recorded (a file changed since it was converted)."""
    if not directory.is_dir():
        raise BaseError("base_missing", f"the base directory {directory} does not exist")
    files = hash_files(directory)
    if not files:
        raise BaseError("base_missing", f"the base directory {directory} is empty")
    digest = base_digest(files)
    recorded = read_base(directory)
    if recorded is not None and recorded.get("sha256") != digest:
        changed = sorted(k for k in set(files) | set(recorded["files"]) if files.get(k) != recorded["files"].get(k))
        raise BaseError("base_mismatch", f"the base in {directory} changed since it was converted "
                                         f"({', '.join(changed[:5])}); convert it again")
    if expect is not None and digest != expect:
        raise BaseError("base_mismatch", f"the base in {directory} has sha256 {digest[:12]}…, the version was "
                                         f"trained on {expect[:12]}…")
    return digest


def base_ref(directory: Path, *, name: str, digest: str) -> dict[str, Any]:
    """What a LoRA version records about its base."""
    return {"spec": _SPEC, "name": name, "sha256": digest, "path": str(directory.resolve())}


def read_ref(version_dir: Path) -> dict[str, Any] | None:
    """A version's base reference, or None for a version that carries its whole model."""
    path = version_dir / REF_FILE
    if not path.is_file():
        return None
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BaseError("base_unreadable", f"{path}: {exc}") from None
    if not isinstance(ref, dict) or not ref.get("name") or not ref.get("sha256"):
        raise BaseError("base_unreadable", f"{path}: needs the base's name and sha256")
    return ref


def resolve_base(ref: dict[str, Any], *, search: Path | None = None) -> Path:
    """The directory of the base `ref` names, verified: the named base in `search` (default
    `bases_dir()`), else the path it had at training. `BaseError` when neither holds that base."""
    root = search or bases_dir()
    candidates = [root / str(ref["name"])]
    if ref.get("path"):
        candidates.append(Path(str(ref["path"])))
    tried = []
    mismatch: BaseError | None = None
    for cand in dict.fromkeys(candidates):
        if not cand.is_dir():
            tried.append(str(cand))
            continue
        try:
            verify_base(cand, expect=str(ref["sha256"]))
            return cand
        except BaseError as exc:
            mismatch = exc
            tried.append(str(cand))
    if mismatch is not None:
        raise mismatch
    raise BaseError("base_missing", f"base {ref['name']!r} (sha256 {str(ref['sha256'])[:12]}…) is not installed "
                                    f"(looked in {', '.join(tried)}); install it with `stillflow bases install "
                                    f"{ref['name']}` or train the version again")
