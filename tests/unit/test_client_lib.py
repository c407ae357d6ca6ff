"""Pieces of the light client package (vsearch_client) that need no server."""

from __future__ import annotations

import numpy as np
import pytest
import vsearch_client
from vsearch_client.v1 import search_pb2

from visual_search import client as vc
from visual_search import contract


def test_vector_bytes_without_numpy_match_numpy() -> None:
    """Lists are packed without numpy, rounding like numpy's float32 -> float16 path."""
    v = np.random.default_rng(3).standard_normal(contract.EMBEDDING_DIM).astype(np.float32)
    v /= np.linalg.norm(v)
    want = v.astype("<f2").tobytes()
    assert vsearch_client.vector_f16(v) == want
    assert vsearch_client.vector_f16([float(x) for x in v]) == want
    q = vsearch_client.build_query(vector=[float(x) for x in v], model_version="m", k=3)
    assert q.vector.vector_f16 == want and q.vector.model_version == "m"


def test_serving_package_reexports_the_same_objects() -> None:
    assert vc.Client is vsearch_client.Client and vc.NotFound is vsearch_client.NotFound
    from visual_search.v1 import search_pb2 as serving_pb2

    assert serving_pb2.QueryRequest is search_pb2.QueryRequest


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        vsearch_client.no_such_name  # noqa: B018
