"""Thin re-export of the typed client library (implementation: visual_search/client.py)."""

from visual_search.client import (
    AsyncClient,
    Client,
    DetectResult,
    FailedPrecondition,
    Hit,
    IndexItem,
    IndexResult,
    InvalidArgument,
    ItemWrite,
    MetadataUpdate,
    NotFound,
    PartialWrite,
    ResultList,
    SearchResult,
    Unauthenticated,
    Unavailable,
    VisualSearchError,
    WriteResult,
)

__all__ = [
    "AsyncClient", "Client", "DetectResult", "FailedPrecondition", "Hit", "IndexItem", "IndexResult",
    "InvalidArgument", "ItemWrite", "MetadataUpdate", "NotFound", "PartialWrite", "ResultList",
    "SearchResult", "Unauthenticated", "Unavailable", "VisualSearchError", "WriteResult",
]
