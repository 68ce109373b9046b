"""The `stillflow-table` faust codec for table changelogs (`TABLE_CODEC`; registered on import).

Pydantic's own JSON serialiser for models and lists of models, stdlib JSON for the rest. Faust's
default JSON codec would call `__json__` (`model_dump`) and then encode the dict in Python: about
four times slower on an assembly state, and the changelog write is once per touched trace per batch.
Bytes are taken as JSON already encoded: the assembler's states come from its batch work encoded
(`streams.batch_work.encode_state`), and the table stores those bytes. Reading gives plain JSON values
back (`streams.tables.as_model` turns them, and such bytes, into models).
"""

from __future__ import annotations

import json
from typing import Any

from faust.serializers import codecs
from pydantic import BaseModel

__all__ = ["TABLE_CODEC"]

TABLE_CODEC = "stillflow-table"


class _TableCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, BaseModel):
            return obj.model_dump_json().encode()
        if isinstance(obj, list) and obj and all(isinstance(x, BaseModel) for x in obj):
            return ("[" + ",".join(x.model_dump_json() for x in obj) + "]").encode()
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def _loads(self, s: bytes) -> Any:
        return json.loads(s)


codecs.register(TABLE_CODEC, _TableCodec())
