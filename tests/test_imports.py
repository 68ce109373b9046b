"""The agent SDK installs and imports light: no torch, transformers, trl or faust behind it."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "trl", "faust", "fastapi", "prometheus_client")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [m for m in json.loads(out) if m.split(".")[0] in HEAVY]


def test_sdk_import_is_light() -> None:
    assert _loaded_after("import stillflow.sdk") == []


def test_cli_parser_is_light() -> None:
    # `stillflow --help` must stay fast: plugins register their commands without heavy imports.
    assert _loaded_after("from stillflow.cli import build_parser; build_parser()") == []
