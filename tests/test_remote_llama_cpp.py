"""The remote backend against a server the project did not write: llama.cpp's ``llama-server`` (built by
``make llama-server``) on loopback, with the same SmolLM2 GGUF the local default loads.

Tolerance, and why: both sides read the same Q4_1 weights and the same prompt tokens (checked below), but
llama.cpp multiplies them with activations quantised to 8 bits and keeps keys/values in f16, while the local model
is dequantised to fp32 and computes in fp32. On one ag_news prompt that moved the class tokens' log-probabilities by
0.08–0.25 nats. On the 100 sst2 texts used here we measured argmax agreement 0.98, mean |Δp| 0.016, max |Δp| 0.068,
so the test asks for agreement ≥ 0.95 (the issue's bar), mean |Δp| ≤ 0.03 and max |Δp| ≤ 0.15: about twice the
measured gap, far below what a wrong prompt, space or token match produces (a missing leading space alone moved
the class mass from 0.75 to 0.000, DESIGN.md §6).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, free_port, requires_shared_data, requires_smollm2

pytestmark = [pytest.mark.llama_server, pytest.mark.integration, requires_smollm2, requires_shared_data]

PROMPT = {
    "instruction": "Is the sentiment of this movie review positive or negative?",
    "labels": {"negative": "the review is negative", "positive": "the review is positive"},
}


def find_llama_server() -> str | None:
    for candidate in (
        os.environ.get("CLASSLM_LLAMA_SERVER"),
        str(Path(sys.prefix) / "bin" / "llama-server"),
        shutil.which("llama-server"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    import httpx

    from classlm.models import find_alias_file

    binary = find_llama_server()
    if binary is None:
        message = "llama-server not found: build it with `make llama-server` (or set CLASSLM_LLAMA_SERVER)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run this test, and `make test` builds it")
        pytest.skip(message)
    port = free_port()
    gguf = find_alias_file("smollm2-135m")
    cmd = [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", "2", "-c", "2048", "-np", "1"]
    # Its log goes to a file: llama-server logs every request, and a pipe nobody reads fills up and stalls it.
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    log_file = open(log, "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama-server did not become healthy within 120 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


@pytest.fixture(scope="module")
def texts():
    rows = [json.loads(line) for line in (SHARED_DATA / "sst2" / "test.jsonl").read_text().splitlines()[:100]]
    return [r["text"] for r in rows]


@pytest.fixture(scope="module")
def local_proba(texts):
    from classlm import LMClassifier

    local = LMClassifier(labels=PROMPT["labels"], instruction=PROMPT["instruction"], calibration="none").fit([])
    return local, local.predict_proba(texts)


def _assert_agrees(remote_proba, local_proba):
    """Argmax agreement and |Δp| within the tolerance that the module docstring explains."""
    agree = float(np.mean(remote_proba.argmax(1) == local_proba.argmax(1)))
    diff = np.abs(remote_proba - local_proba)
    mean_diff, max_diff = float(diff.mean()), float(diff.max())
    assert agree >= 0.95, (agree, mean_diff, max_diff)
    assert mean_diff <= 0.03 and max_diff <= 0.15, (agree, mean_diff, max_diff)


def _remote(url, **kwargs):
    from classlm import RemoteClassifier

    return RemoteClassifier(
        url,
        "smollm2",
        PROMPT["labels"],
        instruction=PROMPT["instruction"],
        calibration="none",
        concurrency=1,
        **kwargs,
    ).fit()


def test_same_prompt_tokens(llama_server, local_proba, texts):
    import httpx

    local, _ = local_proba
    prompt = local.method_.rendered.format(texts[0])
    theirs = httpx.post(llama_server + "/tokenize", json={"content": prompt, "add_special": True}, timeout=30).json()
    assert theirs["tokens"] == local.backbone_.tokenizer.encode(prompt)


def test_completions_agree_with_the_local_model(llama_server, local_proba, texts):
    remote = _remote(llama_server, tokenizer="smollm2-135m")  # the same chat template as the local default
    scores = remote.predict_scores(texts)
    assert scores.n_absent.sum() == 0  # both class tokens in the top 20 for every text: no bounds involved
    _assert_agrees(remote.predict_proba(texts), local_proba[1])


def test_chat_endpoint_agrees_with_the_local_model(llama_server, local_proba, texts):
    remote = _remote(llama_server, endpoint="chat")  # llama-server applies the GGUF's own chat template
    _assert_agrees(remote.predict_proba(texts[:40]), local_proba[1][:40])


def test_a_server_teacher_distils_into_a_fast_student(llama_server, local_proba, texts, tmp_path):
    """Issue 28: the remote model as the teacher; its probabilities cached (resumable) and its coverage reported."""
    from classlm import LMClassifier
    from classlm.distill import teacher_probabilities

    remote = _remote(llama_server, tokenizer="smollm2-135m")
    names = list(PROMPT["labels"])
    probs, report = teacher_probabilities(remote, texts[:60], names, cache=tmp_path / "teacher.jsonl", chunk=20)
    assert report["scored"] == 60 and report["missing_mass_mean"] >= 0 and 0 <= report["texts_with_missing_classes"]
    _assert_agrees(probs, local_proba[1][:60])  # the cached probabilities are the server's, in the student's order
    again, report = teacher_probabilities(remote, texts[:60], names, cache=tmp_path / "teacher.jsonl", chunk=20)
    assert report["from_cache"] == 60 and report["scored"] == 0 and np.allclose(again, probs)
    student = LMClassifier(method="tfidf", labels=names, calibration="none")
    student.fit(texts[:60], None, teacher=remote, teacher_cache=tmp_path / "teacher.jsonl")
    assert student.training_["distillation"]["from_cache"] == 60
    assert np.mean(student.predict(texts[:60]) == np.array(names)[probs.argmax(1)]) >= 0.9
