"""Hostile clients against the real `vsearch web` process (issue 12 item 8): every malformed request
gets a 4xx JSON answer with a message and the server logs no unhandled exception; foreign Host /
Origin get 403 before the gateway is called with the server's token; only image files inside the
catalog folder are served.

The bridge talks to a real gateway (token required) over one real shard; no Triton, so a
well-formed photo search that passes every check reaches the gateway and comes back 502
"needs Triton" - proof the server's token was attached (not 401) for same-origin callers.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from visual_search.gateway.process import GatewayProcess
from visual_search.shard.process import ShardProcess
from visual_search.supervise import CommandProcess, free_port, http_ok

MODEL = "hostile-web-v1"
TOKEN = "s3cret-web-token-0123456789"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


JPEG_B64 = base64.b64encode(_jpeg()).decode()


@dataclass
class Web:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    catalog: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            h = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            ctype = r.getheader("Content-Type") or ""
            return r.status, json.loads(data) if ctype.startswith("application/json") else {"raw": data}
        finally:
            conn.close()

    def post(self, path: str, obj: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        return self.request("POST", path, json.dumps(obj).encode(), headers)

    def raw(self, data: bytes, wait: float = 15.0) -> bytes:
        """Send raw bytes; return everything the server answers before it closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=wait) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    root = tmp_path_factory.mktemp("hostile-web")
    catalog = root / "catalog"
    (catalog / "sub").mkdir(parents=True)
    (catalog / "sub" / "a.jpg").write_bytes(_jpeg())
    (catalog / "notes.txt").write_text("not an image")
    (root / "secret.jpg").write_bytes(b"outside the catalog")
    (catalog / "escape.jpg").symlink_to(root / "secret.jpg")
    port = free_port()
    log = root / "web.log"
    with (
        ShardProcess(root / "shard", model_version=MODEL) as shard,
        GatewayProcess(
            shard.address, model_version=MODEL, log_path=root / "gw.log", extra_args=["--auth-token", TOKEN]
        ) as gw,
        CommandProcess(
            [sys.executable, "-m", "visual_search.cli", "web", "--port", str(port), "--gateway", gw.address,
             "--catalog-root", str(catalog)],
            log, env={**os.environ, "VSEARCH_AUTH_TOKEN": TOKEN},
            ready=lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
        ) as web,
    ):
        assert web.proc is not None
        yield Web(port, web.proc, log, catalog)


def _assert_4xx(status: int, body: dict, want: int | None = None) -> None:
    assert 400 <= status < 500, (status, body)
    if want is not None:
        assert status == want, (status, body)
    assert isinstance(body.get("error"), str) and body["error"], body


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"image": JPEG_B64, "k": -1}, "k must be"),
        ({"image": JPEG_B64, "k": 10**30}, "k must be"),
        ({"image": JPEG_B64, "k": 1e400}, "body is not valid JSON"),  # json.dumps -> Infinity
        ({"image": JPEG_B64, "k": "ten"}, "k must be"),
        ({"image": JPEG_B64, "k": True}, "k must be"),
        ({"image": JPEG_B64, "filters": ["category", "x"]}, "filters must be an object"),
        ({"image": JPEG_B64, "filters": "category=x"}, "filters must be an object"),
        ({"image": JPEG_B64, "filters": {"category": ["x"]}}, "filters.category must be a string"),
        ({"image": JPEG_B64, "filters": {"price_min": "cheap"}}, "price_min must be a finite number"),
        ({"image": JPEG_B64, "filters": {"available": "yes"}}, "available must be true or false"),
        ({"image": JPEG_B64, "filters": {"colour": "red"}}, "unknown filter field"),
        ({"image": JPEG_B64, "box": ["a", 1, 2, 3]}, "box[] must be a finite number"),
        ({"image": JPEG_B64, "box": "0,0,5,5"}, "box must be a list"),
        ({"image": JPEG_B64, "box": [0, 0, 5]}, "box must be a list"),
        ({"image": JPEG_B64, "box_index": "first"}, "box_index must be"),
        ({"image": JPEG_B64, "box_index": -3}, "box_index must be"),
        ({"image": JPEG_B64, "whole_image": "yes"}, "whole_image must be"),
        ({"image": JPEG_B64, "region": {"eu": 1}}, "region must be a string"),
        ({"image": 12345}, "image must be a non-empty base64 string"),
        ({"image": None}, "image must be"),
        ({"image": ["a"]}, "image must be"),
        ({"image": "!!not base64!!"}, "image must be base64"),
        ({"image": JPEG_B64, "token": TOKEN}, "unknown field"),
    ],
)
def test_malformed_search_fields_get_400_with_a_message(web: Web, body: dict, words: str) -> None:
    if body.get("k") == 1e400:
        status, resp = web.request("POST", "/api/search", json.dumps(body).encode())
    else:
        status, resp = web.post("/api/search", body)
    _assert_4xx(status, resp, 400)
    assert words in resp["error"], resp


def test_malformed_bodies_and_headers_get_4xx(web: Web) -> None:
    cases: list[tuple[bytes | None, dict[str, str], int]] = [
        (b"[1, 2]", {}, 400),  # not an object
        (b"{not json", {}, 400),
        (b"\xff\xfe\x00garbage", {}, 400),  # not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, {}, 400),  # absurd nesting
        (b'{"image": "x"}', {"Content-Type": "text/plain"}, 415),  # a form post cannot skip the preflight
    ]
    for body, headers, want in cases:
        status, resp = web.request("POST", "/api/search", body, headers)
        _assert_4xx(status, resp, want)
    status, resp = web.post("/api/detect", {"image": 7})
    _assert_4xx(status, resp, 400)
    status, resp = web.post("/api/detect", {"image": JPEG_B64, "k": 3})
    _assert_4xx(status, resp, 400)
    status, resp = web.post("/api/nope", {})
    _assert_4xx(status, resp, 404)


def _status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("content_length", "want"),
    [("abc", 400), ("-5", 400), ("1e3", 400), ("0", 400), (str(10**12), 413), ("99999999999999999999", 413)],
)
def test_bad_content_length_gets_a_json_answer(web: Web, content_length: str, want: int) -> None:
    raw = web.raw(
        b"POST /api/search HTTP/1.1\r\nHost: " + web.host.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + content_length.encode() + b"\r\n\r\n{}"
    )
    status, body = _status_and_json(raw)
    _assert_4xx(status, body, want)


def test_body_shorter_than_content_length_and_chunked_and_oversized(web: Web) -> None:
    pre = b"POST /api/search HTTP/1.1\r\nHost: " + web.host.encode()
    pre += b"\r\nContent-Type: application/json\r\n"
    status, body = _status_and_json(web.raw(pre + b"Content-Length: 100\r\n\r\n{}"))  # client closes early
    _assert_4xx(status, body, 400)
    assert "shorter" in body["error"]
    status, body = _status_and_json(web.raw(pre + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"))
    _assert_4xx(status, body, 411)
    big = b'{"image": "' + b"A" * (40 << 20) + b'"}'
    try:
        status, resp = web.request("POST", "/api/search", big)
    except (BrokenPipeError, ConnectionResetError):  # the server may answer and close mid-upload
        return
    _assert_4xx(status, resp, 413)


def test_image_paths_only_images_inside_the_catalog(web: Web) -> None:
    status, body = web.request("GET", "/api/image?path=sub/a.jpg")
    assert status == 200 and body["raw"][:2] == b"\xff\xd8"
    for path, want in [
        ("../secret.jpg", 404),
        ("escape.jpg", 404),  # a link out of the catalog
        ("/etc/passwd", 400),
        ("notes.txt", 400),  # not an image
        ("sub/a.jpg%00.txt", 400),
        ("sub%00/a.jpg", 400),
        ("", 400),
        ("sub/missing.jpg", 404),
        ("..%2f..%2f..%2fetc%2fhostname.jpg", 404),
    ]:
        status, resp = web.request("GET", f"/api/image?path={path}")
        _assert_4xx(status, resp, want)
    # NUL straight in the request line: the stdlib's own parser answers, as JSON
    raw = web.raw(b"GET /api/image?path=a\x00.jpg HTTP/1.1\r\nHost: " + web.host.encode() + b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.") and 400 <= int(raw.split(b" ", 2)[1]) < 500


def test_foreign_host_and_origin_get_403_and_no_token_reaches_the_gateway(web: Web) -> None:
    ok_body = {"image": JPEG_B64, "k": 5}
    # same origin: checks pass, the token is attached, the gateway answers "needs Triton" (not 401)
    status, resp = web.post("/api/search", ok_body, {"Origin": f"http://{web.host}"})
    assert status == 502 and "Triton" in resp["error"], resp
    status, resp = web.post("/api/search", ok_body, {"Host": f"localhost:{web.port}"})
    assert status == 502, resp
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": f"http://evil.example:{web.port}"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "evil.example"},
        {"Host": f"evil.example:{web.port}"},  # DNS rebinding
        {"Host": f"127.0.0.1:{web.port + 1}"},
    ):
        status, resp = web.post("/api/search", ok_body, headers)
        _assert_4xx(status, resp, 403)
        assert TOKEN not in json.dumps(resp)
    status, resp = web.request("GET", "/", headers={"Host": "evil.example"})
    _assert_4xx(status, resp, 403)
    status, resp = web.request("GET", "/api/image?path=sub/a.jpg", headers={"Origin": "http://evil.example"})
    _assert_4xx(status, resp, 403)
    status, page = web.request("GET", "/")
    assert status == 200 and TOKEN.encode() not in page["raw"]


def test_no_unhandled_exception_in_the_log_and_still_serving(web: Web) -> None:
    status, resp = web.request("GET", "/healthz")
    assert status == 200 and resp == {"ok": True}
    assert web.proc.poll() is None
    text = web.log.read_text(errors="replace")
    assert "Traceback" not in text and "Exception occurred" not in text, text[-3000:]
    assert TOKEN not in text
