"""The OpenAI-compatible remote backend against a scripted fake server on loopback: matching class tokens by text,
absent classes, retries, timeouts, the concurrency limit and servers without logprobs."""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from classlm import RemoteClassifier
from classlm.backends.openai import OpenAIClient, class_probabilities, top_entries
from classlm.errors import ConfigError, DataError, RemoteError


def _chat_style(top: dict[str, float]) -> dict:
    """The shape llama.cpp uses for completions and OpenAI for chat."""
    entries = [{"token": t, "logprob": lp} for t, lp in top.items()]
    return {
        "choices": [{"text": "", "logprobs": {"content": [{"token": entries[0]["token"], "top_logprobs": entries}]}}]
    }


def _legacy(top: dict[str, float]) -> dict:
    return {"choices": [{"text": "", "logprobs": {"tokens": [next(iter(top))], "top_logprobs": [top]}}]}


class FakeServer:
    """A loopback HTTP server answering from ``script``: a callable (request number, payload) -> (status, body,
    headers, delay)."""

    def __init__(self, script) -> None:
        self.script = script
        self.payloads: list[dict] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    n = len(outer.payloads)
                    outer.payloads.append(payload)
                    outer.paths.append(self.path)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                done = False
                try:
                    status, body, headers, delay = outer.script(n, payload)
                    time.sleep(delay)
                    data = body if isinstance(body, bytes) else json.dumps(body).encode()
                    # Out of flight before the answer leaves: once the client has it, it may send its next
                    # request at once, before a decrement after the write would have run (the count read 3 of 2).
                    with lock:
                        outer.in_flight -= 1
                        done = True
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    if not done:
                        with lock:
                            outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


TOP = {" positive": math.log(0.6), " negative": math.log(0.3), " the": math.log(0.05)}


def ok(top=TOP, delay=0.0):
    return lambda n, payload: (200, _chat_style(top), {}, delay)


def _remote(url, **kw):
    kw.setdefault("max_retries", 3)
    return RemoteClassifier(url, "m", ["negative", "positive"], calibration="none", **kw).fit()


# -- matching by text -----------------------------------------------------------------------------------------------
def test_longest_unambiguous_prefix_is_the_class_token():
    entries = [(" S", math.log(0.3)), (" Sports", math.log(0.2)), (" Sci", math.log(0.1)), (" World", math.log(0.05))]
    answers = (" World", " Sports", " Sci/Tech")
    probs, missing, absent = class_probabilities(entries, answers)
    # " S" starts both Sports and Sci/Tech: it tells them nothing apart, so it counts for neither.
    np.testing.assert_allclose(probs, [0.05, 0.2, 0.1])
    assert (missing, absent) == (0.0, 0)


def test_absent_classes_share_the_remainder_capped_by_the_smallest_top_k():
    # top-k holds 0.9 of the mass; two classes are absent: each gets at most min(0.1 / 2, 0.02) = 0.02.
    entries = [(" a", math.log(0.5)), ("x", math.log(0.38)), ("y", math.log(0.02))]
    probs, missing, absent = class_probabilities(entries, (" a", " b", " c"))
    np.testing.assert_allclose(probs, [0.5, 0.02, 0.02])
    assert absent == 2 and missing == pytest.approx(0.04)
    # With little left over the remainder is the binding bound.
    entries = [(" a", math.log(0.97)), ("x", math.log(0.02))]
    probs, missing, _ = class_probabilities(entries, (" a", " b", " c"))
    np.testing.assert_allclose(probs[1:], [0.005, 0.005], rtol=1e-6)


def test_exact_mode_only_takes_the_first_token_itself():
    # With the tokenizer known, " Sp" is not " Sports"'s first token: the class is absent, and so reported.
    entries = [(" Sp", math.log(0.3)), (" World", math.log(0.2)), ("x", math.log(0.4))]
    probs, missing, absent = class_probabilities(entries, (" World", " Sports"), exact=True)
    assert absent == 1 and probs[0] == pytest.approx(0.2) and missing == pytest.approx(0.1)
    probs, _, absent = class_probabilities(entries, (" World", " Sports"))  # the prefix guess takes " Sp"
    assert absent == 0 and probs[1] == pytest.approx(0.3)


def test_leading_space_must_match_the_prompt():
    entries = [("positive", math.log(0.6)), (" negative", math.log(0.3))]
    probs, _, absent = class_probabilities(entries, ("negative", "positive"))  # chat prompt: no leading space
    assert absent == 1 and probs[1] == pytest.approx(0.6)


def test_both_response_shapes_parse_and_no_logprobs_is_an_error():
    assert top_entries(_chat_style(TOP)) == top_entries(_legacy(TOP)) == list(TOP.items())
    for body in ({"choices": [{"text": "positive"}]}, {"choices": [{"text": "x", "logprobs": None}]}):
        with pytest.raises(RemoteError, match="without logprobs"):
            top_entries(body)
    with pytest.raises(RemoteError, match="no choices"):
        top_entries({"error": "x"})


# -- against the fake server ---------------------------------------------------------------------------------------
def test_completions_request_and_probabilities():
    with FakeServer(ok()) as server:
        clf = _remote(server.url, top_logprobs=7)
        proba = clf.predict_proba(["great film", "awful"])
        scores = clf.predict_scores(["great film"])
    np.testing.assert_allclose(proba, [[1 / 3, 2 / 3]] * 2)
    assert list(clf.classes_) == ["negative", "positive"]
    payload = server.payloads[0]
    assert server.paths[0] == "/v1/completions"
    assert payload["max_tokens"] == 1 and payload["logprobs"] == 7 and payload["model"] == "m"
    assert payload["prompt"].startswith("Classify the text")
    assert sorted("great film" in p["prompt"] for p in server.payloads[:2]) == [False, True]  # sent in any order
    assert payload["prompt"].endswith("Answer:")  # plain prompt: the answer comes with a leading space
    assert scores.class_mass[0] == pytest.approx(0.9) and scores.missing_mass[0] == 0.0


def test_chat_endpoint_sends_messages():
    top = {"positive": math.log(0.2), "negative": math.log(0.7)}
    with FakeServer(ok(top)) as server:
        clf = _remote(server.url, endpoint="chat", top_logprobs=5)
        proba = clf.predict_proba(["meh"])
    payload = server.payloads[0]
    assert server.paths[0] == "/v1/chat/completions"
    assert payload["logprobs"] is True and payload["top_logprobs"] == 5
    assert payload["messages"][-1]["role"] == "user" and payload["messages"][-1]["content"].endswith("meh")
    np.testing.assert_allclose(proba, [[0.7 / 0.9, 0.2 / 0.9]])


def test_retries_429_and_5xx_then_succeeds():
    answers = [(429, {"error": "slow down"}, {"Retry-After": "0"}), (503, {"error": "busy"}, {})]

    def script(n, payload):
        if n < len(answers):
            return (*answers[n], 0.0)
        return 200, _chat_style(TOP), {}, 0.0

    with FakeServer(script) as server:
        clf = _remote(server.url)
        clf.client_.backoff = 0.01
        proba = clf.predict_proba(["x"])
    assert len(server.payloads) == 3
    assert clf.client_.retries == 2
    np.testing.assert_allclose(proba, [[1 / 3, 2 / 3]])


def test_gives_up_after_max_retries_with_the_last_error():
    with FakeServer(lambda n, p: (500, {"error": "kaput"}, {}, 0.0)) as server:
        clf = _remote(server.url, max_retries=2)
        clf.client_.backoff = 0.01
        with pytest.raises(RemoteError, match=r"gave up after 3 attempts; last error: 500: .*kaput"):
            clf.predict_proba(["x"])
    assert len(server.payloads) == 3


def test_client_errors_are_not_retried():
    with FakeServer(lambda n, p: (400, {"error": "logprobs not supported"}, {}, 0.0)) as server:
        clf = _remote(server.url)
        with pytest.raises(RemoteError, match="answered 400: .*logprobs not supported"):
            clf.predict_proba(["x"])
    assert len(server.payloads) == 1


def test_timeout_is_retried_then_reported():
    with FakeServer(ok(delay=1.0)) as server:
        clf = _remote(server.url, timeout=0.2, max_retries=1)
        clf.client_.backoff = 0.01
        with pytest.raises(RemoteError, match="timed out after 0.2s"):
            clf.predict_proba(["x"])
    assert len(server.payloads) == 2


def test_missing_logprobs_is_a_clear_error():
    with FakeServer(lambda n, p: (200, {"choices": [{"text": "positive"}]}, {}, 0.0)) as server:
        clf = _remote(server.url)
        with pytest.raises(RemoteError, match="without logprobs"):
            clf.predict_proba(["x"])


def test_concurrency_limit_holds():
    # The client itself, called from more threads than its limit: only its semaphore can hold the line.
    with FakeServer(ok(delay=0.1)) as server:
        client = OpenAIClient(server.url, concurrency=2)
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: client.post("/completions", {"i": i}), range(12)))
        client.close()
    assert len(server.payloads) == 12
    assert server.max_in_flight == 2


def test_first_error_stops_the_remaining_texts():
    def script(n, payload):
        return (400, {"error": "bad model"}, {}, 0.05)

    with FakeServer(script) as server:
        clf = _remote(server.url, concurrency=2)
        with pytest.raises(RemoteError, match="answered 400"):
            clf.predict_proba([f"text {i}" for i in range(50)])
    assert len(server.payloads) < 10  # the queued texts were dropped, not each sent before the error surfaced


def test_retry_after_as_an_http_date_is_honoured_and_capped():
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    client = OpenAIClient("http://127.0.0.1:9")
    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < client._wait(0, soon) <= 30
    assert client._wait(0, "3600") == 3600.0  # honoured as asked; post() refuses a wait past max_retry_time
    assert client._wait(0, "2") == 2.0
    assert 0 <= client._wait(0, "not a date") <= client.backoff


def test_temperature_is_fitted_on_labelled_data():
    top = {" positive": math.log(0.9), " negative": math.log(0.05)}
    with FakeServer(ok(top)) as server:
        clf = RemoteClassifier(server.url, "m", ["negative", "positive"]).fit(["a", "b", "c"], ["negative"] * 3)
    # Always answering "positive" while the truth is "negative": the fitted temperature flattens the output.
    assert clf.calibrator_.temperature > 1.0


def test_bad_options():
    with pytest.raises(ConfigError, match="base_url must start with http"):
        RemoteClassifier("localhost:8080", "m", ["a", "b"]).fit()
    with pytest.raises(ConfigError, match="method must be one of"):
        RemoteClassifier("http://x", "m", ["a", "b"], method="tfidf").fit()
    with pytest.raises(ConfigError, match="endpoint must be one of"):
        RemoteClassifier("http://x", "m", ["a", "b"], endpoint="embeddings").fit()
    with pytest.raises(ConfigError, match="no classes"):
        RemoteClassifier("http://x", "m").fit()


def test_client_adds_v1_once():
    assert OpenAIClient("http://h:1/").base_url == "http://h:1/v1"
    assert OpenAIClient("http://h:1/v1").base_url == "http://h:1/v1"


def test_cli_classify_with_the_openai_backend(capsys):
    from classlm.cli import app

    with FakeServer(ok()) as server:
        app(
            [
                "classify",
                "--backend",
                "openai",
                "--base-url",
                server.url,
                "--labels",
                "negative,positive",
                "--format",
                "jsonl",
                "nice",
                "nasty",
            ],
            standalone_mode=False,
        )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["nice", "nasty"]
    assert rows[0]["label"] == "positive"
    assert rows[0]["probabilities"]["positive"] == pytest.approx(2 / 3, abs=1e-6)
    assert rows[0]["missing_mass"] == 0.0


# -- deadlines, the retry budget, and answers that are not log-probabilities ------------------------------------------
class DripServer:
    """A loopback server that sends headers promising ``size`` bytes, then one byte every ``every`` s: each read
    gets data long before a read timeout, so only an overall deadline can end the request."""

    def __init__(self, size: int = 1000, every: float = 0.05) -> None:
        self.requests = 0
        stop = self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    for _ in range(size):  # bounded in count, and ended by the test's exit
                        if stop.wait(every):
                            return
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> DripServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_dripping_server_is_stopped_by_the_deadline():
    with DripServer() as server:
        clf = _remote(server.url, timeout=5.0, deadline=0.5, max_retries=1)
        clf.client_.backoff = 0.01
        start = time.monotonic()
        with pytest.raises(RemoteError, match=r"did not complete within the deadline of 0.5 s per request"):
            clf.predict_proba(["x"])
        elapsed = time.monotonic() - start
    assert server.requests == 2  # the deadline is per attempt, and a passed one is retried
    # Two attempts of 0.5 s each, not the 1000 x 0.05 s = 50 s the server would take; generous for a loaded machine.
    assert elapsed < 10


def test_a_long_retry_after_fails_at_once_naming_the_retry_budget():
    with FakeServer(lambda n, p: (429, {"error": "slow down"}, {"Retry-After": "3600"}, 0.0)) as server:
        clf = _remote(server.url, max_retry_time=5.0)
        start = time.monotonic()
        with pytest.raises(RemoteError, match=r"Retry-After: 3600.*retry budget of 5 s, max_retry_time="):
            clf.predict_proba(["x"])
        assert time.monotonic() - start < 4  # failed without sleeping on it
    assert len(server.payloads) == 1


def test_the_retry_budget_bounds_all_attempts():
    with FakeServer(lambda n, p: (503, {"error": "busy"}, {"Retry-After": "0.3"}, 0.0)) as server:
        clf = _remote(server.url, max_retries=100, max_retry_time=1.0)
        with pytest.raises(RemoteError, match="retry budget of 1 s"):
            clf.predict_proba(["x"])
    assert 2 <= len(server.payloads) <= 5  # about 1 s / 0.3 s of attempts, far from 101


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({" positive": 5.0, " negative": 3.0}, r"logprob for token ' positive' is 5, above 0"),
        ({" positive": "-0.5", " negative": -1.0}, r"logprob for token ' positive' is '-0.5' \(str\)"),
        ({" positive": None, " negative": -1.0}, r"is None \(NoneType\)"),
        ({" positive": True, " negative": -1.0}, r"is True \(bool\)"),
        ({" positive": -0.1, " negative": -0.2}, r"add up to a probability of 1.7"),
    ],
)
def test_answers_that_are_not_log_probabilities_are_clear_errors(top, message):
    with FakeServer(ok(top)) as server:
        clf = _remote(server.url)
        with pytest.raises(RemoteError, match=message):
            clf.predict_proba(["x"])
    with pytest.raises(RemoteError, match=message):  # the legacy completions shape is checked the same way
        top_entries(_legacy(top))


def test_a_logprob_of_zero_within_rounding_is_accepted():
    assert top_entries(_chat_style({" positive": 1e-6, " negative": -20.0}))[0] == (" positive", 0.0)


def test_remote_classifier_is_a_scikit_learn_estimator():
    from sklearn.base import clone, is_classifier

    clf = RemoteClassifier("http://127.0.0.1:9", "m", ["negative", "positive"], deadline=7.0, api_key="sk-secret")
    params = clf.get_params()
    assert (
        params["deadline"] == 7.0 and params["labels"] == ["negative", "positive"] and params["api_key"] == "sk-secret"
    )
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == params
    assert not hasattr(twin, "client_")  # nothing derived is built before fit
    assert twin.set_params(max_retry_time=9.0, top_logprobs=5) is twin
    assert (twin.max_retry_time, twin.top_logprobs) == (9.0, 5)
    assert is_classifier(clf)
    assert "sk-secret" not in repr(clf) and "api_key='***'" in repr(clf)
    assert clf.api_key == "sk-secret"  # the repr hid it without changing it
    assert "sk-secret" not in clf._repr_html_()
    with FakeServer(ok()) as server:
        fitted = clone(clf).set_params(base_url=server.url, calibration="none").fit()
        np.testing.assert_allclose(fitted.predict_proba(["x"]), [[1 / 3, 2 / 3]])
        refit = clone(fitted)  # a fitted one clones to an unfitted one with the same parameters
    assert not hasattr(refit, "client_") and refit.get_params() == fitted.get_params()


def test_deadline_options_are_validated():
    for name, value in (("deadline", 0), ("max_retry_time", -1.0), ("timeout", float("inf")), ("deadline", "5")):
        with pytest.raises(ConfigError, match=f"{name} must be a number of seconds > 0"):
            RemoteClassifier("http://x", "m", ["a", "b"], **{name: value}).fit()


def test_remote_classifier_follows_the_scikit_learn_conventions_of_the_local_estimators():
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    with pytest.raises(SklearnNotFittedError):
        RemoteClassifier("http://127.0.0.1:9", "m", ["negative", "positive"]).predict(["x"])
    top = {" 0": math.log(0.25), " 1": math.log(0.5)}
    with FakeServer(ok(top)) as server:
        clf = RemoteClassifier(server.url, "m", None, calibration="none", max_retries=0).fit(["a", "b"], [1, 0])
        # Integer labels give integer classes and predictions; two classes give one decision column, z1 - z0.
        assert clf.classes_.tolist() == [0, 1] and clf.classes_.dtype.kind == "i"
        assert clf.predict(["x"]).tolist() == [1]
        decision = clf.decision_function(["x", "y"])
        assert decision.shape == (2,)
        np.testing.assert_allclose(1 / (1 + np.exp(-decision)), clf.predict_proba(["x", "y"])[:, 1])
        assert clf.score(["x", "y"], [1, 0]) == 0.5
        with pytest.raises(DataError, match="Unknown label type"):
            RemoteClassifier(server.url, "m", None).fit(["a", "b"], [0.5, 1.7])
