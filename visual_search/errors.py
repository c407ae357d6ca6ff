"""Error text meant for callers: never a Python object repr (`<_io.BytesIO object at 0x7f...>`).

Library exceptions (PIL, numpy, grpc) embed object reprs in their messages; those leak memory
addresses and say nothing useful to a client. Every place that turns an exception into a gRPC
status detail (gateway, shards, Triton python models, admin) passes the text through here.
"""

from __future__ import annotations

import re

# "<_io.BytesIO object at 0x7f...>", "<function f at 0x...>", "<Foo at 0x...>"
_REPR = re.compile(r"<([A-Za-z_][\w.]*)(?: object)?(?: [^<>]*?)? at 0x[0-9a-fA-F]+>")
_ADDR = re.compile(r"\bat 0x[0-9a-fA-F]{6,}\b")


def public_message(text: str) -> str:
    """`text` with object reprs reduced to their type name and raw addresses removed."""
    text = _REPR.sub(lambda m: f"<{m.group(1)}>", text)
    return _ADDR.sub("at <address>", text)


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, safe to send to a caller."""
    return public_message(f"{type(exc).__name__}: {exc}")
