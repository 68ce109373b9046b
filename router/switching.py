"""Live switching: which student versions are loaded, and the consumer that changes them.

Exports `ModelSlots` and `VersionFollower`.

`ModelSlots` holds the live version, the canary candidate and (for a fast rollback) the version the live
one replaced. A request `acquire`s the model it will use and `release`s it when done; a swap replaces the
slot's reference in one assignment, so requests in flight finish on the model they started with (their
reference keeps it alive; `in_flight` counts them) and new requests get the new one.

`VersionFollower` consumes `stillflow.models.versions` in a consumer group of its own
(`stillflow-router-<replica_id>`), so every replica sees every event. For the configured model:
- `promoted` → load the version in a background thread (path inside the registry root, manifest sha256
  as announced, every file as in the manifest, safetensors only, a warm-up generation) and swap it in;
- `rolled_back` → make the event's `previous_version` live again (from memory when it is the version
  just replaced, else loaded and verified like a promotion);
- `candidate` → load it as the canary when `canary_percent` > 0; `rejected` → drop that canary.
A refused or failed load keeps the current model; it is logged, counted
(`stillflow_router_model_load_failures_total{kind}`) and listed in `status()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from router.metrics import RouterMetrics
from router.runtime import LoadRefused, StudentModel, load_version
from router.settings import RouterSettings
from stillflow.contracts import ContractError, ModelVersionEvent, decode, utcnow
from stillflow.registry import ModelRegistry

__all__ = ["ModelSlots", "VersionFollower"]

log = logging.getLogger("stillflow.router.switching")


class ModelSlots:
    def __init__(self, metrics: RouterMetrics | None = None) -> None:
        self.live: StudentModel | None = None
        self.candidate: StudentModel | None = None
        self.previous: StudentModel | None = None
        self._metrics = metrics

    def acquire(self, canary: bool = False) -> StudentModel | None:
        """The model for one request (the candidate when `canary` and one is loaded); `release` it after."""
        model = self.candidate if canary and self.candidate is not None else self.live
        if model is not None:
            model.in_flight += 1
        return model

    @staticmethod
    def release(model: StudentModel | None) -> None:
        if model is not None:
            model.in_flight -= 1

    def set_live(self, model: StudentModel, *, keep_previous: bool = True) -> StudentModel | None:
        old, self.live = self.live, model
        if old is not None and old is not model:
            self.previous = old if keep_previous else None
        if self.candidate is model:
            self.candidate = None
        self._publish()
        return old

    def set_candidate(self, model: StudentModel | None) -> None:
        self.candidate = model
        self._publish()

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.set_version("live", self.live.version if self.live else None)
            self._metrics.set_version("candidate", self.candidate.version if self.candidate else None)


Loader = Callable[..., StudentModel]


class VersionFollower:
    def __init__(self, settings: RouterSettings, slots: ModelSlots, metrics: RouterMetrics, *,
                 loader: Loader = load_version) -> None:
        self.settings = settings
        self.section = settings.router
        self.registry = ModelRegistry(self.section.registry_dir, self.section.model_name)
        self.slots = slots
        self.metrics = metrics
        self._loader = loader
        self._lock = asyncio.Lock()  # one load at a time, in event order
        self.loads: deque[dict[str, Any]] = deque(maxlen=50)
        self.assigned = asyncio.Event()
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def group_id(self) -> str:
        return f"stillflow-router-{self.section.replica_id}"

    # ---- loading ----

    async def activate(self, version: str, *, slot: str = "live", event: ModelVersionEvent | None = None) -> bool:
        """Load `version` (unless it is at hand) and put it in `slot`; False when refused (current kept)."""
        async with self._lock:
            t0 = time.perf_counter()
            current = self.slots.live if slot == "live" else self.slots.candidate
            if current is not None and current.version == version:
                return True
            model: StudentModel | None = None
            prev = self.slots.previous
            if slot == "live" and prev is not None and prev.version == version and event is None:
                model = prev  # a rollback to the version just replaced: already verified and loaded
            if model is None:
                try:
                    model = await asyncio.to_thread(
                        self._loader, self.registry, version, device=self.section.device,
                        event_path=event.path if event else None,
                        expect_manifest_sha256=event.manifest_sha256 if event else None)
                except LoadRefused as exc:
                    self._report(version, slot, False, time.perf_counter() - t0, exc.kind, str(exc))
                    return False
                except Exception as exc:  # a loader bug must not take the follower down
                    self._report(version, slot, False, time.perf_counter() - t0, "load_error", repr(exc)[:1000])
                    return False
            if slot == "live":
                self.slots.set_live(model, keep_previous=self.section.keep_previous)
            else:
                self.slots.set_candidate(model)
            self._report(version, slot, True, time.perf_counter() - t0, None, None)
            return True

    def _report(self, version: str, slot: str, ok: bool, seconds: float, kind: str | None, error: str | None) -> None:
        self.loads.append({"at": utcnow().isoformat(), "version": version, "slot": slot, "ok": ok,
                           "seconds": round(seconds, 3), "kind": kind, "error": error})
        self.metrics.swaps.labels(slot, "ok" if ok else "failed").inc()
        if ok:
            self.metrics.swap_seconds.observe(seconds)
            log.info("%s %s is now the %s student (%.2fs)", self.registry.model, version, slot, seconds)
        else:
            self.metrics.load_failures.labels(kind or "load_error").inc()
            log.error("refused %s %s for the %s slot; keeping the current model: %s", self.registry.model, version,
                      slot, error)

    @property
    def last_error(self) -> dict[str, Any] | None:
        return next((d for d in reversed(self.loads) if not d["ok"]), None)

    async def load_initial(self) -> None:
        """The registry's live version (and the configured canary), before serving."""
        live = self.registry.live()
        if live is not None:
            await self.activate(live)
        if self.section.canary_version and self.section.canary_percent > 0:
            await self.activate(self.section.canary_version, slot="candidate")

    # ---- events ----

    async def handle(self, event: ModelVersionEvent) -> None:
        if event.model_name != self.registry.model:
            return
        log.info("version event: %s %s %s", event.model_name, event.version, event.status)
        if event.status == "promoted":
            await self.activate(event.version, event=event)
        elif event.status == "rolled_back":
            target = event.previous_version
            if target is None:
                self._report(event.version, "live", False, 0.0, "unknown_version",
                             "a rolled_back event without previous_version: nothing to return to")
            else:
                await self.activate(target)  # a no-op when it is live already
        elif event.status == "candidate":
            if self.section.canary_percent > 0:
                await self.activate(event.version, slot="candidate", event=event)
        elif event.status == "rejected":
            cand = self.slots.candidate
            if cand is not None and cand.version == event.version:
                self.slots.set_candidate(None)

    async def start(self) -> None:
        from stillflow.kafka import make_consumer

        topic = self.settings.topics.model_versions
        self._consumer = make_consumer(self.settings.kafka, topic, group_id=self.group_id,
                                       auto_offset_reset="latest")
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="stillflow-router-versions")

    async def _run(self) -> None:
        consumer = self._consumer
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=100)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker went away: keep serving, retry
                log.warning("versions consumer: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if not self.assigned.is_set() and consumer.assignment():
                for tp in consumer.assignment():  # pin the start position now: later events are seen
                    await consumer.position(tp)
                self.assigned.set()
                await self._reconcile()
            for records in batch.values():
                for rec in records:
                    try:
                        event = decode(rec.value or b"", ModelVersionEvent)
                    except ContractError as exc:
                        self.metrics.load_failures.labels("bad_event").inc()
                        log.error("undecodable version event at %s[%d]@%d: %s", rec.topic, rec.partition,
                                  rec.offset, exc)
                        continue
                    await self.handle(event)
            if batch:
                with contextlib.suppress(Exception):
                    await consumer.commit()

    async def _reconcile(self) -> None:
        """Promotions between the start-up load and the group join are in the registry's state."""
        live = await asyncio.to_thread(self.registry.live)
        current = self.slots.live.version if self.slots.live else None
        if live is not None and live != current:
            await self.activate(live)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
