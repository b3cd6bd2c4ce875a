"""Hostile clients against a real ``cvplatform serve`` process: malformed bytes, huge numbers, clients that go
away or stall, decompression amplification. Raw sockets where an HTTP client library would refuse to send
the bytes; the server's own Prometheus metrics, log and ``/proc`` memory figures as the evidence.

One server per module (real SQLite registry, tiny ONNX models) with short timeouts and a 256 MiB decode
budget. Every answer must be a 4xx with the JSON error shape, never a 5xx, and the server must stay healthy.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import time

import pytest

from cvplatform.serving.local import LocalServer
from tests.fixtures.serving_models import make_serving_project

pytestmark = pytest.mark.integration

MODEL = "hostile"
BUDGET = 256 * 1024 * 1024
SERVING = {
    "models.poll_interval_s": 0, "models.intra_op_threads": 1, "batching.max_wait_ms": 5,
    "limits.header_timeout_s": 2, "limits.body_timeout_s": 2, "limits.keep_alive_timeout_s": 2,
    "limits.max_inflight_decode_bytes": BUDGET, "limits.max_header_bytes": 16384,
}
INTERNAL = ("Traceback", "Exceeds the limit", "set_int_max_str_digits", "OverflowError", "ValueError",
            "Invalid HTTP request received", "internal_error")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    yield make_serving_project(tmp_path_factory.mktemp("hostile"), MODEL, SERVING)
    mp.undo()


@pytest.fixture(scope="module")
def server(project):
    root, _, _ = project
    with LocalServer(root, log_level="info") as srv:
        yield srv


# --------------------------------------------------------------------------- helpers
def _metrics(server) -> str:
    import httpx

    return httpx.get(server.url + "/metrics", timeout=30).text


def _series(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response (headers + Content-Length body); (0, {}, b"") when closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return (0, {}, data) if not data else _parse_head(data, b"")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers, _ = _parse_head(head + b"\r\n\r\n", b"")
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:want]


def _parse_head(head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if b":" in line:
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode()
    return status, headers, body


def _raw(server, data: bytes, *, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data)
        return _read_response(s)


def _closed_by_server(sock: socket.socket) -> bool:
    """Wait (up to the socket timeout) until the server closes the connection; True when it did."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def _assert_json_error(status: int, headers: dict[str, str], body: bytes, where: object) -> dict:
    assert 400 <= status < 500, (where, status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (where, headers, body[:300])
    doc = json.loads(body)
    assert isinstance(doc, dict) and doc.get("error") and isinstance(doc.get("detail"), str), (where, doc)
    assert not any(t in body.decode("utf-8", "replace") for t in INTERNAL), (where, doc)
    return doc


def _png(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _vm_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


# --------------------------------------------------------------------------- 1. numbers beyond Python's limits
def test_huge_integers_in_json_get_a_4xx_on_every_endpoint(server):
    import httpx

    big = "9" * 5000
    fp32_400 = ",".join(["1" * 400] + ["0"] * 767)

    def fp32(shape: str, data: str) -> str:
        return f'{{"inputs": [{{"name": "input", "datatype": "FP32", "shape": {shape}, "data": [{data}]}}]}}'

    infer = f"/v2/models/{MODEL}/infer"
    cases = [
        ("/v1/predict", f'{{"instances": [{big}]}}'),
        (infer, fp32("[1, 3, 16, 16]", ",".join([big] + ["0"] * 767))),
        (infer, fp32("[1, 3, 16, 16]", fp32_400)),
        (infer, fp32(f"[{big}, 3, 16, 16]", "")),
        ("/admin/canary", f'{{"version": {big}}}'),
        ("/admin/traffic", f'{{"canary_share": {big}}}'),
        ("/admin/canary/abort", f'{{"version": {big}}}'),
        ("/admin/promote", f'{{"version": {big}}}'),
        ("/admin/rollback", f'{{"reason": {big}}}'),
    ]
    auth = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    before = _metrics(server)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for path, body in cases:
            r = c.post(path, content=body.encode(), headers=auth)
            doc = _assert_json_error(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content, path)
            assert r.status_code == 400, (path, doc)
        assert c.get("/v2/health/ready").status_code == 200
    after = _metrics(server)
    assert _series(after, "cvplatform_requests_total", status="500") == _series(before, "cvplatform_requests_total",
                                                                                 status="500") == 0


def test_request_ids_a_header_cannot_carry_are_encoded_or_refused(server):
    """The OIP ``id`` is echoed as the request-id response header: control or non-Latin-1 characters
    must not break the response (they dropped the connection or gave a 500), and a lone surrogate
    escape, which no response can echo, is a 422."""
    import httpx

    def infer(rid: str) -> httpx.Response:
        data = ",".join(["0.5"] * 768)
        body = f'{{"id": {rid}, "inputs": [{{"name": "input", "datatype": "FP32", "shape": [1, 3, 16, 16], ' \
               f'"data": [{data}]}}]}}'
        return httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=body.encode(), timeout=30,
                          headers={"Content-Type": "application/json"})

    for rid, header in (('"a\\nb"', "a%0Ab"), ('"x\\u20acy"', "x%E2%82%ACy"), ('"\\u0000"', "%00")):
        r = infer(rid)
        assert r.status_code == 200 and r.headers["X-Request-ID"] == header, (rid, r.status_code, r.text[:200])
        assert r.json()["id"] == json.loads(rid)
    r = infer('"\\ud800"')
    _assert_json_error(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content, "surrogate")
    assert r.status_code == 422


# --------------------------------------------------------------------------- 2. a client that goes away
def test_a_client_that_disconnects_mid_upload_is_counted_as_a_disconnect_not_a_500(server):
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
    before = _metrics(server)
    log_offset = server.log_path.stat().st_size
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(head + b"hello")
        time.sleep(0.2)  # the handler is waiting for the rest of the body
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = _metrics(server)
        if _series(after, "cvplatform_client_disconnects_total", endpoint="predict") > _series(
                before, "cvplatform_client_disconnects_total", endpoint="predict"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the disconnect was never counted")
    assert _series(after, "cvplatform_requests_total", endpoint="predict", status="499") == 1 + _series(
        before, "cvplatform_requests_total", endpoint="predict", status="499")
    assert _series(after, "cvplatform_requests_total", status="500") == 0
    time.sleep(0.3)
    with open(server.log_path, "rb") as fh:
        fh.seek(log_offset)
        new = fh.read().decode("utf-8", "replace")
    assert "ERROR" not in new and "Traceback" not in new, new
    assert len([ln for ln in new.splitlines() if "went away" in ln]) == 1, new
    assert [ln for ln in new.splitlines() if "went away" in ln][0].split()[2] == "INFO"


# --------------------------------------------------------------------------- 3. memory amplification
def test_eight_solid_4096px_pngs_are_refused_before_decoding_and_rss_stays_within_the_budget(server):
    """470 KB of body that would decode to ~0.5 GB: refused from the headers; the server's peak RSS
    (VmHWM, reset just before) grows by far less than the configured decode budget."""
    import httpx

    png = _png(4096)
    assert len(png) < 100_000
    files = [("files", (f"{i}.png", png, "image/png")) for i in range(8)]
    pid = server.proc.pid
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/v2/health/ready").status_code == 200
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # VmHWM := VmRSS
        rss0 = _vm_kib(pid, "VmRSS")
        r = c.post("/v1/predict", files=files)
        grown = (_vm_kib(pid, "VmHWM") - rss0) * 1024
        doc = _assert_json_error(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content, "8x4096")
        assert r.status_code in (413, 429) and doc["error"] in ("too_many_pixels", "request_too_large",
                                                                "server_busy"), doc
        assert grown < BUDGET // 4, f"peak RSS grew by {grown / 2**20:.0f} MiB for a refused request"
        # the same images one at a time fit the budget and are answered
        ok = c.post("/v1/predict", files=files[:1])
        assert ok.status_code == 200, ok.text
        assert _vm_kib(pid, "VmHWM") * 1024 - rss0 * 1024 < BUDGET
    assert _series(_metrics(server), "cvplatform_decode_bytes_in_flight") == 0


def test_concurrent_decodes_share_one_budget(server):
    """Four concurrent requests that each fit alone (2 x 4096^2 pixels) cannot decode together: the
    budget admits one at a time (the others get 429), and the peak RSS stays within it."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    png = _png(4096)
    files = [("files", (f"{i}.png", png, "image/png")) for i in range(2)]
    pid = server.proc.pid
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")
    rss0 = _vm_kib(pid, "VmRSS")

    def one(_):
        with httpx.Client(base_url=server.url, timeout=120) as c:
            return c.post("/v1/predict", files=files)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))
    grown = (_vm_kib(pid, "VmHWM") - rss0) * 1024
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 429} and 200 in statuses, [a.text[:200] for a in answers]
    for a in answers:
        if a.status_code == 429:
            assert a.json()["error"] == "server_busy" and a.headers["Retry-After"] == "1"
    assert grown < BUDGET, f"peak RSS grew by {grown / 2**20:.0f} MiB; budget {BUDGET / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- 4. slow and idle clients
def test_stalled_headers_bodies_and_idle_connections_time_out(server):
    before = _metrics(server)
    # a body that never comes: 408 JSON, connection closed, counted as 408
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                  b"hello")
        status, headers, body = _read_response(s)
        assert _assert_json_error(status, headers, body, "stalled body")["error"] == "request_timeout"
        assert status == 408 and _closed_by_server(s)
    # a body that drips one byte at a time, each faster than any per-read timeout would catch
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
        s.settimeout(0.3)
        got = b""
        for _ in range(60):
            try:
                s.sendall(b"x")
                got += s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if got:
                break
        s.settimeout(60)
        if b"\r\n\r\n" not in got:
            got += s.recv(65536)
        assert got.startswith(b"HTTP/1.1 408 "), got[:200]
    # headers that never finish: 408 JSON
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        status, headers, body = _read_response(s)
        assert status == 408 and _assert_json_error(status, headers, body, "stalled headers")
    # a connection that never sends a byte, and one idle after a response: closed
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        assert _closed_by_server(s)
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(s)[0] == 200
        assert _closed_by_server(s)
    after = _metrics(server)
    assert _series(after, "cvplatform_requests_total", endpoint="predict", status="408") >= 1 + _series(
        before, "cvplatform_requests_total", endpoint="predict", status="408")
    assert _series(after, "cvplatform_requests_total", status="500") == 0


# --------------------------------------------------------------------------- 5. protocol-level garbage
def _protocol_corpus() -> list[bytes]:
    h = b"Host: x\r\n"
    post = b"POST /v1/predict HTTP/1.1\r\n" + h
    return [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"Content-Length: 1 2\r\n\r\nxyz",
        b"GET / HTTP/9.9\r\n" + h + b"\r\n",
        b"GET / HTTX/1.1\r\n" + h + b"\r\n",
        b"FOO / HTTP/1.1\r\n" + h + b"\r\n",
        b"G(T / HTTP/1.1\r\n" + h + b"\r\n",
        b"get / HTTP/1.1\r\n" + h + b"\r\n",
        b"GET /a\x01b HTTP/1.1\r\n" + h + b"\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\n" + h + b"\r\n",
        b"GET http://[::1 HTTP/1.1\r\n" + h + b"\r\n",
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"Content-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"Content-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"Content-Length: +5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\n" + h + b"Content-Length: 99999999999999999999999999\r\n\r\n",
        post + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        post + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        post + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        post + b"Transfer-Encoding: chunked\r\n\r\n5;\x00\r\nhello\r\n0\r\n\r\n",
        post + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
        post + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        post + b"Transfer-Encoding: gzip\r\n\r\nhello",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\x00\x00\x02\x13\x01\x01\x00",
        bytes(range(256)),
        b"\x00" * 64,
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n" + h + b"\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"X-Big: " + b"b" * 20000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"".join(b"X-%d: v\r\n" % i for i in range(3000)) + b"\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"X-Big: " + b"c" * 20000,  # never finishes, and too large already
        b"GET / HTTP/1.1 extra\r\n" + h + b"\r\n",
        post + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage\r\n\r\n"[len(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):],
    ]


def test_protocol_errors_get_the_json_error_shape(server):
    corpus = _protocol_corpus()
    assert len(corpus) >= 40
    before = _metrics(server)
    for round_ in range(2):
        for i, data in enumerate(corpus):
            status, headers, body = _raw(server, data)
            assert status != 0, (round_, i, data[:80], "closed without an answer")
            _assert_json_error(status, headers, body, (i, data[:80]))
    import httpx

    assert httpx.get(server.url + "/v2/health/ready", timeout=30).status_code == 200
    assert _series(_metrics(server), "cvplatform_requests_total", status="500") == _series(
        before, "cvplatform_requests_total", status="500") == 0
    assert "Invalid HTTP request received" not in server.log_path.read_text(encoding="utf-8", errors="replace")


# --------------------------------------------------------------------------- and the server is still fine
def test_the_server_still_answers_after_all_of_it(project, server):
    import httpx

    from tests.fixtures.serving_models import colour_image, encode_png

    png = encode_png(colour_image(0, size=24))
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/v1/predict", json={"instances": [{"b64": base64.b64encode(png).decode()}]})
        assert r.status_code == 200 and r.json()["predictions"][0]["class"] == "red"
    text = server.log_path.read_text(encoding="utf-8", errors="replace")  # the whole log, not its tail
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
