"""The student runtime: load a registry version (safetensors only, verified) and generate turns with their
token log-probabilities, off the event loop, with bounded concurrency.

The only router module that imports torch and transformers (inside the functions that need them).

Exports
- `load_version(registry, version, ...)` → `StudentModel` (raises `LoadRefused` with a bounded `kind`); a
  LoRA version (`stillflow_base_ref.json`) runs on its base, loaded once per process (`SharedBase`) after
  its sha256 is checked, with one adapter per version swapped in per generation;
- `StudentModel.generate_batch(requests)` / `.generate(messages, tools, max_new_tokens)` → `StudentTurn`s
  (blocking: the router calls them through the batcher), one shared generation function for both
  (`stillflow.generation`: the trainer's evaluator generates with it too);
- `StudentBatcher` — requests that wait for the student go together: a batch forms while one runs, bounded by
  `batch_size` and a wait; beyond `workers * batch_size + max_queue` requests `generate` raises `StudentBusy`
  at once (the router then asks the teacher) instead of queueing without bound;
- `LoadRefused`, `StudentBusy`.

Confidence is `stillflow.chatformat.turn_confidence`: exp(mean log p(token)) over the greedy turn's
generated tokens, end-of-turn token included.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillflow.bases import BaseError, read_ref, resolve_base
from stillflow.chatformat import CHATML, TurnFormat, load_turn_format, turn_confidence
from stillflow.registry import IntegrityError, ModelRegistry, RegistryError
from stillflow.slots import SlotCodec, load_format

__all__ = ["LoadRefused", "StudentBusy", "StudentTurn", "StudentModel", "StudentBatcher", "load_version"]

# Files that could carry pickled code: a version holding one is refused even if the manifest lists it.
_UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class LoadRefused(Exception):
    """A version the router will not serve. `kind`: unknown_version | outside_registry | manifest_mismatch |
    integrity | unsafe_format | base_missing | base_mismatch | base_unreadable | load_error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StudentBusy(Exception):
    """Every student worker is busy and the queue is full."""


@dataclass(frozen=True)
class StudentTurn:
    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[float, ...]
    finished: bool  # stopped at the end-of-turn token, not at the token cap
    seconds: float
    batch_size: int = 1  # generated together with this many requests (itself included)

    @property
    def confidence(self) -> float:
        return turn_confidence(self.logprobs)


class StudentModel:
    """One loaded version. `in_flight` counts requests using it (they finish on it after a swap)."""

    def __init__(self, version: str, model: Any, tokenizer: Any, *, threshold: float | None, path: Path,
                 manifest_sha256: str, device: str = "cpu", codec: SlotCodec | None = None,
                 fmt: TurnFormat = CHATML, base: str | None = None) -> None:
        self.version = version
        self.fmt = fmt  # the version's turn format (stillflow_turns.json): its end of turn, its tool calls
        self.base = base  # LoRA versions: the name of the base they run on
        self.shared: SharedBase | None = None  # LoRA versions: the loaded base their adapter is one of
        self.adapter = f"{version}_{manifest_sha256[:12]}"  # its adapter's name there (unique per version)
        self.codec = codec  # value slots (stillflow.slots): requests encoded as the student was trained
        self.model = model
        self.tokenizer = tokenizer
        self.threshold = threshold
        # the workloads it was promoted for, each with its threshold (None: a version gated before workloads
        # existed serves every workload at `threshold`)
        self.workloads: dict[str, float] | None = None
        self.path = path
        self.manifest_sha256 = manifest_sha256
        self.device = device
        self.in_flight = 0
        self.stop_ids = fmt.stop_ids(tokenizer)
        if not self.stop_ids:
            raise LoadRefused("load_error", f"{version}: the tokenizer has no end-of-turn token {fmt.end_of_turn!r}")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]

    def generate(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 max_new_tokens: int) -> StudentTurn:
        return self.generate_batch([(messages, tools, max_new_tokens)])[0]

    def generate_batch(self, requests: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None, int]]
                       ) -> list[StudentTurn]:
        """One turn per (messages, tools, max_new_tokens), generated together (`stillflow.generation`: greedy,
        left-padded, one KV cache). Blocking: call it through a `StudentBatcher`."""
        with self._adapter():
            return self._generate_batch(requests)

    @contextlib.contextmanager
    def _adapter(self) -> Iterator[None]:
        """A LoRA version generates with its own adapter active, one generation at a time on the shared
        base (a request in flight finishes on its version's adapter even after a swap)."""
        if self.shared is None:
            yield
            return
        with self.shared.lock:
            self.shared.model.set_adapter(self.adapter)
            yield

    def _generate_batch(self, requests: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None, int]]
                        ) -> list[StudentTurn]:
        from stillflow.generation import decode_turn, encode_prompt, generate_greedy

        started = time.perf_counter()
        prompts = [encode_prompt(self.tokenizer, self.codec, messages, tools) for messages, tools, _cap in requests]
        out = generate_greedy(self.model, [ids for ids, _ in prompts], pad_id=self.pad_id, stop_ids=self.stop_ids,
                              max_new_tokens=[cap for _m, _t, cap in requests], device=self.device)
        seconds = time.perf_counter() - started  # each waited for the whole batch
        return [StudentTurn(text=decode_turn(self.tokenizer, self.codec, g.ids, table), prompt_tokens=len(ids),
                            completion_tokens=len(g.ids), logprobs=g.logprobs, finished=g.finished, seconds=seconds,
                            batch_size=len(requests))
                for (ids, table), g in zip(prompts, out, strict=True)]


class SharedBase:
    """One pretrained base in memory (verified by its sha256), with the LoRA adapters of the versions
    loaded on it by name; `lock` serialises generation and adapter loading on it."""

    def __init__(self, digest: str, name: str, model: Any) -> None:
        self.digest = digest
        self.name = name
        self.model = model  # a peft PeftModel once the first adapter is loaded
        self.lock = threading.Lock()
        self.adapters: set[str] = set()


_BASES: dict[str, SharedBase] = {}
_BASES_LOCK = threading.Lock()


def _load_adapter(ref: dict[str, Any], path: Path, name: str, device: str) -> tuple[Any, SharedBase]:
    """The base `ref` names (loaded once per process, verified on every load) with the adapter in `path`
    under `name`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = resolve_base(ref)  # BaseError: missing, or its files are not the sha256 the version was trained on
    with _BASES_LOCK:
        shared = _BASES.get(ref["sha256"])
        if shared is None:
            base = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True, use_safetensors=True)
            base.to(device)
            model = PeftModel.from_pretrained(base, str(path), adapter_name=name, is_trainable=False)
            model.eval()
            shared = SharedBase(ref["sha256"], str(ref["name"]), model)
            _BASES[ref["sha256"]] = shared
        else:
            with shared.lock:
                if name not in shared.adapters:
                    shared.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
                    shared.model.to(device)
        shared.adapters.add(name)
    return shared.model, shared


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def load_version(registry: ModelRegistry, version: str, *, device: str = "cpu", event_path: str | None = None,
                 expect_manifest_sha256: str | None = None) -> StudentModel:
    """Verify a registry version and load it. `event_path` / `expect_manifest_sha256`: what a
    `ModelVersionEvent` claims; a path outside the registry root or a different manifest is refused."""
    if event_path is not None and not _inside(Path(event_path), registry.root):
        raise LoadRefused("outside_registry", f"{version}: {event_path} is outside the registry root "
                                              f"{registry.root.resolve()}; only registry versions are loaded")
    try:
        path = registry.path(version)
        if not _inside(path, registry.root):  # e.g. a version directory that is a symlink to elsewhere
            raise LoadRefused("outside_registry", f"{version}: {path} resolves outside the registry root")
        sha = registry.manifest_sha256(version)
        if expect_manifest_sha256 is not None and sha != expect_manifest_sha256:
            raise LoadRefused("manifest_mismatch", f"{version}: the manifest's sha256 {sha[:12]}… is not the "
                                                   f"announced {expect_manifest_sha256[:12]}…")
        files = registry.verify(version)
    except IntegrityError as exc:
        raise LoadRefused("integrity", str(exc)) from None
    except RegistryError as exc:
        raise LoadRefused("unknown_version", str(exc)) from None
    unsafe = sorted(f for f in files if f.endswith(_UNSAFE_SUFFIXES))
    if unsafe or not any(f.endswith(".safetensors") for f in files):
        raise LoadRefused("unsafe_format", f"{version}: weights must be safetensors only "
                                           f"(found {', '.join(unsafe) or 'no .safetensors file'})")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a router's log is no place for progress bars
    shared: SharedBase | None = None
    try:
        ref = read_ref(path)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if ref is not None:
            model, shared = _load_adapter(ref, path, f"{version}_{sha[:12]}", device)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
            model.to(device)
            model.eval()
        codec = load_format(path)
        fmt = load_turn_format(path)
    except BaseError as exc:
        raise LoadRefused(exc.kind, f"{version}: {exc}"[:1000]) from None
    except Exception as exc:
        raise LoadRefused("load_error", f"{version}: {type(exc).__name__}: {exc}"[:1000]) from None
    manifest = registry.manifest(version)
    threshold = manifest.get("confidence_threshold")
    student = StudentModel(version, model, tokenizer, threshold=float(threshold) if threshold is not None else None,
                           path=path, manifest_sha256=sha, device=device, codec=codec, fmt=fmt,
                           base=str(ref["name"]) if ref else None)
    student.shared = shared
    student.workloads = registry.served(version)  # the gate's choice, or an operator's at promotion
    try:  # warm up (first-call allocations), and prove it generates before it is swapped in
        student.generate([{"role": "user", "content": "hi"}], None, 1)
    except Exception as exc:
        raise LoadRefused("load_error", f"{version}: generation fails: {type(exc).__name__}: {exc}"[:1000]) from None
    return student


def default_threads(device: str) -> int | None:
    """The torch threads of a router on `device` when none are set: half the cores on CPU (the rest for the
    event loop that serves the requests), torch's own choice elsewhere."""
    import os

    return max(1, (os.cpu_count() or 2) // 2) if device == "cpu" else None


def set_threads(threads: int | None, device: str) -> int | None:
    """Set torch's threads for this process (the router's own process only: it is process-wide, so a router
    built inside another program, e.g. a test session, leaves them alone). Returns what was set."""
    n = threads if threads is not None else default_threads(device)
    if n is not None:
        import torch

        torch.set_num_threads(n)
    return n


@dataclass
class _Request:
    model: StudentModel
    args: tuple[list[dict[str, Any]], list[dict[str, Any]] | None, int]
    future: asyncio.Future[StudentTurn]


class StudentBatcher:
    """The student's requests, generated in batches: while a batch runs, the requests that arrive wait and go
    together in the next one (step-wise batching: one batch per worker at a time, `batch_size` at most, of
    one version; a batch waits up to `max_wait_s` for as many requests as the last one held). Beyond
    `workers * batch_size + max_queue` requests running or waiting, `generate` raises `StudentBusy` at once
    (the router then asks the teacher) instead of queueing without bound."""

    def __init__(self, *, batch_size: int = 16, max_wait_s: float = 0.005, max_queue: int = 32,
                 workers: int = 1) -> None:
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.workers = workers
        self.limit = workers * batch_size + max_queue
        self.pending = 0  # running or waiting
        self.batches = 0
        self._queue: collections.deque[_Request] = collections.deque()
        self._running = 0
        self._last_size = 1
        self._arrived = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stillflow-student")
        self.on_batch: Callable[[int, float], None] | None = None  # (size, seconds): metrics

    async def generate(self, model: StudentModel, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                       max_new_tokens: int) -> StudentTurn:
        if self.pending >= self.limit:
            raise StudentBusy(f"{self.pending} student requests running or waiting (limit {self.limit})")
        future: asyncio.Future[StudentTurn] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(model, (messages, tools, max_new_tokens), future))
        self._arrived.set()
        self.pending += 1
        try:
            self._start()
            return await future
        finally:
            self.pending -= 1

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running < self.workers and self._queue:
            self._running += 1
            task = loop.create_task(self._run_batch())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Request]:
        """The oldest request's version, and the next requests for the same one, up to `batch_size`."""
        batch: list[_Request] = []
        others: list[_Request] = []
        first: StudentModel | None = None
        while self._queue and len(batch) < self.batch_size:
            r = self._queue.popleft()
            if r.future.done():  # its client went away
                continue
            first = first or r.model
            (batch if r.model is first else others).append(r)
        self._queue.extendleft(reversed(others))
        return batch

    async def _run_batch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # wait (at most max_wait_s) until as many requests wait as the last batch held: under steady load the
            # clients of a batch come back together, and a batch started on the first of them would leave the
            # rest for the next; a lone client (last batch 1) never waits
            target = min(self.batch_size, self._last_size)
            deadline = loop.time() + self.max_wait_s
            while len(self._queue) < target and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            batch = self._take()
            if not batch:
                return
            t0 = time.perf_counter()
            try:
                turns = await loop.run_in_executor(self._pool, batch[0].model.generate_batch, [r.args for r in batch])
            except Exception as exc:  # each request of the batch fails alike (the router falls back per request)
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                return
            self.batches += 1
            self._last_size = len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)
            for r, turn in zip(batch, turns, strict=True):
                if not r.future.done():
                    r.future.set_result(turn)
        finally:
            self._running -= 1
            if self._queue:
                self._start()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
