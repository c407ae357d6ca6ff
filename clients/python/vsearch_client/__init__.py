"""vsearch-client: the Python client of the visual-search gateway (public gRPC API only).

    from vsearch_client import Client
    with Client("127.0.0.1:50051", token=None) as c:
        res = c.search(image=open("photo.jpg", "rb").read(), k=10, filters=["category=milk"])

Names load on first use (PEP 562), so `import vsearch_client` and `vsearch-client --help` do not
pay for importing grpc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "Box", "Client", "DeadlineExceeded", "DetectResult", "Detection",
    "FailedPrecondition", "Hit", "ImageLike", "IndexItem", "IndexResult", "InvalidArgument",
    "ItemWrite", "MetadataUpdate", "NotFound", "PartialWrite", "ResourceExhausted", "ResultList",
    "SearchResult", "Unauthenticated", "Unavailable", "VisualSearchError", "WriteResult",
    "__version__", "build_query", "parse_filters", "read_image", "vector_f16",
]

if TYPE_CHECKING:
    from vsearch_client.client import (
        AsyncClient,
        Box,
        Client,
        Detection,
        DetectResult,
        Hit,
        ImageLike,
        IndexItem,
        IndexResult,
        ItemWrite,
        MetadataUpdate,
        ResultList,
        SearchResult,
        WriteResult,
        build_query,
        parse_filters,
        read_image,
        vector_f16,
    )
    from vsearch_client.errors import (
        DeadlineExceeded,
        FailedPrecondition,
        InvalidArgument,
        NotFound,
        PartialWrite,
        ResourceExhausted,
        Unauthenticated,
        Unavailable,
        VisualSearchError,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        errors = importlib.import_module("vsearch_client.errors")
        return getattr(errors, name, None) or getattr(importlib.import_module("vsearch_client.client"), name)
    raise AttributeError(f"module 'vsearch_client' has no attribute {name!r}")
