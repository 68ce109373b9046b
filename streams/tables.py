"""Table values: pydantic models that faust stores as they are and serialises for the changelog.

A memory-store table keeps the Python object, so reading it back costs nothing; the changelog is
written by `streams.table_codec` (pydantic's JSON serialiser). After a restart the changelog gives
plain dicts back, hence `as_model`. Faust-free, so the pure logic imports light.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["TableModel", "as_model"]

M = TypeVar("M", bound=BaseModel)


class TableModel(BaseModel):
    def __json__(self) -> dict[str, Any]:  # faust's default JSON codec, should a table use it
        return self.model_dump(mode="json")


def as_model(cls: type[M], value: object) -> M | None:
    """`value` as stored: the model itself, a dict from the changelog, its JSON bytes, or None."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, bytes):
        return cls.model_validate_json(value)
    return cls.model_validate(value)
