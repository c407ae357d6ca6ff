"""HTTP bridge for the trial page: static files + a JSON API that calls the gateway over gRPC.

Browsers cannot speak gRPC directly, so this process translates: POST /api/detect and
POST /api/search take a photo (base64) and return JSON; GET /api/image serves catalog photos from
one configured folder (the item's `attributes.image` path), never outside it.

Hostile callers (issue 12 item 8): every malformed request gets a 4xx JSON answer with a message;
requests whose Host is not this server, and cross-site requests (foreign Origin, or
Sec-Fetch-Site cross-site), get 403 before anything is sent to the gateway with the server's
token; only image files (by extension) inside the catalog folder are served.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import grpc
from google.protobuf import json_format

from visual_search import contract as C
from visual_search.v1 import search_pb2_grpc
from visual_search.web.request import BadRequest, build_query, detect_request

log = logging.getLogger("vsearch.web")
STATIC = Path(__file__).parent / "static"
MAX_BODY = C.MAX_IMAGE_BYTES * 4 // 3 + 64 * 1024  # base64 image + JSON fields
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp"}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
BODY_READ_TIMEOUT_S = 10.0  # a body shorter than its Content-Length: 400 after this long


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _split_host(host: str) -> tuple[str, str]:
    """'name:port' / '[v6]:port' / 'name' -> (name, port or '')."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    name, sep, port = host.rpartition(":")
    return (name, port) if sep and ":" not in name else (host, "")


class WebApp:
    def __init__(
        self, gateway: str, catalog_root: str | None, token: str | None, timeout: float,
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
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
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts)  # extra host names (not loopback)

    def detect(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.stub.Detect(detect_request(body), timeout=self.timeout, metadata=self.metadata)
        return json_format.MessageToDict(resp, always_print_fields_with_no_presence=True)

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.stub.Search(build_query(body), timeout=self.timeout, metadata=self.metadata)
        return json_format.MessageToDict(resp, always_print_fields_with_no_presence=True)

    def image_path(self, rel: str) -> Path:
        """A catalog photo: an image extension, inside the catalog folder after resolving links."""
        if self.catalog_root is None:
            raise FileNotFoundError("no catalog image folder configured")
        if not rel or "\x00" in rel or len(rel) > 1024:
            raise BadRequest("path must be 1..1024 characters without NUL")
        if Path(rel).suffix.lower() not in IMAGE_TYPES:
            raise BadRequest(f"only image files are served ({', '.join(sorted(IMAGE_TYPES))})")
        try:
            p = (self.catalog_root / rel).resolve()
        except (OSError, RuntimeError, ValueError):
            raise FileNotFoundError(rel) from None
        if not p.is_relative_to(self.catalog_root) or p.suffix.lower() not in IMAGE_TYPES or not p.is_file():
            raise FileNotFoundError(rel)
        return p

    def host_allowed(self, host: str | None, server_host: str, server_port: int) -> bool:
        """Host names this server: loopback or its bind address on its port, or --allowed-host."""
        if not host:
            return False
        name, port = _split_host(host)
        if name in self.allowed_hosts or f"{name}:{port}" in self.allowed_hosts:
            return True
        return (name in LOOPBACK_NAMES or name == server_host.lower()) and (port or "80") == str(server_port)

    def origin_allowed(self, origin: str, server_host: str, server_port: int) -> bool:
        """Origin (sent by browsers) is this page itself: http(s)://<allowed host>."""
        u = urlparse(origin)
        return u.scheme in ("http", "https") and self.host_allowed(u.netloc, server_host, server_port)


def make_handler(app: WebApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vsearch-web"
        timeout = BODY_READ_TIMEOUT_S  # socket timeout: a stalled body cannot hold a thread forever

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            log.info("%s %s", self.address_string(), (format % args)[:300])

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Frame-Options", "DENY")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """Malformed request lines / headers (the stdlib's own checks) answer JSON too."""
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._json(code, {"error": message or HTTPStatus(code).phrase})

        def _same_origin(self) -> bool:
            """Host must name this server; a browser's Origin / Sec-Fetch-Site must be same-site.
            Answers 403 itself when not."""
            addr: Any = self.server.server_address
            host, port = str(addr[0]), int(addr[1])
            if not app.host_allowed(self.headers.get("Host"), host, port):
                self._json(403, {"error": "Host header does not name this server"})
                return False
            origin = self.headers.get("Origin")
            if origin is not None and not app.origin_allowed(origin, host, port):
                self._json(403, {"error": "cross-origin requests are not allowed"})
                return False
            if (self.headers.get("Sec-Fetch-Site") or "").lower() == "cross-site":
                self._json(403, {"error": "cross-site requests are not allowed"})
                return False
            return True

        def _guarded(self, fn: Any) -> None:
            try:
                if self._same_origin():
                    fn()
            except BadRequest as e:
                self._json(400, {"error": str(e)})
            except (TimeoutError, ConnectionError) as e:
                self.close_connection = True
                log.info("client connection problem: %s", type(e).__name__)
            except Exception:  # a bug: answer 500, never drop the connection silently
                log.exception("unhandled error for %s %s", self.command, self.path[:200])
                self.close_connection = True
                self._json(500, {"error": "internal error (logged)"})

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            self._guarded(self._get)

        def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
            self._guarded(self._get)

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            self._guarded(self._post)

        def _get(self) -> None:
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
                    self._json(404, {"error": f"no such catalog image: {rel[:200]!r}"})
                    return
                self._send(200, p.read_bytes(), IMAGE_TYPES[p.suffix.lower()])
            else:
                self._json(404, {"error": f"not found: {url.path[:200]}"})

        def _body(self) -> dict[str, Any] | None:
            """The JSON object body, or None after answering 4xx."""
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                self._json(415, {"error": "Content-Type must be application/json"})
                return None
            if self.headers.get("Transfer-Encoding"):
                self._json(411, {"error": "send a Content-Length (no Transfer-Encoding)"})
                return None
            raw = self.headers.get("Content-Length")
            if raw is None:
                self._json(411, {"error": "Content-Length required"})
                return None
            if not raw.strip().isdigit():
                self.close_connection = True
                self._json(400, {"error": f"bad Content-Length {raw[:40]!r}"})
                return None
            length = int(raw)
            if length <= 0 or length > MAX_BODY:
                self.close_connection = True
                self._json(413 if length > MAX_BODY else 400, {"error": f"body must be 1..{MAX_BODY} bytes"})
                return None
            data = self.rfile.read(length)
            if len(data) != length:
                self.close_connection = True
                self._json(400, {"error": f"body shorter than its Content-Length ({len(data)} < {length})"})
                return None
            try:
                body = json.loads(data, parse_constant=_no_constant)
            except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, absurd nesting
                raise BadRequest(f"body is not valid JSON: {str(e)[:200]}") from None
            if not isinstance(body, dict):
                raise BadRequest("body must be a JSON object")
            return body

        def _post(self) -> None:
            path = urlparse(self.path).path
            if path not in ("/api/detect", "/api/search"):
                self._json(404, {"error": f"not found: {path[:200]}"})
                return
            body = self._body()
            if body is None:
                return
            try:
                self._json(200, app.detect(body) if path == "/api/detect" else app.search(body))
            except grpc.RpcError as e:
                code = e.code()  # type: ignore[attr-defined]
                status = {
                    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
                    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
                    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
                    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.CONFLICT,
                    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
                    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
                }.get(code, HTTPStatus.BAD_GATEWAY)
                self._json(int(status), {"error": e.details(), "code": code.name})  # type: ignore[attr-defined]

    return Handler


def serve(
    gateway: str, host: str, port: int, catalog_root: str | None, timeout: float = 30.0,
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    app = WebApp(gateway, catalog_root, os.environ.get("VSEARCH_AUTH_TOKEN"), timeout, allowed_hosts)
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
    ap.add_argument(
        "--allowed-host", action="append", default=[],
        help="host name the page is reached by besides loopback / --host (repeatable; others get 403)",
    )


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(args.gateway, args.host, args.port, args.catalog_root, allowed_hosts=tuple(args.allowed_host))
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
