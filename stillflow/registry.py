"""The model registry on disk: versions, their integrity, their status, and the events that announce them.

Shared by the trainer (which writes versions) and the router (which loads them); pure Python (hashlib,
the filesystem), so it imports light.

Layout (one directory per model, one per version; nothing but the filesystem):

    <registry>/<model>/
        state.json                  which version is live, each version's status, the history
        trainer_state.json          the retrain consumer's watermark (trainer.consumer)
        <version>/                  v0001, v0002, ...
            model.safetensors, config.json, generation_config.json,
            tokenizer.json, tokenizer_config.json, chat_template.jinja, ...
            eval_report.json        the evaluation (trainer.evaluate)
            data_manifest.json      what it was trained and evaluated on (trainer.data)
            training.json           stages, steps, losses, the settings used
            manifest.json           sha256 of every file above, parent version, data watermark,
                                    metrics, confidence threshold, gate decision

A version directory is written whole under a temporary name (`.tmp-<version>-<random>`, never listed)
and renamed into place, and never changes afterwards: status lives in `state.json`. A writer holds the
model's lock while it writes, so a temporary directory found under the lock was left by a writer that
died (kill -9 mid-copy): `register` removes such leftovers before it numbers the next version.
Every read for use (`verify`, `open`, `promote`, `rollback`) checks each file against its sha256 in
the manifest, and refuses a version that does not match with `IntegrityError` naming every bad file.

Exports `ModelRegistry`, `VersionInfo`, `RegistryError`, `IntegrityError`, `sha256_file`,
`MANIFEST`, `STATUSES`. Transitions return the `ModelVersionEvent` to publish (the registry itself
never talks to Kafka).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stillflow.contracts import NAME_PATTERN, ModelVersionEvent

__all__ = [
    "MANIFEST",
    "STATUSES",
    "served_workloads",
    "RegistryError",
    "IntegrityError",
    "VersionInfo",
    "ModelRegistry",
    "sha256_file",
]

MANIFEST = "manifest.json"
STATE = "state.json"
STATUSES = ("candidate", "promoted", "rejected", "rolled_back")
_VERSION_RX = re.compile(r"^v(\d{4,})$")
_ID_RX = re.compile(NAME_PATTERN)


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, wrong status, bad name)."""


class IntegrityError(RegistryError):
    """A version whose files do not match the sha256 recorded in its manifest."""

    def __init__(self, model: str, version: str, problems: list[str]) -> None:
        self.model = model
        self.version = version
        self.problems = problems
        listed = "; ".join(problems[:10]) + (f"; ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        super().__init__(
            f"refusing {model} {version}: its files do not match the manifest ({listed}). The version was modified "
            f"or damaged after it was registered; restore it from a backup or retrain."
        )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fp:
        while True:
            block = fp.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: str
    path: Path
    status: str
    live: bool
    manifest: dict[str, Any]
    # the workloads an operator promoted it for (`promote(workloads=...)`), which replace the gate's
    served_override: dict[str, float] | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.manifest.get("metrics") or {})

    @property
    def confidence_threshold(self) -> float | None:
        return self.manifest.get("confidence_threshold")

    @property
    def workloads(self) -> dict[str, float] | None:
        """The workloads this version was promoted for, with their thresholds (None: gated before workloads
        existed, it serves every workload). An operator's promotion replaces the gate's choice."""
        return dict(self.served_override) if self.served_override is not None else served_workloads(self.manifest)


def served_workloads(manifest: dict[str, Any]) -> dict[str, float] | None:
    """A manifest's `workloads` (name → calibrated confidence threshold), None when it has none (a version
    registered before workloads: it serves every workload at its one threshold)."""
    raw = manifest.get("workloads")
    if not isinstance(raw, dict):
        return None
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float))}


class ModelRegistry:
    """The versions of one model under `<root>/<model>`."""

    def __init__(self, root: str | Path, model: str) -> None:
        if not _ID_RX.match(model):
            raise RegistryError(f"model name {model!r} must match {NAME_PATTERN}")
        self.root = Path(root)
        self.model = model
        self.dir = self.root / model

    # ---- state ----

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.dir / ".lock"
        with lock_path.open("a+") as fp:
            try:
                import fcntl

                fcntl.flock(fp.fileno(), fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - not POSIX
                pass
            yield

    def _state(self) -> dict[str, Any]:
        path = self.dir / STATE
        if not path.exists():
            return {"model": self.model, "live": None, "versions": {}, "history": []}
        return json.loads(path.read_text(encoding="utf-8"))

    def _save_state(self, state: dict[str, Any]) -> None:
        _write_json(self.dir / STATE, state)

    def _record(self, state: dict[str, Any], version: str, status: str, **extra: Any) -> None:
        state["versions"].setdefault(version, {})["status"] = status
        state["versions"][version]["updated_at"] = _now()
        state["history"].append({"at": _now(), "version": version, "status": status, **extra})

    # ---- reading ----

    def versions(self) -> list[str]:
        """Registered versions, oldest first (directories with a manifest)."""
        if not self.dir.is_dir():
            return []
        out = [p.name for p in self.dir.iterdir()
               if p.is_dir() and _VERSION_RX.match(p.name) and (p / MANIFEST).exists()]
        return sorted(out, key=lambda v: int(_VERSION_RX.match(v).group(1)))  # type: ignore[union-attr]

    def live(self) -> str | None:
        return self._state().get("live")

    def status(self, version: str) -> str:
        return self._state()["versions"].get(version, {}).get("status", "candidate")

    def path(self, version: str) -> Path:
        p = self.dir / version
        if not (p / MANIFEST).exists():
            known = ", ".join(self.versions()) or "none"
            raise RegistryError(f"{self.model} has no version {version!r} (registered: {known})")
        return p

    def manifest(self, version: str) -> dict[str, Any]:
        return json.loads((self.path(version) / MANIFEST).read_text(encoding="utf-8"))

    def manifest_sha256(self, version: str) -> str:
        return sha256_file(self.path(version) / MANIFEST)

    def info(self, version: str) -> VersionInfo:
        state = self._state()
        entry = state["versions"].get(version, {})
        return VersionInfo(self.model, version, self.path(version), entry.get("status", "candidate"),
                           state.get("live") == version, self.manifest(version),
                           served_workloads(entry))  # an operator's choice: state.json, same shape

    def served(self, version: str) -> dict[str, float] | None:
        """The workloads `version` serves, each with its threshold (None: every workload, at the version's
        one threshold): an operator's choice at promotion, else the gate's (the manifest's)."""
        return self.info(version).workloads

    def evaluated_workloads(self, version: str) -> dict[str, float]:
        """Every workload `version` was evaluated on, with its calibrated threshold (the eval report's, else
        the version's overall one, else 1.0: the student answers only when fully confident)."""
        manifest = self.manifest(version)
        overall = manifest.get("confidence_threshold")
        report_path = self.path(version) / "eval_report.json"
        per: dict[str, Any] = {}
        if report_path.exists():
            try:
                per = json.loads(report_path.read_text(encoding="utf-8")).get("workloads") or {}
            except (OSError, ValueError):
                per = {}
        names = sorted(set(per) | set(manifest.get("workload_verdicts") or {}))
        out: dict[str, float] = {}
        for w in names:
            thr = ((per.get(w) or {}).get("confidence") or {}).get("threshold")
            out[w] = float(thr if thr is not None else overall if overall is not None else 1.0)
        return out

    def _operator_workloads(self, version: str, workloads: list[str] | None) -> dict[str, float] | None:
        """What an operator's promotion serves: the named workloads (each must have been evaluated); with
        none named, the gate's choice, or, for a version the gate promoted for no workload, every workload
        it was evaluated on (the operator overrides the gate). None: keep the gate's choice."""
        evaluated = self.evaluated_workloads(version)
        if workloads:
            unknown = sorted(set(workloads) - set(evaluated))
            if unknown:
                raise RegistryError(f"{self.model} {version} was not evaluated on {', '.join(unknown)} "
                                    f"(evaluated: {', '.join(evaluated) or 'no workload'})")
            return {w: evaluated[w] for w in sorted(set(workloads))}
        gate = served_workloads(self.manifest(version))
        if gate is not None and not gate and evaluated:
            return evaluated
        return None

    def list(self) -> list[VersionInfo]:
        return [self.info(v) for v in self.versions()]

    def history(self) -> list[dict[str, Any]]:
        return list(self._state().get("history", []))

    def verify(self, version: str) -> dict[str, str]:
        """Check every file against the manifest; raise `IntegrityError` listing each problem."""
        path = self.path(version)
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            files: dict[str, str] = manifest["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise IntegrityError(self.model, version, [f"{MANIFEST}: unreadable ({exc})"]) from None
        problems: list[str] = []
        for rel, want in sorted(files.items()):
            f = path / rel
            if not f.is_file():
                problems.append(f"{rel}: missing")
                continue
            got = sha256_file(f)
            if got != want:
                problems.append(f"{rel}: sha256 {got[:12]}… != manifest {want[:12]}…")
        for f in sorted(path.rglob("*")):
            if f.is_file():
                rel = f.relative_to(path).as_posix()
                if rel != MANIFEST and rel not in files:
                    problems.append(f"{rel}: not in the manifest")
        if problems:
            raise IntegrityError(self.model, version, problems)
        return files

    def open(self, version: str | None = None) -> VersionInfo:
        """A verified version ready to load (default: the live one)."""
        v = version or self.live()
        if v is None:
            raise RegistryError(f"{self.model} has no live version")
        self.verify(v)
        return self.info(v)

    # ---- writing ----

    def next_version(self) -> str:
        nums = [int(_VERSION_RX.match(v).group(1)) for v in self.versions()]  # type: ignore[union-attr]
        if self.dir.is_dir():  # a version being written also takes its number
            for p in self.dir.iterdir():
                m = re.match(r"^\.tmp-v(\d+)-", p.name)
                if m:
                    nums.append(int(m.group(1)))
        return f"v{(max(nums) + 1) if nums else 1:04d}"

    def register(
        self,
        source: str | Path,
        *,
        parent: str | None = None,
        data_watermark: Any = None,
        metrics: dict[str, float] | None = None,
        confidence_threshold: float | None = None,
        documents: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[VersionInfo, ModelVersionEvent]:
        """Copy the model files from `source`, add `documents` (name → JSON object, e.g.
        `eval_report.json`), write the manifest, and record the version as a candidate."""
        src = Path(source)
        if not src.is_dir():
            raise RegistryError(f"nothing to register: {src} is not a directory")
        with self._locked():
            self._remove_leftovers()
            version = self.next_version()
            tmp = self.dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                for f in sorted(src.iterdir()):
                    if f.is_file() and not f.name.startswith(".") and f.name != MANIFEST:
                        shutil.copy2(f, tmp / f.name)
                for name, obj in (documents or {}).items():
                    _write_json(tmp / name, obj)
                files = {f.relative_to(tmp).as_posix(): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
                manifest = {
                    "model": self.model,
                    "version": version,
                    "created_at": _now(),
                    "parent_version": parent if parent is not None else self.live(),
                    "data_watermark": data_watermark,
                    "metrics": metrics or {},
                    "confidence_threshold": confidence_threshold,
                    **(extra or {}),
                    "files": files,
                }
                _write_json(tmp / MANIFEST, manifest)
                os.replace(tmp, self.dir / version)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            state = self._state()
            self._record(state, version, "candidate")
            self._save_state(state)
        return self.info(version), self._event(version, "candidate")

    def _remove_leftovers(self) -> list[str]:
        """Temporary version directories of writers that died (call with the lock held)."""
        removed = []
        for p in self.dir.iterdir():
            if p.is_dir() and p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed

    def _event(self, version: str, status: str, *, previous: str | None = None,
               reasons: list[str] | None = None) -> ModelVersionEvent:
        manifest = self.manifest(version)
        metrics = {k: float(v) for k, v in (manifest.get("metrics") or {}).items() if isinstance(v, (int, float))}
        return ModelVersionEvent(
            model_name=self.model,
            version=version,
            status=status,  # type: ignore[arg-type]
            path=str(self.path(version).resolve()),
            manifest_sha256=self.manifest_sha256(version),
            previous_version=previous,
            confidence_threshold=manifest.get("confidence_threshold"),
            metrics=metrics,
            reasons=list(reasons or []),
            workloads=self.served(version) or {},
            workload_verdicts={str(k): str(v) for k, v in (manifest.get("workload_verdicts") or {}).items()},
        )

    def promote(self, version: str, *, reason: str | None = None, workloads: list[str] | None = None,
                operator: bool = False) -> ModelVersionEvent:
        """Make `version` live (verified first). The event's `previous_version` is the one it replaces.

        `operator=True` (`stillflow models promote`): a person overrides the gate, and chooses what it
        serves: `workloads` (each one evaluated), or by default what the gate promoted it for, or every
        evaluated workload when the gate promoted it for none."""
        if workloads and not operator:
            raise RegistryError("only an operator's promotion names workloads; the gate's are in the manifest")
        with self._locked():
            self.verify(version)
            state = self._state()
            previous = state.get("live")
            if previous == version:
                raise RegistryError(f"{self.model} {version} is already live")
            chosen = self._operator_workloads(version, workloads) if operator else None
            state["live"] = version
            extra: dict[str, Any] = {"workloads": chosen} if chosen is not None else {}
            self._record(state, version, "promoted", previous=previous, reason=reason, **extra)
            if chosen is not None:
                state["versions"][version]["workloads"] = chosen
            self._save_state(state)
        return self._event(version, "promoted", previous=previous, reasons=[reason] if reason else [])

    def reject(self, version: str, reasons: list[str]) -> ModelVersionEvent:
        with self._locked():
            state = self._state()
            if state.get("live") == version:
                raise RegistryError(f"{self.model} {version} is live; roll it back instead of rejecting it")
            self._record(state, version, "rejected", reasons=reasons)
            self._save_state(state)
        return self._event(version, "rejected", reasons=reasons)

    def rollback(self, to: str | None = None, *, reason: str | None = None) -> ModelVersionEvent:
        """Take the live version out of service and make `to` live again (default: the version that was
        live before it). The event is `rolled_back` for the version taken out; its `previous_version`
        names the version that is live again."""
        with self._locked():
            state = self._state()
            current = state.get("live")
            if current is None:
                raise RegistryError(f"{self.model} has no live version to roll back")
            target = to or self._previous_live(state, current)
            if target is None:
                raise RegistryError(f"{self.model} has no earlier promoted version to roll back to; "
                                    f"name one with --to")
            if target == current:
                raise RegistryError(f"{self.model} {target} is already live")
            self.verify(target)
            state["live"] = target
            self._record(state, current, "rolled_back", to=target, reason=reason)
            state["versions"].setdefault(target, {})["status"] = "promoted"
            self._save_state(state)
        return self._event(current, "rolled_back", previous=target, reasons=[reason] if reason else [])

    @staticmethod
    def _previous_live(state: dict[str, Any], current: str) -> str | None:
        """The latest version promoted before `current` that has not been rolled back since."""
        rolled = {v for v, s in state["versions"].items() if s.get("status") == "rolled_back"}
        for entry in reversed(state["history"]):
            v = entry["version"]
            if entry["status"] == "promoted" and v != current and v not in rolled:
                return v
        return None
