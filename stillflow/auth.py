"""API keys: the one check every stillflow HTTP service makes (router, OTLP receiver).

Exports `bearer_key_ok(authorization, keys)`: True when `keys` is empty (auth off) or the `Authorization`
header is `Bearer <one of keys>`. Every key is compared, each in constant time, with no early exit, so the
answer's timing says nothing about which key or how much of it matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

__all__ = ["bearer_key_ok"]


def bearer_key_ok(authorization: str | None, keys: Sequence[bytes]) -> bool:
    if not keys:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return ok
