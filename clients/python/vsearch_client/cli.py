"""Client commands over the public API: `index | update | search | detect | delete`.

The same commands run as `vsearch-client COMMAND` (this package alone) and as `vsearch COMMAND`
(the serving package registers them through `register`).

`vsearch index` takes a directory (every image below it; category = parent folder) or a CSV
manifest with an `image` column (paths relative to the CSV) and optional columns `label`
(category), `split`, `price`, `available` (true/false), `region` and `attr.NAME` (filterable
attributes). A manifest with a `split` column indexes its `catalog` rows unless `--split` says
otherwise (`--split all` for every row), so query photos are not indexed by accident. Item ids
are image paths relative to the source, without extension; each item also stores its path as
attribute `image`, which is what the web page shows as the thumbnail (`vsearch web
--catalog-root SOURCE_DIR`). Progress goes to stderr; finished item ids are appended to a state
file, so an interrupted run resumes where it stopped; failures are summarised by error code at
the end (exit status 1 if any item failed).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vsearch_client import __version__

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _common(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument(
        "--gateway",
        default=env("VSEARCH_GATEWAY", "127.0.0.1:50051"),
        help="gateway gRPC address host:port (default %(default)s; env VSEARCH_GATEWAY)",
    )
    p.add_argument("--token", default=env("VSEARCH_AUTH_TOKEN"), help="bearer token [env VSEARCH_AUTH_TOKEN]")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-cert", help="PEM root certificate for --tls (default: system roots)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-call deadline, seconds (default 60)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="index catalog photos (directory or manifest CSV)")
    p.add_argument("source", help="directory of images, or CSV with image,label[,split] columns")
    p.add_argument(
        "--split",
        help="CSV only: index rows of this split; default: 'catalog' when the CSV has a split column; "
        "'all' = every row",
    )
    p.add_argument("--limit", type=int, default=0, help="index at most this many items (0 = all)")
    p.add_argument("--state", help="resume state file (default: run/index-state-<source hash>.txt)")
    p.add_argument("--restart", action="store_true", help="ignore the state file; index everything again")
    p.add_argument("--region", default="", help="metadata region for items whose row gives none")
    _common(p)
    p.set_defaults(func=cmd_index)

    p = subparsers.add_parser(
        "update", help="metadata-only updates from a CSV (price, stock, ...): no photos, no re-embedding"
    )
    p.add_argument(
        "csv",
        help="CSV with an item_id column and any of category, price, available, region, attr.NAME; "
        "an empty cell keeps the stored value",
    )
    p.add_argument("--batch", type=int, default=1000, help="items per UpdateMetadata call (<= 10000)")
    _common(p)
    p.set_defaults(func=cmd_update)

    p = subparsers.add_parser("search", help="search by photo (default box, --box, --all-objects) or --item")
    p.add_argument("photo", nargs="?", help="query photo")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--box", help="explicit box x1,y1,x2,y2 in pixels")
    g.add_argument("--box-index", type=int, help="a detection's index as the detect command lists them")
    g.add_argument("--all-objects", action="store_true", help="one result list per detected object")
    g.add_argument("--whole-image", action="store_true", help="search the whole photo, no detection")
    p.add_argument("--item", help="more like this indexed item id (instead of a photo)")
    p.add_argument("-k", type=int, default=10, help="results per list (default 10)")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="category=x, region=eu|us, available=true, price=1..20, attr.NAME=v (repeatable)",
    )
    p.add_argument("--region", default="", help="the user's region (boosts items there)")
    p.add_argument(
        "--keep-duplicates", action="store_true", help="do not collapse near-duplicate items (cosine > 0.95)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(p)
    p.set_defaults(func=cmd_search)

    p = subparsers.add_parser("detect", help="list the objects found in a photo (default box marked)")
    p.add_argument("photo")
    p.add_argument("--json", action="store_true", help="print JSON instead of a list")
    _common(p)
    p.set_defaults(func=cmd_detect)

    p = subparsers.add_parser("delete", help="delete indexed items by id")
    p.add_argument("ids", nargs="+")
    _common(p)
    p.set_defaults(func=cmd_delete)


def _client(args: argparse.Namespace) -> Any:
    from vsearch_client import Client

    root = Path(args.ca_cert).read_bytes() if args.ca_cert else None
    return Client(args.gateway, token=args.token, tls=args.tls, root_cert=root, timeout=args.timeout)


# ---- catalog sources --------------------------------------------------------------------------
ALL_SPLITS = "all"
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@dataclass(frozen=True)
class SourceRow:
    """One catalog photo of a directory or manifest, with the metadata the manifest gives it."""

    item_id: str
    path: Path
    category: str
    price: float = 0.0
    available: bool = True
    region: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


def _parse_bool(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE or v == "":
        return True
    if v in _FALSE:
        return False
    raise SystemExit(f"{where}: 'available' must be true or false, got {value!r}")


def _parse_price(value: str, where: str) -> float:
    try:
        return float(value) if value.strip() else 0.0
    except ValueError:
        raise SystemExit(f"{where}: 'price' must be a number, got {value!r}") from None


def iter_rows(source: str | Path, split: str | None = None) -> Iterator[SourceRow]:
    """Catalog rows of a directory or a manifest CSV (see the module docstring for columns).

    `split=None` means: the `catalog` rows when the manifest has a `split` column, else all;
    `split="all"` takes every row.
    """
    src = Path(source)
    if src.is_dir():
        for path in sorted(src.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTS and path.is_file():
                rel = path.relative_to(src)
                category = rel.parent.name if rel.parent.parts else ""
                yield SourceRow(str(rel.with_suffix("")), path, category, attributes={"image": str(rel)})
        return
    if not src.is_file():
        raise SystemExit(f"{src}: no such directory or manifest file")
    with src.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "image" not in columns:
            raise SystemExit(f"{src}: CSV needs an 'image' column (got {columns})")
        if split is None and "split" in columns:
            split = "catalog"
        for line, row in enumerate(reader, 2):
            if split and split != ALL_SPLITS and row.get("split", "") != split:
                continue
            where = f"{src}:{line}"
            rel = Path(row["image"])
            attrs = {k[5:]: v for k, v in row.items() if k and k.startswith("attr.") and v}
            attrs.setdefault("image", str(rel))
            yield SourceRow(
                item_id=str(rel.with_suffix("")),
                path=src.parent / rel,
                category=row.get("label", "") or "",
                price=_parse_price(row.get("price") or "", where),
                available=_parse_bool(row.get("available") or "", where),
                region=row.get("region", "") or "",
                attributes=attrs,
            )


def iter_source(source: str | Path, split: str | None = None) -> Iterator[tuple[str, Path, str]]:
    """(item_id, image path, category) for a directory or a manifest CSV."""
    for r in iter_rows(source, split):
        yield r.item_id, r.path, r.category


def _state_path(args: argparse.Namespace) -> Path:
    if args.state:
        return Path(args.state)
    key = hashlib.sha1(f"{Path(args.source).resolve()}|{args.split}|{args.gateway}".encode()).hexdigest()[:12]
    return Path("run") / f"index-state-{key}.txt"


def cmd_index(args: argparse.Namespace) -> int:
    from vsearch_client import IndexItem, VisualSearchError

    rows = list(iter_rows(args.source, args.split))
    if args.limit:
        rows = rows[: args.limit]
    state = _state_path(args)
    state.parent.mkdir(parents=True, exist_ok=True)
    done = set() if args.restart or not state.exists() else set(state.read_text().split("\n")) - {""}
    todo = [r for r in rows if r.item_id not in done]
    print(
        f"{len(rows)} items, {len(rows) - len(todo)} already indexed (state {state}), {len(todo)} to go",
        file=sys.stderr,
    )
    errors: dict[str, list[str]] = defaultdict(list)
    ok = 0
    t0 = time.monotonic()

    def items() -> Iterator[IndexItem]:
        for r in todo:
            try:
                data = r.path.read_bytes()
            except OSError as e:
                errors["UNREADABLE"].append(f"{r.item_id}: {e.strerror or e}: {r.path}")
                continue
            yield IndexItem(
                r.item_id,
                data,
                category=r.category,
                price=r.price,
                available=r.available,
                region=r.region or args.region,
                attributes=r.attributes,
            )

    with _client(args) as c, state.open("w" if args.restart else "a") as st:
        try:
            for n, r in enumerate(c.index(items(), timeout=None), 1):
                if r.ok:
                    ok += 1
                    st.write(r.item_id + "\n")
                    st.flush()
                else:
                    errors[r.error_code].append(f"{r.item_id}: {r.error}")
                rate = n / max(1e-9, time.monotonic() - t0)
                failed = sum(map(len, errors.values()))
                print(
                    f"\rindexed {ok}/{len(todo)}  failed {failed}  {rate:.1f} items/s",
                    end="",
                    file=sys.stderr,
                )
        except VisualSearchError as e:
            print(f"\nstream stopped: {e} (re-run to resume)", file=sys.stderr)
            return 2
    print(file=sys.stderr)
    for code, msgs in sorted(errors.items()):
        print(f"{len(msgs)} x {code}", file=sys.stderr)
        for m in msgs[:5]:
            print(f"    {m}", file=sys.stderr)
    print(f"done: {ok} indexed, {sum(map(len, errors.values()))} failed in {time.monotonic() - t0:.1f}s")
    return 1 if errors else 0


def read_updates(path: str | Path) -> Iterator[Any]:
    """MetadataUpdate per CSV row: item_id + any of category, price, available, region,
    attr.NAME columns; an empty cell keeps the stored value. Bad cells stop with the row number."""
    from vsearch_client import MetadataUpdate

    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "item_id" not in cols:
            raise SystemExit(f"{path}: CSV needs an 'item_id' column (got {cols})")
        known = {"item_id", "category", "price", "available", "region"}
        unknown = [c for c in cols if c not in known and not (c.startswith("attr.") and len(c) > 5)]
        if unknown:
            raise SystemExit(f"{path}: unknown columns {unknown} (known: {sorted(known)}, attr.NAME)")
        for n, row in enumerate(reader, 2):
            u = MetadataUpdate(item_id=row["item_id"].strip())
            try:
                if row.get("category"):
                    u.category = row["category"]
                if row.get("region"):
                    u.region = row["region"]
                if row.get("price"):
                    u.price = float(row["price"])
                if row.get("available"):
                    v = row["available"].strip().lower()
                    if v not in _TRUE | _FALSE:
                        raise ValueError(f"available={row['available']!r} (want true/false)")
                    u.available = v in _TRUE
            except ValueError as e:
                raise SystemExit(f"{path}:{n}: {e}") from None
            u.attributes = {c[5:]: row[c] for c in cols if c.startswith("attr.") and row.get(c)}
            yield u


def cmd_update(args: argparse.Namespace) -> int:
    from vsearch_client import VisualSearchError

    updates = list(read_updates(args.csv))
    if not 1 <= args.batch <= 10_000:
        raise SystemExit("--batch must be in 1..10000")
    applied = 0
    not_found: list[str] = []
    failed: dict[str, list[str]] = defaultdict(list)
    t0 = time.monotonic()
    with _client(args) as c:
        for a in range(0, len(updates), args.batch):
            chunk = updates[a : a + args.batch]
            try:
                res = c.update_metadata(chunk)
            except VisualSearchError as e:  # the whole batch was refused or no shard answered
                print(f"\nbatch {a}..{a + len(chunk) - 1}: {e}", file=sys.stderr)
                for u in chunk:
                    failed[e.code.name].append(u.item_id)
                continue
            applied += len(res.applied)
            not_found += res.not_found
            for item in res.failed:
                failed[item.error_code].append(f"{item.item_id}: {item.error}")
            done = a + len(chunk)
            rate = done / max(1e-9, time.monotonic() - t0)
            print(
                f"\rupdated {applied}/{len(updates)}  not found {len(not_found)}  "
                f"failed {sum(map(len, failed.values()))}  {rate:.0f} items/s",
                end="", file=sys.stderr,
            )
    print(file=sys.stderr)
    if not_found:
        print(f"{len(not_found)} not indexed: {', '.join(not_found[:10])}", file=sys.stderr)
    for code, msgs in sorted(failed.items()):
        print(f"{len(msgs)} x {code} (not applied; safe to re-run)", file=sys.stderr)
        for m in msgs[:5]:
            print(f"    {m}", file=sys.stderr)
    n_failed = sum(map(len, failed.values()))
    print(f"done: {applied} updated, {len(not_found)} not found, {n_failed} failed "
          f"in {time.monotonic() - t0:.1f}s")
    return 1 if failed else 0


# ---- queries ----------------------------------------------------------------------------------
RESULT_LEGEND = (
    "score = cosine similarity of the best-matching entry of the item (1 = identical); "
    "rank = score + business boosts (availability, region), the order of the list; "
    "close = score at or above the calibrated close-match threshold (or an exact copy)"
)


def _query_label(rl: Any) -> str:
    """What was searched. Detector classes are COCO's, so a carton may say 'person': name them as such."""
    qb = str(rl.query_box) if rl.query_box else "whole image"
    how = f" [{rl.query_strategy}]" if getattr(rl, "query_strategy", "") else ""
    if rl.detection_index >= 0:
        obj = f"detected object #{rl.detection_index}, detector class '{rl.class_name}'"
        return f"query box {qb} ({obj}){how}"
    return f"query box {qb}{how}"


def format_result_table(res: Any) -> str:
    """Ranked results as a table; item ids are printed whole so they can be copied into --item/delete."""
    lines = []
    if res.partial:
        lines.append(f"PARTIAL results: shards {res.missing_shards} did not answer")
    for rl in res.lists:
        lines.append(_query_label(rl))
        if not rl.hits:
            lines.append("  no matches (empty index, or nothing passed the filters)")
            continue
        if rl.no_close_match:
            lines.append(
                f"  NO CLOSE MATCH: no item scores >= {rl.close_match_threshold:.3f} (calibrated); "
                "the nearest items follow - similar, maybe not the same thing"
            )
        width = max(4, *(len(h.item_id) for h in rl.hits))
        lines.append(
            f"  {'#':>2} {'item':<{width}} {'score':>6} {'rank':>6} {'category':<24} "
            f"{'matched box':<18} flags"
        )
        for i, h in enumerate(rl.hits, 1):
            flags = ("exact-copy " if h.exact_match else "close " if h.close_match else "") + (
                f"+{len(h.duplicates)} near-duplicates" if h.duplicates else ""
            )
            mb = str(h.matched_box) if h.matched_box else "whole"
            lines.append(
                f"  {i:>2} {h.item_id:<{width}} {h.score:6.3f} {h.rank_score:6.3f} "
                f"{h.category[:24]:<24} {mb:<18} {flags}"
            )
    if any(rl.hits for rl in res.lists):
        lines.append(RESULT_LEGEND)
    t = res.timings_ms
    lines.append(
        f"model {res.model_version}; triton {t['triton']:.1f} ms, fan-out {t['fanout']:.1f} ms, "
        f"re-rank {t['rerank']:.1f} ms, total {t['total']:.1f} ms"
    )
    return "\n".join(lines)


def _read_photo(path: str) -> bytes:
    """The photo's bytes, or a one-line error instead of a traceback."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SystemExit(f"error: cannot read photo {path}: {e.strerror or e}") from None


def cmd_search(args: argparse.Namespace) -> int:
    from vsearch_client import VisualSearchError
    from vsearch_client.v1 import search_pb2

    if bool(args.photo) == bool(args.item):
        raise SystemExit("give a PHOTO or --item ID")
    opts = search_pb2.SearchOptions(user_region=args.region, keep_duplicates=args.keep_duplicates)
    q: dict[str, Any] = {"k": args.k, "filters": args.filter, "options": opts}
    if args.item:
        q["item_id"] = args.item
    else:
        q.update(
            image=_read_photo(args.photo),
            all_objects=args.all_objects,
            whole_image=args.whole_image,
            box_index=args.box_index,
        )
        if args.box:
            try:
                box = [float(v) for v in args.box.split(",")]
            except ValueError:
                box = []
            if len(box) != 4:
                raise SystemExit(f"error: --box wants x1,y1,x2,y2 in pixels, got {args.box!r}")
            q["box"] = box
    try:
        with _client(args) as c:
            res = c.search(**q)
    except VisualSearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(res), indent=2) if args.json else format_result_table(res))
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from vsearch_client import VisualSearchError

    try:
        with _client(args) as c:
            res = c.detect(_read_photo(args.photo))
    except VisualSearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(res), indent=2))
        return 0
    print(
        f"{res.width}x{res.height}, {len(res.detections)} objects (model {res.model_version}; "
        "class = the detector's COCO class, a hint only: any object can be searched)"
    )
    for d in res.detections:
        mark = "  <- default" if d.is_default else ""
        print(
            f"  #{d.index} {d.class_name:<14} score {d.score:.2f} salience {d.salience:.3f} box {d.box}{mark}"
        )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from vsearch_client import PartialWrite, VisualSearchError

    try:
        with _client(args) as c:
            deleted, not_found = c.delete(args.ids)
    except PartialWrite as e:
        print(f"error: {e}", file=sys.stderr)
        for item in e.result.failed:
            print(f"    not deleted: {item.item_id} ({item.error_code}: {item.error})", file=sys.stderr)
        return 1
    except VisualSearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"deleted {deleted}" + (f"; not found: {', '.join(not_found)}" if not_found else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsearch-client",
        description="Visual search client: index catalog photos and search by photo or item id "
        "over a running gateway (VSEARCH_GATEWAY, default 127.0.0.1:50051).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command (`args.func`); used by this CLI and the serving package's `vsearch`."""
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # `... search ... | head`: the reader left; exit quietly like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
