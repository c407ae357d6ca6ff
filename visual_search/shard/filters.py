"""Metadata filters: a conjunction of clauses compiled once per request, evaluated as a
vectorised boolean mask over all slots of the store.

Fields: category, region (string: equals / in_set), price (numeric: range), available (bool:
bool_equals), attr.<name> (string: equals / in_set). Anything else is a ValidationError with a
message saying what the field supports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from visual_search import contract
from visual_search.shard.store import Store, Vocab
from visual_search.shard.validation import ValidationError
from visual_search.v1 import shard_pb2

MAX_CLAUSES = 32
MAX_SET_VALUES = 1024
_STRING_FIELDS = ("category", "region")


@dataclass(frozen=True)
class CompiledFilter:
    clauses: tuple[Callable[[Store, int], np.ndarray], ...]
    text: str

    def mask(self, store: Store) -> np.ndarray:
        """Boolean mask over slots [0, n_slots): live and matching every clause."""
        n = store.n_slots
        m = store.slot_entry[:n] >= 0
        for clause in self.clauses:
            m &= clause(store, n)
        return m


def _string_clause(
    column: Callable[[Store], np.ndarray | None], vocab: Callable[[Store], Vocab], values: list[str]
) -> Callable[[Store, int], np.ndarray]:
    def run(store: Store, n: int) -> np.ndarray:
        col = column(store)
        if col is None:
            return np.zeros(n, dtype=bool)
        codes = [c for c in (vocab(store).lookup(v) for v in values) if c >= 0]
        if not codes:
            return np.zeros(n, dtype=bool)
        if len(codes) == 1:
            return col[:n] == codes[0]
        return np.isin(col[:n], np.asarray(codes, dtype=np.int32))

    return run


def _attr_column(store: Store, name: str) -> np.ndarray | None:
    return store.col_attrs.get(name)


def _price_range(store: Store, n: int, lo: float, hi: float) -> np.ndarray:
    price = store.col_price[:n]
    return (price >= lo) & (price <= hi)


def _available(store: Store, n: int, want: bool) -> np.ndarray:
    return store.col_available[:n] == want


def _string_values(clause: shard_pb2.FilterClause, field: str) -> list[str]:
    op = clause.WhichOneof("op")
    if op == "equals":
        return [clause.equals]
    if op == "in_set":
        values = list(clause.in_set.values)
        if not values:
            raise ValidationError(f"filter on {field!r}: in_set needs at least one value")
        if len(values) > MAX_SET_VALUES:
            raise ValidationError(f"filter on {field!r}: in_set has more than {MAX_SET_VALUES} values")
        return values
    raise ValidationError(f"filter on string field {field!r} supports equals / in_set, not {op}")


def check_filter_size(flt: shard_pb2.Filter) -> None:
    """The whole filter (names and values, serialized) within contract.MAX_FILTER_BYTES."""
    size = flt.ByteSize()
    if size > contract.MAX_FILTER_BYTES:
        raise ValidationError(
            f"filter is {size} bytes (field names and values); the limit is {contract.MAX_FILTER_BYTES}"
        )


def compile_filter(flt: shard_pb2.Filter) -> CompiledFilter | None:
    """None when there are no clauses (match everything)."""
    if not flt.clauses:
        return None
    check_filter_size(flt)
    if len(flt.clauses) > MAX_CLAUSES:
        raise ValidationError(f"filter has {len(flt.clauses)} clauses, at most {MAX_CLAUSES}")
    compiled: list[Callable[[Store, int], np.ndarray]] = []
    for i, clause in enumerate(flt.clauses):
        field = clause.field
        op = clause.WhichOneof("op")
        if op is None:
            raise ValidationError(f"filter clause {i} on {field!r} has no operator")
        if field in _STRING_FIELDS:
            values = _string_values(clause, field)
            if field == "category":
                compiled.append(_string_clause(lambda s: s.col_category, lambda s: s.category, values))
            else:
                compiled.append(_string_clause(lambda s: s.col_region, lambda s: s.region, values))
        elif field.startswith("attr.") and len(field) > 5:
            name = field[5:]
            values = _string_values(clause, field)
            compiled.append(_string_clause(partial(_attr_column, name=name), lambda s: s.attr_vocab, values))
        elif field == "price":
            if op != "range":
                raise ValidationError(f"filter on 'price' supports range only, not {op}")
            lo = clause.range.min if clause.range.HasField("min") else -math.inf
            hi = clause.range.max if clause.range.HasField("max") else math.inf
            if math.isnan(lo) or math.isnan(hi):
                raise ValidationError("filter on 'price': range bounds must not be NaN")
            if lo > hi:
                raise ValidationError(f"filter on 'price': empty range min={lo} > max={hi}")
            compiled.append(partial(_price_range, lo=lo, hi=hi))
        elif field == "available":
            if op != "bool_equals":
                raise ValidationError(f"filter on 'available' supports bool_equals only, not {op}")
            want = clause.bool_equals
            compiled.append(partial(_available, want=want))
        else:
            raise ValidationError(
                f"filter clause {i}: unknown field {field!r} "
                "(known: category, region, price, available, attr.<name>)"
            )
    return CompiledFilter(tuple(compiled), str(flt).replace("\n", " "))
