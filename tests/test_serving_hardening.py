"""The server under hostile input and slow peers: bad texts, deadlines (headers, body, request, keep-alive),
abandoned requests, fair scheduling of long requests, framing, and a quiet shutdown.

Slow-peer tests run a real uvicorn server (the shipped configuration, ``uvicorn_config``) in a thread on
127.0.0.1 with a stand-in classifier, and talk to it over raw sockets where a well-behaved client cannot misbehave.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from classlm import LMClassifier  # noqa: E402
from classlm.serving import ServeSettings, create_app  # noqa: E402
from classlm.serving.batcher import MicroBatcher  # noqa: E402
from classlm.serving.protocol import uvicorn_config  # noqa: E402
from conftest import wait_until  # noqa: E402

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
JSON = {"Content-Type": "application/json"}


class Gate:
    """A stand-in classifier: scoring waits for ``release`` (so a test can hold the worker) and records each call."""

    classes_ = np.array(["a", "b"], dtype=object)

    def __init__(self, released: bool = False) -> None:
        self.release = threading.Event()
        if released:
            self.release.set()
        self.calls: list[list[str]] = []

    def predict_proba(self, texts):
        self.release.wait(10)
        self.calls.append(list(texts))
        return np.tile([0.25, 0.75], (len(texts), 1))


@contextmanager
def serve(model, **settings) -> Iterator[tuple[int, object]]:
    """A real uvicorn server with the shipped configuration, in a thread; yields (port, app)."""
    settings = ServeSettings(port=0, **settings)
    app = create_app(model, settings)
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=30, what="the server to start")
        assert server.started, "the server did not start"
        yield server.servers[0].sockets[0].getsockname()[1], app
    finally:
        if isinstance(model, Gate):
            model.release.set()
        server.should_exit = True
        thread.join(30)


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` (recv gives b'') within ``within`` s, reading any answer first."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if sock.recv(65536) == b"":
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def _raw(port: int, data: bytes, within: float = 10.0) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=within) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


# -- 1. one bad text must not poison its micro-batch ------------------------------------------------------------
@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    return LMClassifier(model=str(tiny_model_dir), labels=LABELS, batch_size=4).fit([])


def test_lone_surrogate_is_a_422_for_its_request_only(clf):
    texts = ["Stocks fell sharply on Monday.", "The team won the match.", "A new phone was released today."]
    bad = b'{"texts": ["fine", "ab\\ud800c"]}'  # raw bytes: an HTTP client would refuse to encode the surrogate
    with TestClient(create_app(clf, ServeSettings(max_wait_ms=1000))) as c:
        with ThreadPoolExecutor(4) as pool:
            good = [pool.submit(c.post, "/v1/classify", json={"text": t}) for t in texts]
            poison = pool.submit(c.post, "/v1/classify", content=bad, headers=JSON)
            answers = [f.result(60) for f in good]
            refused = poison.result(60)
    assert [a.status_code for a in answers] == [200, 200, 200]
    for t, a in zip(texts, answers):
        np.testing.assert_allclose(
            list(a.json()["results"][0]["probabilities"].values()), clf.predict_proba([t])[0], atol=1e-6
        )
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["type"] == "invalid_text"
    assert "text 1 has a lone surrogate U+D800 at character 2" in error["message"]


def test_a_failing_call_is_rescored_request_by_request():
    calls: list[list[str]] = []
    release = threading.Event()

    def picky(texts, class_mass):
        release.wait(5)
        calls.append(list(texts))
        if "bad" in texts:
            raise ValueError("the tokenizer cannot take this")
        return np.array([[len(t)] for t in texts], dtype=float), None

    batcher = MicroBatcher(picky, max_batch_texts=10, max_wait_s=0.0)
    held = batcher.submit(["first"])  # the worker takes it and waits, so the next three share one call
    wait_until(lambda: batcher.pending_texts == 0, what="the worker to take the first request")
    futures = [batcher.submit(["ok"]), batcher.submit(["x", "bad"]), batcher.submit(["fine"])]
    release.set()
    assert held.result(5)[0].tolist() == [[5.0]]
    assert futures[0].result(5)[0].tolist() == [[2.0]]
    assert futures[2].result(5)[0].tolist() == [[4.0]]
    with pytest.raises(ValueError, match="cannot take"):
        futures[1].result(5)
    batcher.close()
    assert calls[1] == ["ok", "x", "bad", "fine"]  # tried together first, then each alone
    assert calls[2:] == [["ok"], ["x", "bad"], ["fine"]]


# -- 2. deadlines, abandoned requests, fairness, shutdown --------------------------------------------------------
def test_connection_without_complete_headers_is_closed():
    with serve(Gate(released=True), header_timeout_s=0.5) as (port, _):
        idle = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        try:
            assert _closed_by_server(idle, within=10)
            assert _closed_by_server(slow, within=10)
        finally:
            idle.close()
            slow.close()


def test_idle_keep_alive_connection_is_closed_after_its_timeout():
    with serve(Gate(released=True), keep_alive_timeout_s=0.3, header_timeout_s=30) as (port, _):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            assert _closed_by_server(sock, within=10)  # well before the 30 s header deadline


def test_body_that_never_completes_gets_408():
    app = create_app(Gate(released=True), ServeSettings(body_timeout_s=0.2))
    sent: list[dict] = []
    calls = 0

    async def receive():
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b'{"text": "a', "more_body": True}  # 11 of 100 bytes
        await asyncio.sleep(3600)  # the rest never comes

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/classify",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        "query_string": b"",
    }
    start = time.monotonic()
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    assert time.monotonic() - start < 10
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert "did not arrive within 0.2 s" in json.loads(sent[1]["body"])["error"]["message"]


def test_request_past_its_deadline_is_504_and_its_texts_are_dropped():
    model = Gate()
    with TestClient(create_app(model, ServeSettings(request_timeout_s=0.5))) as c:
        batcher = c.app.state.serving["batcher"]
        held = batcher.submit(["held"])  # the worker is busy with this until release
        wait_until(lambda: batcher.pending_texts == 0, what="the worker to take the first request")
        r = c.post("/v1/classify", json={"texts": ["late 1", "late 2"]})
        assert r.status_code == 504
        assert r.json()["error"]["type"] == "request_timeout"
        assert "deadline of 0.5 s" in r.json()["error"]["message"]
        assert batcher.pending_texts == 0  # dropped, not left queued
        model.release.set()
        held.result(5)
        assert c.post("/v1/classify", json={"text": "after"}).status_code == 200
    assert ["late 1", "late 2"] not in model.calls and all("late 1" not in call for call in model.calls)


def test_request_whose_client_left_is_dropped_before_it_is_scored():
    model = Gate()
    with serve(model) as (port, app):
        batcher = app.state.serving["batcher"]
        held = batcher.submit(["held"])
        wait_until(lambda: batcher.pending_texts == 0, what="the worker to take the first request")
        body = b'{"texts": ["gone 1", "gone 2", "gone 3"]}'
        head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head.encode() + b"\r\n\r\n" + body)
            wait_until(lambda: batcher.pending_texts == 3, what="the request to be queued")
        wait_until(lambda: batcher.pending_texts == 0, what="the abandoned request to be dropped")
        model.release.set()
        held.result(5)
        assert httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"text": "next"}, timeout=10).status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert all("gone 1" not in call for call in model.calls)
    assert 'classlm_requests_total{path="/v1/classify",status="499"} 1' in metrics


def test_a_long_request_does_not_starve_a_short_one():
    release = threading.Event()
    calls: list[list[str]] = []

    def score(texts, class_mass):
        release.wait(5)
        calls.append(list(texts))
        return np.array([[int(t.split()[-1])] for t in texts], dtype=float), None

    batcher = MicroBatcher(score, max_batch_texts=4, max_wait_s=0.0)
    long = batcher.submit([f"long {i}" for i in range(16)])
    wait_until(lambda: batcher.pending_texts == 12, what="the first call to take 4 of the long request's texts")
    short = batcher.submit(["short 99"])
    release.set()
    assert short.result(5)[0].tolist() == [[99.0]]
    assert long.result(5)[0][:, 0].tolist() == list(range(16))  # split over calls, joined back in order
    batcher.close()
    assert max(len(c) for c in calls) == 4
    # The short request is in the very next call, not behind the remaining 12 texts.
    assert "short 99" in calls[1]


def test_a_split_request_beside_one_that_wants_class_mass_is_answered_and_the_worker_lives():
    # The class mass is computed for a whole call when any request in it asks: a long request split over calls
    # then had parts with and without that column, which failed the join and, with it, the worker thread.
    release = threading.Event()

    def score(texts, class_mass):
        release.wait(5)
        mass = np.full(len(texts), 0.5) if class_mass else None
        return np.array([[int(t.split()[-1])] for t in texts], dtype=float), mass

    batcher = MicroBatcher(score, max_batch_texts=4, max_wait_s=0.0)
    first = batcher.submit(["first 0"])  # holds the worker until release, so the next two queue together
    wait_until(lambda: batcher.pending_texts == 0, what="the worker to take the first request")
    with_mass = batcher.submit(["mass 7"], class_mass=True)
    long = batcher.submit([f"long {i}" for i in range(8)])
    release.set()
    first.result(5)
    # The next call shares 4 texts out: "mass 7" and 3 of the long request, scored with the class mass; the long
    # request's other parts come from calls without it.
    proba, mass = long.result(5)
    assert proba[:, 0].tolist() == list(range(8)) and mass is None  # not asked for: left out, not half present
    assert with_mass.result(5)[1].tolist() == [0.5]
    assert batcher.alive and batcher.submit(["after 3"]).result(5)[0].tolist() == [[3.0]]
    batcher.close()


def test_both_content_length_and_chunked_is_refused():
    with serve(Gate(released=True)) as (port, _):
        body = b'{"text": "a"}'
        request = (
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        answer = _raw(port, request)
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"both Content-Length and Transfer-Encoding" in answer
    assert b"connection: close" in answer.lower()


SHUTDOWN_SERVER = """
import sys, threading
import numpy as np
from classlm.serving import ServeSettings, run

class Stuck:
    classes_ = np.array(["a", "b"], dtype=object)
    def predict_proba(self, texts):
        threading.Event().wait(120)  # a scoring call that outlasts any shutdown timeout

# No batching: the first request is scored alone and the other five wait, so the test knows what is queued.
settings = ServeSettings(port=int(sys.argv[1]), batching=False, shutdown_timeout_s=0.5, request_timeout_s=300)
run(Stuck(), settings)
"""


def test_shutdown_is_quiet_and_bounded(tmp_path):
    from conftest import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SHUTDOWN_SERVER, str(port)], stderr=subprocess.PIPE, text=True, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=60, what="the server to start")
        with ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(httpx.post, f"{url}/v1/classify", json={"text": f"t{i}"}, timeout=60) for i in range(6)
            ]
            wait_until(
                lambda: httpx.get(f"{url}/health", timeout=5).json()["queue_texts"] == 5,
                timeout=30,
                what="one request being scored and five queued",
            )
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            answers = [f.result(60) for f in futures]
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - start < 15  # shutdown_timeout_s (0.5) twice, plus start-up slack
        assert [a.status_code for a in answers] == [503] * 6
        assert {a.json()["error"]["type"] for a in answers} == {"shutting_down"}
        log = proc.stderr.read()
        assert "Traceback" not in log and "CancelledError" not in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- 4. smaller defects --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Gate(released=True), ServeSettings())) as c:
        yield c


def test_docs_page_works_without_its_cdn(client):
    page = client.get("/docs").text
    # The summary is plain HTML from this server: readable with the CDN unreachable (and with JavaScript off).
    assert '<div id="offline"' in page
    assert "<code>POST /v1/classify</code>" in page and "<code>GET /v1/model</code>" in page
    assert "cdn.jsdelivr.net" in page and "/openapi.json" in page  # and it says where the interactive UI comes from


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"text": "caf\xe9"}', "not valid UTF-8: byte 0xe9 at offset 13"),
        (b"[" * 100_000, "nests arrays or objects too deeply"),
    ],
)
def test_unparseable_bodies_say_what_to_fix(client, body, message):
    r = client.post("/v1/classify", content=body, headers=JSON)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_json"
    assert message in r.json()["error"]["message"]


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200d\ufeff", " \u2060 \u200c\n", "\x00\x01"])
def test_invisible_only_texts_are_empty(client, text):
    r = client.post("/v1/classify", json={"texts": ["fine", text]})
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "empty_text"
    assert "text 1 is empty" in r.json()["error"]["message"]
    # A text with zero-width characters and something visible is content.
    assert client.post("/v1/classify", json={"text": "\u200bok\u200d"}).status_code == 200
