"""The student runtime: load a registry version (safetensors only, verified) and generate turns with their
token log-probabilities, off the event loop, with bounded concurrency.

The only router module that imports torch and transformers (inside the functions that need them).

Exports
- `load_version(registry, version, ...)` → `StudentModel` (raises `LoadRefused` with a bounded `kind`);
- `StudentModel.generate(messages, tools, max_new_tokens)` → `StudentTurn` (blocking: call it through a runner);
- `StudentRunner` — a thread pool of `max_concurrency` workers and a queue bound: beyond
  `max_concurrency + max_queue` waiting requests `run` raises `StudentBusy` at once (the router then
  asks the teacher) instead of queueing without bound;
- `LoadRefused`, `StudentBusy`.

Confidence is `stillflow.chatformat.turn_confidence`: exp(mean log p(token)) over the greedy turn's
generated tokens, end-of-turn token included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from stillflow.chatformat import IM_END, turn_confidence
from stillflow.registry import IntegrityError, ModelRegistry, RegistryError
from stillflow.slots import SlotCodec, load_format

__all__ = ["LoadRefused", "StudentBusy", "StudentTurn", "StudentModel", "StudentRunner", "load_version"]

T = TypeVar("T")

# Files that could carry pickled code: a version holding one is refused even if the manifest lists it.
_UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class LoadRefused(Exception):
    """A version the router will not serve. `kind`: unknown_version | outside_registry | manifest_mismatch |
    integrity | unsafe_format | load_error."""

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

    @property
    def confidence(self) -> float:
        return turn_confidence(self.logprobs)


class StudentModel:
    """One loaded version. `in_flight` counts requests using it (they finish on it after a swap)."""

    def __init__(self, version: str, model: Any, tokenizer: Any, *, threshold: float | None, path: Path,
                 manifest_sha256: str, device: str = "cpu", codec: SlotCodec | None = None) -> None:
        self.version = version
        self.codec = codec  # value slots (stillflow.slots): requests encoded as the student was trained
        self.model = model
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.path = path
        self.manifest_sha256 = manifest_sha256
        self.device = device
        self.in_flight = 0
        end = tokenizer.convert_tokens_to_ids(IM_END)
        candidates = (end, tokenizer.eos_token_id)
        unk = getattr(tokenizer, "unk_token_id", None)
        self.stop_ids = sorted({i for i in candidates if isinstance(i, int) and i != unk})
        if not self.stop_ids:
            raise LoadRefused("load_error", f"{version}: the tokenizer has no end-of-turn token")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]

    def generate(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 max_new_tokens: int) -> StudentTurn:
        import torch

        started = time.perf_counter()
        table: dict[str, str] = {}
        if self.codec is not None:
            messages, table = self.codec.encode(messages)
        enc = self.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                 tokenize=True, return_dict=True, return_tensors="pt")
        prompt = enc["input_ids"].to(self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                      max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.stop_ids,
                                      pad_token_id=self.pad_id, output_scores=True, return_dict_in_generate=True)
            logprobs = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
        new_ids = out.sequences[0, prompt.shape[1]:].tolist()
        text = self.tokenizer.decode(new_ids, skip_special_tokens=False)
        return StudentTurn(
            text=self.codec.decode(text, table) if self.codec is not None else text,
            prompt_tokens=int(prompt.shape[1]),
            completion_tokens=len(new_ids),
            logprobs=tuple(float(x) for x in logprobs.tolist()[: len(new_ids)]),
            finished=bool(new_ids) and new_ids[-1] in self.stop_ids,
            seconds=time.perf_counter() - started,
        )


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
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        model.to(device)
        model.eval()
        codec = load_format(path)
    except Exception as exc:
        raise LoadRefused("load_error", f"{version}: {type(exc).__name__}: {exc}"[:1000]) from None
    manifest = registry.manifest(version)
    threshold = manifest.get("confidence_threshold")
    student = StudentModel(version, model, tokenizer, threshold=float(threshold) if threshold is not None else None,
                           path=path, manifest_sha256=sha, device=device, codec=codec)
    try:  # warm up (first-call allocations), and prove it generates before it is swapped in
        student.generate([{"role": "user", "content": "hi"}], None, 1)
    except Exception as exc:
        raise LoadRefused("load_error", f"{version}: generation fails: {type(exc).__name__}: {exc}"[:1000]) from None
    return student


class StudentRunner:
    """Runs blocking student work in `max_concurrency` threads; at most `max_queue` more wait."""

    def __init__(self, max_concurrency: int = 1, max_queue: int = 32, threads: int | None = None) -> None:
        self.max_concurrency = max_concurrency
        self.limit = max_concurrency + max_queue
        self.pending = 0
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="stillflow-student")
        if threads is not None:
            import torch

            torch.set_num_threads(threads)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.pending >= self.limit:
            raise StudentBusy(f"{self.pending} student requests running or waiting (limit {self.limit})")
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self.pending -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
