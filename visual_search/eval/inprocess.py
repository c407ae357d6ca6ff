"""In-process evaluation: reference pipeline + exact search, no services.

Gives the upper bound the served path (Triton + IVF-PQ shards + gateway) is compared against, so
serving/index losses show up as a difference. Catalog items may be indexed as the whole image only
or as whole image + every detected object; an item scores as its best entry, as on the shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from visual_search import preprocess as P
from visual_search.eval.dataset import LabeledImage
from visual_search.reference import ReferencePipeline


@dataclass
class EmbeddedSet:
    """Entry vectors of a set of images; entry_item[i] = index of the image entry i belongs to."""

    vectors: np.ndarray  # float32 [E, D]
    entry_item: np.ndarray  # int64 [E]


def most_salient_box(pipe: ReferencePipeline, img: np.ndarray) -> np.ndarray | None:
    d = pipe.detect(img)
    if len(d) == 0:
        return None
    return d.boxes[int(np.argmax(P.salience(d.boxes, d.scores, img.shape[1], img.shape[0])))]


def embed_catalog(pipe: ReferencePipeline, images: Sequence[LabeledImage], objects: bool) -> EmbeddedSet:
    vecs: list[np.ndarray] = []
    owner: list[int] = []
    for i, item in enumerate(images):
        img = P.decode_image(item.path.read_bytes())
        if objects:
            oe = pipe.detect_and_embed(img)
            v = np.vstack([oe.whole_vector[None], oe.object_vectors])
        else:
            v = pipe.embed(img)[None]
        vecs.append(v.astype(np.float32))
        owner.extend([i] * len(v))
    return EmbeddedSet(np.vstack(vecs), np.asarray(owner, np.int64))


def embed_queries(pipe: ReferencePipeline, images: Sequence[LabeledImage], objects: bool) -> np.ndarray:
    """One vector per query: the most salient object (objects=True, whole image if none) or whole."""
    out = []
    for item in images:
        img = P.decode_image(item.path.read_bytes())
        box = most_salient_box(pipe, img) if objects else None
        out.append(pipe.embed(img, box))
    return np.vstack(out).astype(np.float32)


def rank_items(queries: np.ndarray, catalog: EmbeddedSet, n_items: int, k: int) -> np.ndarray:
    """Exact search: item score = max over its entries; returns [Q, min(k, n_items)] item indices."""
    scores = queries @ catalog.vectors.T  # [Q, E]
    item_scores = np.full((len(queries), n_items), -np.inf, np.float32)
    np.maximum.at(item_scores.T, catalog.entry_item, scores.T)
    k = min(k, n_items)
    return np.argsort(-item_scores, axis=1, kind="stable")[:, :k]
