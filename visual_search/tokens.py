"""Bearer-token checks shared by the gateway (public and admin ports) and the shards.

`authorization: Bearer <token>`: the scheme is matched case-insensitively (RFC 6750 / RFC 7235),
the token with a constant-time compare. Messages never echo what the caller sent.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any


def bearer_error(metadata: Iterable[tuple[str, Any]] | None, token: str) -> str | None:
    """Why this call's metadata does not carry `token` (a readable message), or None when it does."""
    got = dict(metadata or ()).get("authorization")
    if got is None:
        return "missing authorization metadata (want 'authorization: Bearer <token>')"
    text = got.decode("utf-8", "replace") if isinstance(got, bytes) else str(got)
    scheme, _, value = text.strip().partition(" ")
    if scheme.lower() != "bearer":
        return "authorization must use the Bearer scheme ('authorization: Bearer <token>')"
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        return "invalid token"
    return None


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token` (empty without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()
