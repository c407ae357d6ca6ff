"""HTTP bridge for the trial page: static files + a JSON API that calls the gateway over gRPC.

Browsers cannot speak gRPC directly, so this process translates: POST /api/detect and
POST /api/search take a photo (base64) and return JSON; GET /api/image serves catalog photos from
one configured folder (the item's `attributes.image` path), never outside it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import mimetypes
import os
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import grpc
from google.protobuf import json_format

from visual_search import contract as C
from visual_search.v1 import search_pb2, search_pb2_grpc, shard_pb2

log = logging.getLogger("vsearch.web")
STATIC = Path(__file__).parent / "static"
MAX_BODY = C.MAX_IMAGE_BYTES * 4 // 3 + 64 * 1024  # base64 image + JSON fields


class BadRequest(ValueError):
    pass


def _filter_from_json(spec: dict[str, Any]) -> shard_pb2.Filter:
    """{"category": "x", "region": "eu", "available": true, "price_min": 1, "price_max": 9}."""
    f = shard_pb2.Filter()
    for field in ("category", "region"):
        if spec.get(field):
            f.clauses.add(field=field, equals=str(spec[field]))
    if spec.get("available") is not None:
        f.clauses.add(field="available", bool_equals=bool(spec["available"]))
    lo, hi = spec.get("price_min"), spec.get("price_max")
    if lo is not None or hi is not None:
        rng = shard_pb2.Range()
        try:
            if lo is not None:
                rng.min = float(lo)
            if hi is not None:
                rng.max = float(hi)
        except (TypeError, ValueError) as e:
            raise BadRequest(f"price_min/price_max must be numbers: {e}") from e
        f.clauses.add(field="price", range=rng)
    return f


def build_query(body: dict[str, Any]) -> search_pb2.QueryRequest:
    """JSON body of /api/search -> QueryRequest (validated enough to give clear 400s)."""
    try:
        image = base64.b64decode(body.get("image", ""), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"image must be base64: {e}") from e
    try:
        k = int(body.get("k", 24))
    except (TypeError, ValueError) as e:
        raise BadRequest(f"k must be an integer: {e}") from e
    q = search_pb2.QueryRequest(k=k, filter=_filter_from_json(body.get("filters") or {}))
    q.image.image = image
    box = body.get("box")
    if box is not None:
        if not isinstance(box, list) or len(box) != 4:
            raise BadRequest("box must be [x1, y1, x2, y2]")
        q.image.box.CopyFrom(search_pb2.Box(x1=box[0], y1=box[1], x2=box[2], y2=box[3]))
    elif body.get("box_index") is not None:
        q.image.box_index = int(body["box_index"])
    elif body.get("whole_image"):
        q.image.whole_image = True
    if body.get("region"):
        q.options.user_region = str(body["region"])
    return q


class WebApp:
    def __init__(self, gateway: str, catalog_root: str | None, token: str | None, timeout: float) -> None:
        self.channel = grpc.insecure_channel(
            gateway,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self.stub = search_pb2_grpc.VisualSearchStub(self.channel)
        self.catalog_root = Path(catalog_root).resolve() if catalog_root else None
        self.metadata = [("authorization", f"Bearer {token}")] if token else None
        self.timeout = timeout

    def detect(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            image = base64.b64decode(body.get("image", ""), validate=True)
        except (binascii.Error, ValueError) as e:
            raise BadRequest(f"image must be base64: {e}") from e
        resp = self.stub.Detect(
            search_pb2.DetectRequest(image=image), timeout=self.timeout, metadata=self.metadata
        )
        return json_format.MessageToDict(resp, always_print_fields_with_no_presence=True)

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.stub.Search(build_query(body), timeout=self.timeout, metadata=self.metadata)
        return json_format.MessageToDict(resp, always_print_fields_with_no_presence=True)

    def image_path(self, rel: str) -> Path:
        if self.catalog_root is None:
            raise FileNotFoundError("no catalog image folder configured")
        p = (self.catalog_root / rel).resolve()
        if not p.is_relative_to(self.catalog_root) or not p.is_file():
            raise FileNotFoundError(rel)
        return p


def make_handler(app: WebApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vsearch-web"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            log.info("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            url = urlparse(self.path)
            if url.path in ("/", "/index.html"):
                self._send(200, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
            elif url.path == "/healthz":
                self._json(200, {"ok": True})
            elif url.path == "/api/image":
                rel = parse_qs(url.query).get("path", [""])[0]
                try:
                    p = app.image_path(rel)
                except FileNotFoundError:
                    self._json(404, {"error": f"no such catalog image: {rel}"})
                    return
                self._send(200, p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream")
            else:
                self._json(404, {"error": f"not found: {url.path}"})

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                self._json(413 if length > MAX_BODY else 400, {"error": f"body must be 1..{MAX_BODY} bytes"})
                return
            try:
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict):
                    raise BadRequest("body must be a JSON object")
                if self.path == "/api/detect":
                    self._json(200, app.detect(body))
                elif self.path == "/api/search":
                    self._json(200, app.search(body))
                else:
                    self._json(404, {"error": f"not found: {self.path}"})
            except (BadRequest, json.JSONDecodeError) as e:
                self._json(400, {"error": str(e)})
            except grpc.RpcError as e:
                code = e.code()  # type: ignore[attr-defined]
                status = {
                    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
                    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
                    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
                    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.CONFLICT,
                    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
                }.get(code, HTTPStatus.BAD_GATEWAY)
                self._json(int(status), {"error": e.details(), "code": code.name})  # type: ignore[attr-defined]

    return Handler


def serve(gateway: str, host: str, port: int, catalog_root: str | None, timeout: float = 30.0) -> None:
    app = WebApp(gateway, catalog_root, os.environ.get("VSEARCH_AUTH_TOKEN"), timeout)
    httpd = ThreadingHTTPServer((host, port), make_handler(app))
    log.info("web page on http://%s:%d (gateway %s)", host, port, gateway)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


def _add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--gateway", default="127.0.0.1:50051", help="gateway gRPC address")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--catalog-root", default=None, help="folder of catalog `attributes.image` paths")


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(args.gateway, args.host, args.port, args.catalog_root)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """`vsearch web`: the trial page (token from VSEARCH_AUTH_TOKEN)."""
    p = subparsers.add_parser("web", help="serve the trial web page (upload, boxes, result grid)")
    _add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vsearch web", description="Serve the trial web page.")
    _add_arguments(ap)
    return _run(ap.parse_args(argv))
