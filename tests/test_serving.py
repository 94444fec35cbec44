"""The HTTP service, in process (FastAPI TestClient), with the tiny model; plus the micro-batcher on its own and one
real uvicorn process for graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from classlm import LMClassifier  # noqa: E402
from classlm.errors import ConfigError  # noqa: E402
from classlm.serving import ServeSettings, create_app  # noqa: E402
from classlm.serving.batcher import MicroBatcher, QueueFull, ShuttingDown  # noqa: E402
from conftest import free_port, wait_until  # noqa: E402

LABELS = {"World": "world news", "Sports": "sport", "Business": "business", "Sci/Tech": "science and technology"}
TEXTS = ["Stocks fell sharply on Monday.", "The team won the match.", "A new phone was released today.", "Great!"]


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    return LMClassifier(model=str(tiny_model_dir), labels=LABELS, batch_size=4).fit([])


def _client(clf, **settings):
    return TestClient(create_app(clf, ServeSettings(**settings)))


@pytest.fixture(scope="module")
def client(clf):
    with _client(clf, max_texts=3, max_chars=200, max_body_bytes=2000) as c:
        yield c


# -- answers ----------------------------------------------------------------------------------------------------------
def test_single_text_matches_predict_proba(client, clf):
    r = client.post("/v1/classify", json={"text": TEXTS[0]})
    assert r.status_code == 200
    (result,) = r.json()["results"]
    expected = clf.predict_proba([TEXTS[0]])[0]
    assert list(result["probabilities"]) == list(LABELS)  # every class, in class order
    np.testing.assert_allclose(list(result["probabilities"].values()), expected, atol=1e-6)
    assert result["label"] == list(LABELS)[int(np.argmax(expected))]
    assert "class_mass" not in result
    assert result["truncated"] is False


def test_priors_per_request_move_only_that_request(client, clf):
    from classlm.priors import shift_priors

    wanted = {"World": 1, "Sports": 1, "Business": 6, "Sci/Tech": 2}
    r = client.post("/v1/classify", json={"texts": TEXTS[:2], "priors": wanted})
    assert r.status_code == 200, r.text
    body = r.json()
    target = np.array(list(wanted.values()), dtype=float) / 10
    assert body["priors"] == pytest.approx(dict(zip(LABELS, target)))
    expected = shift_priors(clf.predict_proba(TEXTS[:2]), clf.training_priors_, target)
    got = [list(row["probabilities"].values()) for row in body["results"]]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got, clf.predict_proba(TEXTS[:2], priors=wanted), atol=1e-6)
    # The next request without priors is answered as before, and says nothing of priors.
    plain = client.post("/v1/classify", json={"texts": TEXTS[:2]}).json()
    assert "priors" not in plain
    np.testing.assert_allclose(
        [list(row["probabilities"].values()) for row in plain["results"]], clf.predict_proba(TEXTS[:2]), atol=1e-6
    )
    bad = client.post("/v1/classify", json={"text": TEXTS[0], "priors": {"World": 1, "Sports": 1}})
    assert bad.status_code == 422
    assert bad.json()["error"]["message"].startswith("priors: expected a weight for each class")
    assert "missing ['Business', 'Sci/Tech']" in bad.json()["error"]["message"]
    info = client.get("/v1/model").json()["priors"]
    assert info["deployment"] is None and info["training"] == pytest.approx(dict.fromkeys(LABELS, 0.25))


def test_priors_estimated_from_a_requests_own_texts(client, clf):
    from classlm.priors import em_priors, shift_priors

    r = client.post("/v1/classify", json={"texts": TEXTS[:3], "priors": "em"})
    assert r.status_code == 200, r.text
    body = r.json()
    base = clf.predict_proba(TEXTS[:3])
    estimate = em_priors(base, clf.training_priors_).priors
    assert not np.allclose(estimate, 0.25, atol=1e-3)  # the texts lean somewhere: the estimate is not the prior
    assert list(body["priors"].values()) == pytest.approx(estimate.tolist(), abs=1e-9)
    assert body["priors_method"] == "em"
    got = [list(row["probabilities"].values()) for row in body["results"]]
    np.testing.assert_allclose(got, shift_priors(base, clf.training_priors_, estimate), atol=1e-6)
    assert clf.priors_ is None  # the served classifier keeps its balance: the estimate was this request's
    plain = client.post("/v1/classify", json={"texts": TEXTS[:3]}).json()
    assert "priors_method" not in plain
    np.testing.assert_allclose([list(row["probabilities"].values()) for row in plain["results"]], base, atol=1e-6)
    # BBSE needs the confusion counts of labelled calibration rows, which a zero-shot classifier has not got.
    bbse = client.post("/v1/classify", json={"texts": TEXTS[:3], "priors": "bbse"})
    assert bbse.status_code == 422
    assert "needs the confusion counts" in bbse.json()["error"]["message"]
    assert client.post("/v1/classify", json={"text": TEXTS[0], "priors": "mle"}).status_code == 422
    # "auto" needs no labelled rows: without them it is EM, and the answer says so.
    auto = client.post("/v1/classify", json={"texts": TEXTS[:3], "priors": "auto"})
    assert auto.status_code == 200, auto.text
    assert auto.json()["priors_method"] == "em"
    assert list(auto.json()["priors"].values()) == pytest.approx(estimate.tolist(), abs=1e-9)


def test_auto_priors_run_bbse_for_a_classifier_calibrated_on_enough_rows(tiny_model_dir):
    calibrated = LMClassifier(model=str(tiny_model_dir), labels=LABELS, batch_size=4).fit([])
    calibrated.calibrate(TEXTS * 50, ["Business", "Sports", "Sci/Tech", "World"] * 50)  # 50 rows of each class
    with _client(calibrated) as c:
        body = c.post("/v1/classify", json={"texts": TEXTS, "priors": "auto"}).json()
    assert body["priors_method"] == "bbse"
    wanted = calibrated.estimate_priors(calibrated.predict_proba(TEXTS), "bbse")
    assert list(body["priors"].values()) == pytest.approx(wanted.tolist(), abs=1e-6)
    assert calibrated.priors_ is None  # the request's own estimate, not the classifier's


def test_out_of_scope_scores_per_text_when_asked(clf, tiny_model_dir):
    labelled = LMClassifier(model=str(tiny_model_dir), labels=LABELS, batch_size=4).fit(
        TEXTS, ["Business", "Sports", "Sci/Tech", "World"]
    )  # fit saw labels: the Mahalanobis distance too
    for model, names in (
        (clf, {"class_mass", "energy", "max_proba", "answer_mass"}),
        (labelled, {"class_mass", "energy", "max_proba", "answer_mass", "mahalanobis"}),
    ):
        with _client(model) as c:
            rows = c.post("/v1/classify", json={"texts": TEXTS, "out_of_scope": True}).json()["results"]
            expected = model.out_of_scope_scores(TEXTS)
            assert set(rows[0]["out_of_scope"]) == names
            for name in names:
                np.testing.assert_allclose([r["out_of_scope"][name] for r in rows], expected[name], rtol=1e-5)
            assert "class_mass" not in rows[0]  # asked for the scores only
            plain = c.post("/v1/classify", json={"texts": TEXTS}).json()["results"]
            assert "out_of_scope" not in plain[0]


def test_abstaining_below_a_threshold_by_setting_or_per_request(clf):
    top = clf.predict_proba(TEXTS).max(axis=1)
    cut = float(np.sort(top)[1]) + 1e-9  # the two least sure texts fall below it
    with _client(clf, abstain_below=cut, abstain_label="unsure") as c:
        rows = c.post("/v1/classify", json={"texts": TEXTS}).json()["results"]
        assert [r["abstained"] for r in rows] == list(top < cut)
        assert [r["label"] == "unsure" for r in rows] == list(top < cut)
        assert all(len(r["probabilities"]) == len(LABELS) for r in rows)  # the probabilities are still there
        none = c.post("/v1/classify", json={"texts": TEXTS, "abstain_below": 1e-9}).json()["results"]
        assert not any(r["abstained"] for r in none)
        bad = c.post("/v1/classify", json={"text": TEXTS[0], "abstain_below": 1.5})
        assert bad.status_code == 422
        limits = c.get("/v1/model").json()["limits"]
        assert limits["abstain_below"] == cut and limits["abstain_label"] == "unsure"
    with _client(clf, abstain_label="World") as c:  # a class name cannot mean "abstained"
        r = c.post("/v1/classify", json={"text": TEXTS[0], "abstain_below": 0.5})
        assert r.status_code == 422 and "'World' is a class" in r.json()["error"]["message"]
    with pytest.raises(ConfigError, match="abstain_below must be a probability"):
        ServeSettings(abstain_below=0)


def test_truncated_texts_are_flagged_and_counted(clf):
    long_text = " ".join(["the quick brown fox"] * 200)  # past the prompt's 512-token text slot
    with _client(clf) as c:
        r = c.post("/v1/classify", json={"texts": ["short", long_text]})
        metrics = c.get("/metrics").text
    assert r.status_code == 200
    assert [x["truncated"] for x in r.json()["results"]] == [False, True]
    assert "classlm_texts_truncated_total 1" in metrics.splitlines()


def test_texts_answered_in_order_with_class_mass(client, clf):
    texts = TEXTS[1:]
    r = client.post("/v1/classify", json={"texts": texts, "class_mass": True})
    assert r.status_code == 200
    results = r.json()["results"]
    scores = clf.predict_scores(texts, class_mass=True)
    np.testing.assert_allclose(
        [list(x["probabilities"].values()) for x in results], clf.predict_proba(texts), atol=1e-6
    )
    np.testing.assert_allclose([x["class_mass"] for x in results], scores.class_mass, rtol=1e-5)


BAD = [
    ({"text": 5}, 422, "invalid_request", "text: Input should be a valid string"),
    ({"texts": ["ok", 3]}, 422, "invalid_request", "texts.1: Input should be a valid string"),
    ({"texts": "not a list"}, 422, "invalid_request", "texts: Input should be a valid list"),
    ({"text": "a", "class_mass": "yes"}, 422, "invalid_request", "class_mass: Input should be a valid boolean"),
    ({"text": "a", "foo": 1}, 422, "invalid_request", "unknown field 'foo'"),
    ({}, 422, "invalid_request", "exactly one of 'text'"),
    ({"text": "a", "texts": ["b"]}, 422, "invalid_request", "exactly one of 'text'"),
    ({"texts": []}, 422, "invalid_request", "'texts' is empty"),
    ({"texts": ["a", "b", "c", "d"]}, 422, "too_many_texts", "4 texts in one request; the limit is 3"),
    ({"text": "x" * 201}, 422, "text_too_long", "text 0 has 201 characters; the limit is 200"),
    ({"texts": ["fine", "   "]}, 422, "empty_text", "text 1 is empty"),
    ({"text": ""}, 422, "empty_text", "text 0 is empty"),
    ([1, 2], 422, "invalid_request", "must be a JSON object"),
    ("just a string", 422, "invalid_request", "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "status", "kind", "message"), BAD)
def test_bad_bodies_get_clear_4xx(client, body, status, kind, message):
    r = client.post("/v1/classify", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == kind
    assert message in error["message"]


def test_invalid_json_is_400(client):
    r = client.post("/v1/classify", content=b'{"text": "a",', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_json"
    assert "not valid JSON" in r.json()["error"]["message"]


def test_wrong_content_type_is_415(client):
    r = client.post("/v1/classify", content=b'{"text": "a"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert "expected Content-Type: application/json, got 'text/plain'" in r.json()["error"]["message"]


def test_body_over_limit_is_413_with_or_without_content_length(client):
    body = json.dumps({"text": "x" * 3000}).encode()
    r = client.post("/v1/classify", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert "limit of 2000 bytes" in r.json()["error"]["message"]

    def chunks():  # a generator body is sent chunked: no Content-Length, so the limit must hold while reading
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    r = client.post("/v1/classify", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_unknown_route_and_method(client):
    assert client.get("/nope").json()["error"]["type"] == "not_found"
    r = client.get("/v1/classify")
    assert r.status_code == 405
    assert r.json()["error"]["type"] == "method_not_allowed"


def test_model_health_docs(client):
    info = client.get("/v1/model").json()
    assert info["classes"] == list(LABELS)
    assert info["method"] == "label_tokens"
    assert info["calibration"]["temperature"] == 1.0
    assert info["base_model"]["model_type"] == "llama"
    assert info["limits"]["max_texts"] == 3
    # How it runs: the dtype chosen and why (conftest pins float32 through $CLASSLM_DTYPE), CPU, versions.
    assert info["run"]["dtype"]["dtype"] == "float32" and info["run"]["dtype"]["source"] == "CLASSLM_DTYPE"
    assert info["run"]["cpu"]["model"] and info["run"]["versions"]["torch"]
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    assert "/v1/classify" in client.get("/openapi.json").json()["paths"]


def test_metrics_count_requests_errors_and_batches(clf):
    with _client(clf) as c:
        c.post("/v1/classify", json={"texts": TEXTS[:3]})
        c.post("/v1/classify", json={"text": TEXTS[3]})
        c.post("/v1/classify", json={"text": 1})
        text = c.get("/metrics").text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert lines['classlm_requests_total{path="/v1/classify",status="200"}'] == "2"
    assert lines['classlm_requests_total{path="/v1/classify",status="422"}'] == "1"
    assert lines['classlm_request_errors_total{path="/v1/classify"}'] == "1"
    assert lines["classlm_texts_classified_total"] == "4"
    assert lines["classlm_batch_size_texts_count"] == "2"  # two scoring calls
    assert lines["classlm_batch_size_texts_sum"] == "4"
    assert lines["classlm_request_latency_seconds_count"] == "3"
    assert lines['classlm_batch_size_texts_bucket{le="+Inf"}'] == "2"


def test_concurrent_http_requests_share_one_scoring_call(clf):
    with _client(clf, max_wait_ms=2000) as c:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda t: c.post("/v1/classify", json={"text": t}), TEXTS))
        text = c.get("/metrics").text
    assert [a.status_code for a in answers] == [200] * 4
    for t, a in zip(TEXTS, answers):  # each caller got the answer for its own text
        got = list(a.json()["results"][0]["probabilities"].values())
        np.testing.assert_allclose(got, clf.predict_proba([t])[0], atol=1e-6)  # batched vs alone: fp32 noise
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines["classlm_batch_size_texts_count"]) < 4  # fewer scoring calls than requests


def test_serve_cli_errors_are_one_line(tiny_model_dir, capsys, monkeypatch):
    from classlm.cli import main

    for argv, message in (
        (["serve", str(tiny_model_dir)], "no classes given"),
        (["serve", "no/such/run-or-model/anywhere", "--labels", "a,b"], "unknown model"),
        (["serve", str(tiny_model_dir), "--labels", "a,b", "--max-texts", "100", "--max-queue", "10"], "max_queue"),
    ):
        monkeypatch.setattr(sys, "argv", ["classlm", *argv])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_api_key(clf):
    with _client(clf, api_key="s3cret") as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.post("/v1/classify", json={"text": "a"}, headers=headers)
            assert r.status_code == 401
            assert r.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in r.json()["error"]["message"]
        assert c.get("/v1/model").status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/health").status_code == 200  # probes need no key
        ok = c.post("/v1/classify", json={"text": "a"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


class _Blocking:
    """A stand-in classifier whose scoring waits for ``release``: lets a test fill the queue."""

    classes_ = np.array(["a", "b"], dtype=object)

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[int] = []

    def predict_proba(self, texts):
        self.release.wait(10)
        self.calls.append(len(texts))
        return np.tile([0.25, 0.75], (len(texts), 1))


def test_full_queue_answers_503_with_retry_after():
    model = _Blocking()
    with _client(model, max_queue_texts=4, max_texts=2, retry_after_s=3) as c:
        batcher = c.app.state.serving["batcher"]
        first = batcher.submit(["x"])  # taken by the worker, which now blocks
        wait_until(lambda: batcher.pending_texts == 0, what="the worker to take the first request")
        held = [batcher.submit(["y", "z"]), batcher.submit(["w", "v"])]  # 4 texts waiting: the queue is full
        r = c.post("/v1/classify", json={"text": "one more"})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "3"
        assert r.json()["error"]["type"] == "queue_full"
        model.release.set()
        assert first.result(5)[0].shape == (1, 2)
        assert [f.result(5)[0].shape for f in held] == [(2, 2), (2, 2)]
        assert 'classlm_rejected_total{reason="queue_full"} 1' in c.get("/metrics").text


def test_scoring_failure_is_a_json_500():
    class Broken(_Blocking):
        def predict_proba(self, texts):
            raise RuntimeError("boom")

    with _client(Broken()) as c:
        r = c.post("/v1/classify", json={"text": "a"})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "internal_error"
    assert error["message"] == "scoring failed (RuntimeError); the server log has the details"
    assert "boom" not in error["message"]  # other clients in the batch must not see one client's details


def test_class_mass_refused_for_methods_without_class_tokens():
    with _client(_Blocking()) as c:
        c.app.state.serving["model"].classifier.release.set()
        r = c.post("/v1/classify", json={"text": "a", "class_mass": True})
    assert r.status_code == 422
    assert "class_mass is only available" in r.json()["error"]["message"]


# -- the micro-batcher ------------------------------------------------------------------------------------------------
def _echo(calls, release: threading.Event | None = None):
    """A scorer whose row i is (len(text), i): each caller can check it got its own rows back. With ``release``, it
    first waits for that event, so a test can hold the worker inside a batch."""

    def score(texts, class_mass):
        if release is not None:
            release.wait(5)
        calls.append(list(texts))
        return np.array([[len(t), i] for i, t in enumerate(texts)], dtype=float), None, np.array([t[-1] for t in texts])

    return score


def test_batcher_merges_concurrent_requests_and_routes_results():
    calls: list[list[str]] = []
    batcher = MicroBatcher(_echo(calls), max_batch_texts=100, max_wait_s=0.3)
    texts = [["a" * (i + 1)] * (1 + i % 3) for i in range(10)]
    futures = [batcher.submit(t) for t in texts]
    results = [f.result(5) for f in futures]
    batcher.close()
    assert len(calls) == 1 and len(calls[0]) == sum(map(len, texts))  # one scoring call for all ten requests
    for t, (rows, none, last_chars) in zip(texts, results):
        assert rows[:, 0].tolist() == [len(x) for x in t]  # each request got its own rows, in its own order
        assert none is None and last_chars.tolist() == [x[-1] for x in t]  # every column is split the same way


def test_batcher_respects_max_batch_and_can_be_turned_off():
    calls: list[list[str]] = []
    batcher = MicroBatcher(_echo(calls), max_batch_texts=4, max_wait_s=0.3)
    texts = [[f"r{r}t{i}" for i in range(3)] for r in range(4)] + [[f"big{i}" for i in range(9)]]
    results = [f.result(5) for f in [batcher.submit(t) for t in texts]]
    batcher.close()
    # No call goes over the cap: requests are split across calls, and every text is scored exactly once.
    assert max(len(c) for c in calls) == 4
    assert sorted(t for c in calls for t in c) == sorted(t for r in texts for t in r)
    for t, (rows, _, last_chars) in zip(texts, results):
        assert rows[:, 0].tolist() == [len(x) for x in t] and last_chars.tolist() == [x[-1] for x in t]  # in order

    calls.clear()
    batcher = MicroBatcher(_echo(calls), max_batch_texts=100, max_wait_s=0.3, batching=False)
    [f.result(5) for f in [batcher.submit(["t"]) for _ in range(5)]]
    batcher.close()
    assert [len(c) for c in calls] == [1] * 5


def test_batcher_close_answers_everything_accepted_then_refuses():
    release = threading.Event()
    calls: list[list[str]] = []
    batcher = MicroBatcher(_echo(calls, release), max_batch_texts=2, max_wait_s=0.0)
    futures = [batcher.submit([f"t{i}"]) for i in range(7)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    wait_until(lambda: not batcher.alive, what="close() to start")
    with pytest.raises(ShuttingDown):
        batcher.submit(["late"])
    release.set()
    closer.join(5)
    assert not closer.is_alive()
    assert all(f.done() and f.exception() is None for f in futures)
    assert sum(len(c) for c in calls) == 7


def test_batcher_queue_bound_and_errors_reach_every_caller():
    release = threading.Event()

    def failing(texts, class_mass):
        release.wait(5)
        raise ValueError("bad batch")

    batcher = MicroBatcher(failing, max_batch_texts=10, max_wait_s=0.05, max_queue_texts=3)
    first = batcher.submit(["a"])
    wait_until(lambda: batcher.pending_texts == 0, what="the worker to take 'a'")
    rest = [batcher.submit(["b", "c"]), batcher.submit(["d"])]
    with pytest.raises(QueueFull, match="limit 3"):
        batcher.submit(["e"])
    release.set()
    for f in [first, *rest]:
        with pytest.raises(ValueError, match="bad batch"):
            f.result(5)
    batcher.close()


def test_batcher_survives_callers_that_gave_up():
    """A handler cancelled while waiting (client gone, shutdown timeout) cancels its future; the worker must skip it
    and keep serving, not die on setting a cancelled future's result."""
    release = threading.Event()
    calls: list[list[str]] = []
    batcher = MicroBatcher(_echo(calls, release), max_batch_texts=10, max_wait_s=0.0)
    first = batcher.submit(["held"])
    wait_until(lambda: batcher.pending_texts == 0, what="the worker to take the first request")
    gone, kept = batcher.submit(["gone"]), batcher.submit(["kept"])
    assert gone.cancel()
    release.set()
    assert first.result(5)[0].shape == (1, 2)
    assert kept.result(5)[0][:, 0].tolist() == [4.0]
    assert ["gone"] not in calls and ["gone", "kept"] not in calls  # the cancelled text was never scored
    assert batcher.submit(["after"]).result(5)[0].shape == (1, 2)  # and the worker lives on
    batcher.close()


def test_client_gone_before_its_body_arrived_is_not_an_error(clf):
    import asyncio

    app = create_app(clf, ServeSettings())
    metrics = app.state.metrics
    sent: list[dict] = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/classify",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    asyncio.run(app(scope, receive, send))
    assert sent == []  # nobody to answer
    text = metrics.render()
    assert 'classlm_requests_total{path="/v1/classify",status="499"} 1' in text
    assert "classlm_request_errors_total{" in text  # 499 >= 400: counted where client errors are, not as 400


def test_settings_validate():
    with pytest.raises(ConfigError, match="max_texts must be a positive integer"):
        ServeSettings(max_texts=0)
    with pytest.raises(ConfigError, match="max_queue_texts"):
        ServeSettings(max_texts=100, max_queue_texts=10)
    with pytest.raises(ConfigError, match="port"):
        ServeSettings(port=70000)
    for key in (" padded ", "clé", ""):
        with pytest.raises(ConfigError, match="api_key"):
            ServeSettings(api_key=key)


# -- a real server process ------------------------------------------------------------------------------------------
def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited early:\n{proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become healthy")


def test_sigterm_answers_accepted_requests_then_exits(clf, tmp_path):
    import httpx

    run = clf.save(tmp_path / "run")
    port = free_port()
    # A long max-wait keeps accepted requests queued when SIGTERM arrives.
    cmd = [sys.executable, "-m", "classlm.cli", "serve", str(run), "--port", str(port), "--max-wait-ms", "5000"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_healthy(port, proc)

        def ask(text):
            return httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"text": text}, timeout=30)

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(ask, t) for t in TEXTS + TEXTS[:2]]

            def queued() -> int:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["queue_texts"]

            wait_until(lambda: queued() == 6, timeout=30, what="all six requests to be queued")
            assert not any(f.done() for f in futures)
            proc.send_signal(signal.SIGTERM)
            answers = [f.result(30) for f in futures]
        assert [a.status_code for a in answers] == [200] * 6
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status is -SIGTERM, after the log
        # line that says the lifespan (and with it the batcher) closed.
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in proc.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
