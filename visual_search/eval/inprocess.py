"""In-process evaluation: reference pipeline + exact search, no services.

Gives the upper bound the served path (Triton + IVF-PQ shards + gateway) is compared against, so
serving/index losses show up as a difference. Each image is detected and embedded once (whole
image + every object); the configurations (whole-image vs object entries on either side) are then
cheap re-combinations. An item scores as its best entry, as on the shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from visual_search import preprocess as P
from visual_search.eval.dataset import LabeledImage
from visual_search.reference import ReferencePipeline


@dataclass
class ImageEmbeddings:
    whole: np.ndarray  # float32 [D]
    objects: np.ndarray  # float32 [N, D], detections in detector order
    salient: int  # index of the most salient object (confidence x area); -1 = none


@dataclass
class EmbeddedSet:
    """Entry vectors of a set of images; entry_item[i] = index of the image entry i belongs to."""

    vectors: np.ndarray  # float32 [E, D]
    entry_item: np.ndarray  # int64 [E]


def embed_images(pipe: ReferencePipeline, images: Sequence[LabeledImage]) -> list[ImageEmbeddings]:
    out = []
    for item in images:
        img = P.decode_image(item.path.read_bytes())
        oe = pipe.detect_and_embed(img)
        d = oe.detections
        sal = P.salience(d.boxes, d.scores, img.shape[1], img.shape[0])
        out.append(
            ImageEmbeddings(
                oe.whole_vector.astype(np.float32),
                oe.object_vectors.astype(np.float32).reshape(len(d), oe.whole_vector.shape[0]),
                int(np.argmax(sal)) if len(d) else -1,
            )
        )
    return out


def catalog_entries(embs: Sequence[ImageEmbeddings], objects: bool) -> EmbeddedSet:
    """Whole image per item, plus (objects=True) one entry per detected object, as the gateway indexes."""
    vecs: list[np.ndarray] = []
    owner: list[int] = []
    for i, e in enumerate(embs):
        v = np.vstack([e.whole[None], e.objects]) if objects else e.whole[None]
        vecs.append(v)
        owner.extend([i] * len(v))
    return EmbeddedSet(np.vstack(vecs), np.asarray(owner, np.int64))


def query_vectors(embs: Sequence[ImageEmbeddings], objects: bool) -> np.ndarray:
    """The most salient object's vector (objects=True; whole image when none) or the whole image."""
    return np.vstack([e.objects[e.salient] if objects and e.salient >= 0 else e.whole for e in embs])


def default_query_vectors(pipe: ReferencePipeline, img: np.ndarray) -> np.ndarray:
    """float32 [2, D] of a default photo query as served: the default box (query-side detector) then
    the whole image; the whole image twice when nothing is detected (max over them = the whole)."""
    v = pipe.embed_default_whole(img)[1].astype(np.float32)
    return np.vstack([v, v[-1:]])[:2]


def fused_item_scores(queries: np.ndarray, catalog: EmbeddedSet, n_items: int) -> np.ndarray:
    """[Q, n_items] for queries [Q, M, D]: each item scored by the better of a query's M vectors (the
    gateway's "max" fusion); [Q, D] is one vector per query."""
    q = queries.reshape(len(queries), -1, queries.shape[-1])
    return np.max([item_scores(q[:, m], catalog, n_items) for m in range(q.shape[1])], axis=0)


def item_scores(queries: np.ndarray, catalog: EmbeddedSet, n_items: int) -> np.ndarray:
    """Exact cosine of each query with each item, an item scoring as its best entry: [Q, n_items]."""
    scores = queries @ catalog.vectors.T  # [Q, E]
    items = np.full((len(queries), n_items), -np.inf, np.float32)
    np.maximum.at(items.T, catalog.entry_item, scores.T)
    return items


def top_items(scores: np.ndarray, k: int) -> np.ndarray:
    """[Q, min(k, N)] item indices, best first (ties keep catalog order)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]


def rank_items(queries: np.ndarray, catalog: EmbeddedSet, n_items: int, k: int) -> np.ndarray:
    """Exact search: item score = max over its entries; returns [Q, min(k, n_items)] item indices."""
    return top_items(item_scores(queries, catalog, n_items), k)
