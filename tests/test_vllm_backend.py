"""classlm classify --backend vllm: the client of vLLM's /classify for a --seq-cls export. Against a stand-in server
that answers /classify as vLLM does (the export run by plain transformers on the token ids it is sent); the real
`vllm serve` check is `make vllm-check` (its own virtualenv, not CI)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from classlm.backends.vllm import VLLMClassifier
from classlm.errors import RemoteError
from classlm.export import PROMPT_FILE, export_seq_cls
from test_cli import run_cli
from test_training import make, toy_data


@pytest.fixture()
def exported(tiny_model_dir, tmp_path):
    X, y = toy_data(3)
    clf = make(tiny_model_dir, max_steps=4).fit(X, y, calib_set=toy_data(1, seed=1))
    return clf, export_seq_cls(clf, tmp_path / "seq")


def serve(folder, broken: bool = False):
    """A /classify like vLLM's pooling runner: ``input`` as token-id lists, ``data[i].probs`` the softmax."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, **body})
            data = []
            for i, ids in enumerate(body["input"]):
                with torch.no_grad():
                    p = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0], -1).tolist()
                data.append({"index": i, "label": None, "probs": p[:-1] if broken else p, "num_classes": len(p)})
            answer = json.dumps({"data": data[::-1]}).encode()  # out of order: the client sorts by index
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}", seen


def test_the_vllm_client_gives_the_classifiers_probabilities(exported):
    clf, folder = exported
    server, url, seen = serve(folder)
    try:
        X = toy_data(2, seed=3)[0]
        remote = VLLMClassifier(url + "/v1", folder, batch_size=3).fit()
        assert list(remote.classes_) == list(clf.classes_)
        np.testing.assert_allclose(remote.predict_proba(X), clf.predict_proba(X), atol=1e-4)
        assert {s["path"] for s in seen} == {"/classify"} and len(seen) == 3  # 8 texts, 3 a request; /v1 dropped
        assert list(remote.predict(X)) == list(clf.predict(X))
    finally:
        server.shutdown()
    prompt = json.loads((folder / PROMPT_FILE).read_text())
    assert all(ids[: len(prompt["head_ids"])] == prompt["head_ids"] for s in seen for ids in s["input"])


def test_cli_classify_backend_vllm(exported, monkeypatch, capsys):
    clf, folder = exported
    server, url, _ = serve(folder)
    try:
        texts = toy_data(1, seed=4)[0]
        args = ["classify", *texts, "--backend", "vllm", "--base-url", url, "--model", folder, "--format", "jsonl"]
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        got = np.array([[r["probabilities"][c] for c in clf.classes_] for r in rows])
        np.testing.assert_allclose(got, clf.predict_proba(texts), atol=1e-4)
        code, _, err = run_cli(monkeypatch, capsys, "classify", "x", "--backend", "vllm", "--base-url", url)
        assert code == 2 and "--seq-cls OUT` folder that vLLM serves" in err and "--model was not given" in err
        code, _, err = run_cli(monkeypatch, capsys, *args, "--labels", "a,b")
        assert code == 2 and "leave --labels out" in err
        # Nothing listening at --base-url: one line that says so, not a traceback.
        dead = ["classify", "x", "--backend", "vllm", "--base-url", "http://127.0.0.1:9", "--model", folder]
        code, _, err = run_cli(monkeypatch, capsys, *dead, "--timeout", "1")
        assert code == 2 and "is a server running at that URL" in err and "Traceback" not in err
    finally:
        server.shutdown()


def test_a_server_answering_the_wrong_classes_is_an_error(exported):
    _, folder = exported
    server, url, _ = serve(folder, broken=True)
    try:
        with pytest.raises(RemoteError, match="is the server serving this export"):
            VLLMClassifier(url, folder).fit().predict_proba(["a text"])
    finally:
        server.shutdown()
