"""Throughput and peak memory: classlm's scoring path against the usual alternatives, same model, same texts; and
how much bf16 / int8 scoring changes a trained classifier's accuracy and calibration.

Writes ``benchmarks/results/throughput.json`` and ``.md``. Run with::

    .venv/bin/python benchmarks/throughput.py --n-texts 256 --rounds 2 --quality-classifier RUN

Variants (``runs[0].variants.<name>``), on the first N ag_news test texts with the default prompt of the accuracy
benchmarks (chat template, 4 classes with one-line descriptions): ``shipped`` (classlm as shipped, dtype auto:
prompt-head KV reuse, length sort, sliced head), ``shipped_fp32``, ``no_reuse``, Hugging Face sequence
classification over the raw text (``seqcls_raw``) and the full prompt (``seqcls_prompt``), ``full_logits``,
``generate`` (generate-and-parse), the compute floors ``floor_fp32`` / ``floor_bf16`` (the backbone over each text's
own tokens only), ``floor_bare_text``, the int8 candidates of ``int8.py`` and llama.cpp's ``llama-server`` through
the remote backend (``llama_server_1``: one request at a time, ``llama_server_4``: 4 concurrent). Each variant runs
in a fresh subprocess so its peak memory is its own. ``quality``: bf16 and each int8 candidate against float32 on the
same trained classifier (``--quality-classifier``). ``training``: the LoRA recipe of ``finetune.py`` on ag_news
trained in float32 and in bf16 on the ``classlm`` command's heap allocator and on glibc's malloc (``recipe_speed.py``:
examples/s, peak RSS, and ``quality.bf16_trained``, the bf16-trained adapter's test macro-F1 minus the
float32-trained one's, both scored in float32), plus training speed
with and without prompt-prefix reuse. Two sweeps compare shipped, no_reuse and floor_fp32 across
numbers of classes and text lengths. ``--merge`` re-runs only the ``--variants``/``--sections`` given and keeps the
rest of the existing JSON. ``--device cuda`` runs the same on random-weight bf16 models of real shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so `python benchmarks/throughput.py` finds zero_shot

import recipe_speed  # noqa: E402
from finetune import N_CALIB, N_EVAL, RECIPE  # noqa: E402
from zero_shot import INSTRUCTION, NEWS_LABELS  # noqa: E402  (the accuracy benchmarks' default prompt)

from classlm import LMClassifier  # noqa: E402
from classlm.config import CPU_BATCH_TOKENS, token_budget  # noqa: E402
from classlm.data import load_dataset  # noqa: E402
from classlm.io import write_results  # noqa: E402
from classlm.machine import machine_block, machine_line  # noqa: E402
from classlm.metrics import softmax  # noqa: E402
from classlm.scoring import SharedPrefix, decoder_of, length_sorted_batches, pad_right  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
try:  # the int8 candidates live beside this file; their packages are optional (pip install -e ".[bench-int8]")
    from int8 import CANDIDATES as INT8  # noqa: E402
    from int8 import make_candidate  # noqa: E402
except ImportError:  # pragma: no cover - int8.py removed
    INT8, make_candidate = {}, None

LLAMA_SERVER = (
    "llama.cpp's llama-server (same GGUF, --parallel 4, prompt cache on, 2 threads) via classlm's remote backend"
)
# name -> (what it is, the dtype it runs in; "auto" is what LMClassifier(dtype="auto") resolves to on this machine)
VARIANTS: dict[str, tuple[str, str]] = {
    "shipped": ("classlm as shipped (dtype auto): prompt-head KV reuse + length sort + sliced head", "auto"),
    "shipped_fp32": ("the same in float32", "float32"),
    "no_reuse": ("classlm without prefix reuse (every row runs head + text + tail)", "auto"),
    "seqcls_raw": ("HF AutoModelForSequenceClassification, raw text, no prompt", "auto"),
    "seqcls_prompt": ("HF AutoModelForSequenceClassification, full prompt text", "auto"),
    "full_logits": ("causal-LM forward, full-vocabulary logits at every position", "auto"),
    "generate": ("generate the answer, parse it back to a class", "auto"),
    "floor_fp32": (
        "compute floor, float32: backbone over each text's own tokens (text + answer tail, the tokens shipped runs), "
        "no prompt",
        "float32",
    ),
    "floor_bf16": ("the same compute floor in bf16", "bfloat16"),
    "floor_bare_text": ("for reference: backbone over the bare text tokens only (no tail either)", "auto"),
    **{name: (what, "float32") for name, what in INT8.items()},
    "llama_server_1": (f"{LLAMA_SERVER}, one request at a time", "gguf"),
    "llama_server_4": (f"{LLAMA_SERVER}, 4 requests in flight", "gguf"),
}
# The variants whose class logits are kept for the checks (same texts, same order).
KEEP_RESULT = ("shipped", "shipped_fp32", "no_reuse", "full_logits", "generate", "llama_server_1", *INT8)
CLASS_SWEEP = ("sms_spam", "ag_news", "emotion", "trec_fine", "clinc150")
Fn = Callable[[list[str]], np.ndarray]


def budget(clf: LMClassifier) -> int | None:
    """The padded tokens per pass ``clf`` scores with (its batch_tokens, "auto" resolved for its dtype)."""
    return token_budget(clf.batch_tokens, clf.backbone_)


# -- variants: each returns a function scoring a list of texts, and a note on what it does -----------------------------
def at_last(x: torch.Tensor, batch: list[list[int]]) -> torch.Tensor:
    """``x[i, len(batch[i]) - 1]`` for every row: the value at each row's last real token (right padding)."""
    last = torch.as_tensor([len(r) - 1 for r in batch], device=x.device)
    return x[torch.arange(len(batch), device=x.device), last]


def classlm_variant(clf: LMClassifier, reuse: bool) -> tuple[Fn, str]:
    def run(texts: list[str]) -> np.ndarray:
        clf.method_.reuse_prefix = reuse
        return clf.predict_scores(texts).logits

    batching = f"length-sorted, <= {clf.batch_size} texts and <= {budget(clf)} padded tokens per pass"
    if reuse:
        return run, (
            f"LMClassifier.predict_scores as shipped ({batching}); the prompt head's keys/values are computed in the "
            "warm-up and kept, as in a long-lived classifier (their one-off cost is reported separately)"
        )
    return run, f"predict_scores with method_.reuse_prefix = False ({batching})"


def given_order(rows: list[list[int]], batch_size: int) -> Iterator[tuple[np.ndarray, list[list[int]]]]:
    """Batches of ``batch_size`` in the order given: the usual loop, with no sorting."""
    for start in range(0, len(rows), batch_size):
        idx = np.arange(start, min(start + batch_size, len(rows)))
        yield idx, rows[start : start + batch_size]


def seqcls_variant(clf: LMClassifier, prompt: bool, batch_size: int) -> tuple[Fn, str]:
    from transformers import AutoModelForSequenceClassification

    bb = clf.backbone_
    tok = copy.deepcopy(bb.tokenizer)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    config = copy.deepcopy(bb.model.config)
    config.num_labels, config.pad_token_id = len(clf.classes_), tok.pad_token_id
    with torch.device("meta"):  # no weights allocated: the causal LM's own decoder is plugged in below
        model = AutoModelForSequenceClassification.from_config(config)
    setattr(model, model.base_model_prefix, decoder_of(bb.model))
    model.score = torch.nn.Linear(config.hidden_size, config.num_labels, bias=False, device=bb.device, dtype=bb.dtype)
    model.eval()
    assert not any(p.is_meta for p in model.parameters())
    render = clf.method_.rendered.format

    def run(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = [render(t.strip()) if prompt else t for t in texts[start : start + batch_size]]
            enc = tok(chunk, padding=True, truncation=True, max_length=clf.max_length, return_tensors="pt")
            out.append(model(**enc.to(bb.device)).logits.float().cpu())
        return torch.cat(out).numpy()

    what = "the full prompt" if prompt else "the raw text, no prompt"
    return run, (
        f"{type(model).__name__} over {what}, batches of {batch_size} in the given order, tokenizer padding "
        f"({tok.padding_side}); "
        "shares the causal LM's decoder (same weights), random score head (speed only)"
    )


def full_logits_variant(clf: LMClassifier, batch_size: int) -> tuple[Fn, str]:
    bb, method = clf.backbone_, clf.method_
    ids = torch.as_tensor(method.tokens.first_ids, device=bb.device)

    def run(texts: list[str]) -> np.ndarray:
        rows = method.encoder.encode(texts).ids
        out = np.zeros((len(texts), len(ids)), dtype=np.float32)
        for idx, batch in given_order(rows, batch_size):
            input_ids, mask = pad_right(batch, bb.tokenizer.pad_token_id, bb.device)
            logits = bb.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits  # (b, L, V)
            out[idx] = at_last(logits, batch)[:, ids].float().cpu().numpy()
        return out

    return run, (
        f"model(...).logits on the full prompts, batches of {batch_size} in the given order, class logits at the last "
        "token"
    )


def generate_variant(clf: LMClassifier, batch_size: int) -> tuple[Fn, str]:
    bb, method = clf.backbone_, clf.method_
    left = copy.deepcopy(bb.tokenizer)
    left.padding_side = "left"  # batched generation needs every row to end at the same position
    n = max(len(s) for s in method.tokens.sequences)
    answers = [s.strip() for s in method.tokens.strings]
    examples: list[str] = []

    def parse(text: str) -> int:
        hits = [i for i, a in enumerate(answers) if text.strip().startswith(a)]
        return max(hits, key=lambda i: len(answers[i])) if hits else -1

    def run(texts: list[str]) -> np.ndarray:
        rows = method.encoder.encode(texts).ids
        out = np.full(len(texts), -1, dtype=np.int64)
        examples.clear()
        for idx, batch in given_order(rows, batch_size):
            enc = left.pad({"input_ids": batch}, padding=True, return_tensors="pt").to(bb.device)
            gen = bb.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=bb.tokenizer.pad_token_id)
            decoded = left.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out[idx] = [parse(d) for d in decoded]
            examples.extend(decoded)
        return out

    run.examples = examples  # type: ignore[attr-defined]  # the continuations of the last pass, for the report

    return run, (
        f"model.generate(max_new_tokens={n}, greedy) on the full prompts, batches of {batch_size} in the given order, "
        "left padding; "
        "the continuation is parsed back to a class by prefix match"
    )


def floor_variant(clf: LMClassifier, tail: bool) -> tuple[Fn, str]:
    bb, method = clf.backbone_, clf.method_
    decoder = decoder_of(bb.model)
    head = len(method.encoder.head_ids)

    def run(texts: list[str]) -> np.ndarray:
        if tail:  # exactly the rows (a) runs after its shared prefix
            rows = [r[head:] for r in method.encoder.encode(texts).ids]
        else:
            rows = bb.tokenizer([t.strip() for t in texts], add_special_tokens=False).input_ids
            rows = [r[: method.encoder.text_budget] or [bb.tokenizer.pad_token_id] for r in rows]
        out = []
        for idx in length_sorted_batches([len(r) for r in rows], clf.batch_size, budget(clf)):
            batch = [rows[i] for i in idx]
            input_ids, mask = pad_right(batch, bb.tokenizer.pad_token_id, bb.device)
            h = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
            out.append(at_last(h, batch).float().cpu())
        return torch.cat(out).numpy()

    what = "text + answer tail (the tokens (a) runs per text)" if tail else "the bare text tokens"
    return run, f"decoder_of(model) over {what}, no prompt head, same batching as (a), hidden state at the last"


def llama_server_variant(url: str, concurrency: int) -> tuple[Fn, str]:
    from classlm import RemoteClassifier

    remote = RemoteClassifier(
        url,
        "smollm2",
        NEWS_LABELS,
        instruction=INSTRUCTION,
        tokenizer="smollm2-135m",  # the local default's chat template: the same prompt tokens
        calibration="none",
        concurrency=concurrency,
    ).fit()

    def run(texts: list[str]) -> np.ndarray:
        return remote.predict_scores(texts).logits

    return run, (
        f"RemoteClassifier(concurrency={concurrency}) against llama-server on loopback: /v1/completions, one text per "
        "request, the top-20 log-probabilities of the next token read for the class tokens"
    )


def make_variant(name: str, clf: LMClassifier, baseline_batch: int = 16) -> tuple[Fn, str]:
    """Variant ``name`` on ``clf``; the usual ways (seqcls, full_logits, generate) run fixed batches of
    ``baseline_batch`` in the given order."""
    makers: dict[str, Callable[[], tuple[Fn, str]]] = {
        "shipped": lambda: classlm_variant(clf, reuse=True),
        "shipped_fp32": lambda: classlm_variant(clf, reuse=True),
        "no_reuse": lambda: classlm_variant(clf, reuse=False),
        "seqcls_raw": lambda: seqcls_variant(clf, prompt=False, batch_size=baseline_batch),
        "seqcls_prompt": lambda: seqcls_variant(clf, prompt=True, batch_size=baseline_batch),
        "full_logits": lambda: full_logits_variant(clf, baseline_batch),
        "generate": lambda: generate_variant(clf, baseline_batch),
        "floor": lambda: floor_variant(clf, tail=True),
        "floor_fp32": lambda: floor_variant(clf, tail=True),
        "floor_bf16": lambda: floor_variant(clf, tail=True),
        "floor_bare_text": lambda: floor_variant(clf, tail=False),
    }
    if name in INT8:
        assert make_candidate is not None
        return make_candidate(name, clf)
    return makers[name]()


# -- timing and memory -------------------------------------------------------------------------------------------------
def time_passes(
    fn: Fn, texts: list[str], batch_size: int, rounds: int, warmup: bool = True
) -> tuple[list[float], np.ndarray]:
    """One warm-up batch, then ``rounds`` full passes; the seconds of every pass and the last pass's result."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    seconds, result = [], np.zeros(0)
    with torch.inference_mode():
        if warmup:
            fn(texts[:batch_size])
        sync()
        for _ in range(rounds):
            t0 = time.perf_counter()
            result = fn(texts)
            sync()
            seconds.append(time.perf_counter() - t0)
    return seconds, result


def proc_status_mib(key: str, pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_memory_peak(device: str) -> dict[str, Any]:
    """Start the variant's own peak here (Linux: VmHWM is reset through clear_refs); returns the memory now."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return {"warm_cuda_mib": torch.cuda.memory_allocated() / 2**20}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    return {"warm_rss_mib": proc_status_mib("VmRSS"), "_hwm_reset": reset}


def memory_peak(device: str, mark: dict[str, Any]) -> dict[str, Any]:
    if device == "cuda":
        return {**mark, "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20}
    run_peak = proc_status_mib("VmHWM") if mark.pop("_hwm_reset") else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {**mark, "peak_rss_mib": peak, "run_peak_rss_mib": run_peak}


# -- one variant in this process (the --child side) --------------------------------------------------------------------
def news_texts(n: int) -> list[str]:
    return list(load_dataset(DATA / "ag_news", split="test", label_col=None, require_labels=False, limit=n).texts)


def news_classifier(args: argparse.Namespace, model: str, dtype: str = "auto") -> LMClassifier:
    # The shipped batching: the baselines' fixed batch is --batch-size.
    return LMClassifier(model=model, labels=NEWS_LABELS, instruction=INSTRUCTION, device=args.device, dtype=dtype).fit(
        []
    )


def child(args: argparse.Namespace) -> dict[str, Any]:
    texts = news_texts(args.n_texts)
    name, dtype = args.child, VARIANTS[args.child][1]
    clf = None
    if dtype == "gguf":
        fn, note = llama_server_variant(args.server_url, 4 if name.endswith("_4") else 1)
    else:
        clf = news_classifier(args, args.model, dtype)
        fn, note = make_variant(name, clf, args.batch_size)
    with torch.inference_mode():
        fn(texts[: args.batch_size])  # warm-up; it also pages in the weights (safetensors are memory-mapped)
    mark = reset_memory_peak(args.device)
    seconds, result = time_passes(fn, texts, args.batch_size, args.rounds, warmup=False)
    out: dict[str, Any] = {
        "texts_per_second": len(texts) / min(seconds),
        **(prefix_cost(clf, len(texts), min(seconds)) if name == "shipped" and clf is not None else {}),
        "seconds": seconds,
        **memory_peak(args.device, mark),
        "notes": note,
        "torch_threads": torch.get_num_threads(),
        "dtype": str(clf.backbone_.dtype).removeprefix("torch.") if clf is not None else "llama.cpp (Q4_1 GGUF)",
    }
    if clf is not None:
        out["prompt_tokens"] = clf.method_.describe()["prompt_tokens"]
        out["dtype_choice"] = clf.run_info()["dtype"]
    if name in KEEP_RESULT:
        out["result"] = result.tolist()
    if hasattr(fn, "examples"):
        out["examples"] = fn.examples[:5]
    return out


def prefix_seconds(clf: LMClassifier) -> float:
    """The one-off cost (a) pays when its prompt head is new or the weights changed."""
    bb = clf.backbone_
    with torch.inference_mode():
        t0 = time.perf_counter()
        SharedPrefix(bb.model, clf.method_.encoder.head_ids, bb.device)
        return time.perf_counter() - t0


def prefix_cost(clf: LMClassifier, n: int, seconds: float) -> dict[str, float]:
    """The prefix's one-off cost, and the texts/s of a pass of ``n`` texts in ``seconds`` that also pays it."""
    once = prefix_seconds(clf)
    return {"prefix_seconds": once, "cold_texts_per_second": n / (seconds + once)}


def spawn(args: argparse.Namespace, variant: str, model: str, server_url: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--model", model]
    cmd += ["--device", args.device, "--n-texts", str(args.n_texts), "--batch-size", str(args.batch_size)]
    if server_url is not None:
        cmd += ["--server-url", server_url]
    proc = subprocess.run([*cmd, "--rounds", str(args.rounds)], stdout=subprocess.PIPE, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"child exited with {proc.returncode} (its stderr is above)", "notes": VARIANTS[variant][0]}
    return json.loads(lines[-1])


# -- sweeps (in this process) ------------------------------------------------------------------------------------------
def texts_per_second(clf: LMClassifier, texts: list[str], rounds: int) -> dict[str, float]:
    out = {}
    for v in ("shipped", "no_reuse", "floor"):  # the floor in the classifier's own dtype
        seconds, _ = time_passes(make_variant(v, clf)[0], texts, clf.batch_size, rounds)
        out[v] = len(texts) / min(seconds)
    clf.method_.reuse_prefix = True
    out["prefix_seconds"] = prefix_seconds(clf)
    return out


def sweep_classifier(names: list[str], args: argparse.Namespace, model: str) -> tuple[LMClassifier, str]:
    """The shipped zero-shot classifier for ``names`` (scoring="auto" handles names that share first tokens)."""
    clf = LMClassifier(labels=names, model=model, device=args.device).fit([])
    return clf, f"class names, scoring {clf.scoring_}"


def class_sweep(args: argparse.Namespace, model: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in CLASS_SWEEP:
        folder = DATA / name
        if not (folder / "labels.json").is_file():
            rows.append({"dataset": name, "skipped": f"{folder} has no labels.json"})
            continue
        names = [str(x) for x in json.loads((folder / "labels.json").read_text())]
        n = max(1, args.n_texts // 2)
        texts = list(load_dataset(folder, split="test", label_col=None, require_labels=False, limit=n).texts)
        print(f"  class sweep: {name} ({len(names)} classes)…", file=sys.stderr)
        clf, how = sweep_classifier(names, args, model)
        row: dict[str, Any] = {"dataset": name, "k": len(names), "labels": how, "n_texts": len(texts)}
        tps = texts_per_second(clf, texts, args.rounds)
        rows.append({**row, "prompt_tokens": clf.method_.describe()["prompt_tokens"], "texts_per_second": tps})
    return rows


def length_sweep(args: argparse.Namespace, model: str) -> list[dict[str, Any]]:
    clf = news_classifier(args, model)
    pool = news_texts(3 * args.n_texts)
    ids = clf.backbone_.tokenizer([t.strip() for t in pool], add_special_tokens=False).input_ids
    counts = np.array([len(x) for x in ids])
    rows = []
    for bucket, third in zip(("short", "medium", "long"), np.array_split(np.argsort(counts, kind="stable"), 3)):
        keep = np.sort(third)[: max(1, args.n_texts // 2)]
        print(f"  length sweep: {bucket}…", file=sys.stderr)
        c = counts[keep]
        rows.append(
            {
                "bucket": bucket,
                "n_texts": len(keep),
                "text_tokens": {"mean": float(c.mean()), "min": int(c.min()), "max": int(c.max())},
                "texts_per_second": texts_per_second(clf, [pool[i] for i in keep], args.rounds),
            }
        )
    return rows


def training_speed(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """LoRA training examples/s with and without the shared prefix (same data, seed, batch 16, r=16 all-linear);
    the first step is a warm-up and is not timed."""
    from classlm.labels import LabelSet
    from classlm.training import Trainer

    steps, batch = args.train_steps, 16
    data = load_dataset(DATA / "ag_news", split="train", limit=(steps + 1) * batch)
    assert data.labels is not None
    names = list(NEWS_LABELS)
    y = np.array([names.index(v) for v in data.labels])
    out: dict[str, Any] = {"steps_timed": steps, "batch_size": batch, "lora": "r=16, alpha=32, all attention+MLP"}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    for reuse in (True, False):
        clf = LMClassifier(
            model=model,
            labels=NEWS_LABELS,
            instruction=INSTRUCTION,
            device=args.device,
            lora={},
            train={"max_steps": steps + 1, "batch_size": batch, "eval_every": 0, "reuse_prefix": reuse},
        )
        clf._build(LabelSet.from_spec(NEWS_LABELS), training=True)
        stamps: list[float] = []

        def on_step(event: str, info: dict[str, Any], stamps: list[float] = stamps) -> None:
            if event == "step":
                sync()
                stamps.append(time.perf_counter())

        Trainer(clf.method_, clf.backbone_.model, clf.train_config(), progress=False, callback=on_step).fit(
            list(data.texts), y
        )
        out["with_prefix_reuse" if reuse else "without_prefix_reuse"] = steps * batch / (stamps[-1] - stamps[0])
        out["dtype"] = str(clf.backbone_.dtype).removeprefix("torch.")  # auto, as a user's run would get
        del clf
        gc.collect()
    out["speedup"] = out["with_prefix_reuse"] / out["without_prefix_reuse"]
    return out


# -- llama.cpp's own server, started once for the llama_server variants ------------------------------------------------
@contextlib.contextmanager
def llama_server(args: argparse.Namespace, root: Path) -> Iterator[dict[str, Any]]:
    """``llama-server`` on loopback with the default model's GGUF: ``--parallel 4``, prompt cache on, 2 threads."""
    import httpx

    from classlm.models import find_alias_file

    binary = args.llama_server or str(Path(sys.prefix) / "bin" / "llama-server")
    if not Path(binary).is_file():
        yield {"error": f"{binary} not found: build it with `make llama-server` (or pass --llama-server PATH)"}
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # 4 slots of 1024 tokens each (the prompt and a text fit in ~350); the prompt cache keeps each slot's last
    # prompt, so the shared head is not recomputed.
    cmd = [binary, "-m", str(find_alias_file("smollm2-135m")), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-t", "2", "-c", "4096", "--parallel", "4", "--cache-prompt"]
    log = open(root / "llama-server.log", "w")  # noqa: SIM115 - closed below; a pipe nobody reads would stall it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            yield {"error": f"llama-server did not start: {(root / 'llama-server.log').read_text()[-500:]}"}
            return
        info: dict[str, Any] = {"url": url, "command": " ".join(["llama-server", *cmd[1:]])}
        yield info
        info["server_peak_rss_mib"] = proc_status_mib("VmHWM", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# -- one model: all variants, checks, sweeps ---------------------------------------------------------------------------
def run_model(args: argparse.Namespace, name: str, location: str, root: Path) -> dict[str, Any]:
    variants: dict[str, dict[str, Any]] = {}
    chosen = [v for v in VARIANTS if v in args.variants]
    server: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for v in chosen:
            what, dtype = VARIANTS[v]
            if dtype == "gguf" and not server:
                server = stack.enter_context(llama_server(args, root))
            print(f"[{name}] {v}: {what}…", file=sys.stderr)
            if dtype == "gguf" and "error" in server:
                variants[v] = {"error": server["error"], "notes": what}
                continue
            variants[v] = spawn(args, v, location, server.get("url") if dtype == "gguf" else None)
    if server:
        for v in chosen:
            if VARIANTS[v][1] == "gguf" and "error" not in variants[v]:
                variants[v]["llama_server"] = {k: server.get(k) for k in ("command", "server_peak_rss_mib")}
    return {"model": name, "variants": variants}


def finish_run(run: dict[str, Any], args: argparse.Namespace, location: str) -> dict[str, Any]:
    """Ratios to shipped, the checks between variants' class logits, and the sweeps and training speed."""
    variants = run["variants"]
    results = {v: np.asarray(r.pop("result")) for v, r in variants.items() if "result" in r}
    ratios(run)

    def diff(a: str, b: str, probs: bool = False) -> float | None:
        if a not in results or b not in results:
            return None
        x, y = (softmax(results[a]), softmax(results[b])) if probs else (results[a], results[b])
        return float(np.abs(x - y).max())

    pred = results.get("generate")
    shipped = results.get("shipped")
    parsed = pred[pred >= 0] if pred is not None else np.zeros(0)
    run["checks"] = {
        "shipped_vs_no_reuse_max_abs_diff": diff("shipped", "no_reuse"),
        "shipped_vs_full_logits_max_abs_diff": diff("shipped", "full_logits"),
        "shipped_vs_shipped_fp32_max_abs_prob_diff": diff("shipped", "shipped_fp32", probs=True),
        "shipped_vs_llama_server_1_max_abs_prob_diff": diff("shipped", "llama_server_1", probs=True),
        **{f"{v}_vs_shipped_fp32_max_abs_prob_diff": diff(v, "shipped_fp32", probs=True) for v in INT8},
        "generate_unparseable_share": float(np.mean(pred < 0)) if pred is not None else None,
        "generate_agrees_with_shipped_share": (
            float(np.mean(parsed == shipped.argmax(1)[pred >= 0])) if len(parsed) and shipped is not None else None
        ),
        "generate_examples": variants.get("generate", {}).pop("examples", None),
    }
    run["prompt_tokens"] = variants.get("shipped", {}).get("prompt_tokens")
    if "sweeps" in args.sections:
        run["sweeps"] = {"classes": class_sweep(args, location), "length": length_sweep(args, location)}
        run["sweeps"]["classes_setup"] = SWEEP_SETUP  # how these rows were made (older rows say their own)
    if "training" in args.sections and args.train_steps:
        print(f"[{run['model']}] LoRA training speed…", file=sys.stderr)
        run["training"] = training_speed(args, location)
    return run


def ratios(run: dict[str, Any]) -> None:
    """Each variant's texts/s over shipped's, and shipped's time per text over each floor's (in place)."""
    variants = run["variants"]
    base = variants.get("shipped", {}).get("texts_per_second")
    for r in variants.values():
        r["ratio_to_shipped"] = r["texts_per_second"] / base if base and "texts_per_second" in r else None
    for floor in ("floor_fp32", "floor_bf16"):
        tps = variants.get(floor, {}).get("texts_per_second")
        run[f"shipped_time_per_text_over_{floor}"] = tps / base if tps and base else None


# -- training: the finetune.py recipe in float32 and in bf16 -----------------------------------------------------------
def recipe_training(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """``training`` (examples/s and peak RSS per dtype, same rows and steps) and ``quality.bf16_trained``
    (bf16-trained − float32-trained, both adapters scored in float32 on the same test rows)."""
    out: dict[str, Any] = {
        "recipe": f"benchmarks/finetune.py on ag_news: LoRA r 16, alpha 32, dropout 0, every projection; batch "
        f"{RECIPE['batch_size']}, lr {RECIPE['lr']}, {RECIPE['epochs']} epoch, eval every {RECIPE['eval_every']} "
        f"steps on {N_EVAL} rows, temperature on {N_CALIB}",
        "n_train": args.recipe_rows,
        "peak_rss": "ru_maxrss of the run's own process right after fit (loading, training, evaluations, temperature)",
    }
    # fp32 and bf16 on the allocator the classlm command runs on (tcmalloc where installed); under glibc_malloc the
    # same two on glibc's malloc, for the comparison (classlm.allocator: why it matters).
    for heap in args.recipe_allocators:
        for key, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
            print(f"training: the recipe in {dtype}, {heap} allocator ({args.recipe_rows} rows)…", file=sys.stderr)
            row = recipe_speed.run(dtype, args.recipe_rows, args.quality_rows, seed=0, heap=heap)
            (out if heap == "auto" else out.setdefault("glibc_malloc", {}))[key] = row
    if "fp32" not in out:
        return out, {"error": "no recipe run on the classlm command's allocator (--recipe-allocators has no auto)"}
    fp32, bf16 = out["fp32"], out["bf16"]
    if "error" in fp32 or "error" in bf16:
        return out, {"error": "a recipe run failed: see training"}
    out["bf16_over_fp32_examples_per_second"] = bf16["examples_per_second"] / fp32["examples_per_second"]
    out["machine"] = machine_block(args.device, "auto", training=True) | {"allocator": fp32.get("allocator")}
    a, b = fp32["test_after_temperature"], bf16["test_after_temperature"]
    quality_row = {
        "what": "bf16-trained − float32-trained adapters, same recipe and rows, both scored in float32",
        "n_test": bf16["n_test"],
        "macro_f1_fp32_trained": a["macro_f1"],
        "macro_f1_bf16_trained": b["macro_f1"],
        "macro_f1_delta": b["macro_f1"] - a["macro_f1"],
        "ece_delta": b["ece"] - a["ece"],
        "nll_delta": b["nll"] - a["nll"],
    }
    return out, quality_row


def recipe_lines(t: dict[str, Any], q: dict[str, Any] | None) -> list[str]:
    lines = [
        "",
        f"## LoRA training in float32 and bf16: {t['recipe']}; {t['n_train']} training rows",
        "",
        f"Peak RSS: {t['peak_rss']}.",
        "",
        *([f"Measured on {machine_line(t['machine'])}; reproduce: `{t['command']}`.", ""] if "machine" in t else []),
        "| dtype | allocator | backward math | examples/s | train s | steps | peak RSS MiB | test macro-F1 (scored in "
        "float32) | test ECE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    # bf16_eager: the bf16 run with $CLASSLM_FUSED_BACKWARD=0 where one was made by hand (its command inside)
    for r in (t.get("fp32"), t.get("bf16"), t.get("bf16_eager"), *t.get("glibc_malloc", {}).values()):
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| failed: {r['error'][:200]} | | | | | | | | |")
            continue
        m = r["test_after_temperature"]
        lines.append(
            f"| {r['dtype']} | {r.get('allocator', 'system')} | {r.get('kernels', 'eager')} | "
            f"{r['examples_per_second']:.2f} | "
            f"{r['train_seconds']:.0f} | {r['steps']} | {r['peak_rss_mib'] or float('nan'):.0f} | "
            f"{m['macro_f1']:.4f} | {m['ece']:.4f} |"
        )
    if "command" in t.get("bf16_eager", {}):
        lines += ["", f"The eager bfloat16 row: `{t['bf16_eager']['command']}`."]
    if "bf16_over_fp32_examples_per_second" in t and q:
        lines += [
            "",
            f"bf16 / float32 examples/s: {t['bf16_over_fp32_examples_per_second']:.2f}x; bf16-trained − "
            f"float32-trained macro-F1 {q['macro_f1_delta']:+.4f}, ECE {q['ece_delta']:+.4f} ({q['n_test']} test "
            "rows).",
        ]
    return lines


# -- quality: bf16 and int8 against float32 on one trained classifier --------------------------------------------------
def quality(args: argparse.Namespace) -> dict[str, Any]:
    """Macro-F1 and ECE (after the classifier's own temperature) of bf16 and each int8 candidate, as candidate -
    float32, and the largest probability change, on the same trained classifier and seeded test rows."""
    from classlm.metrics import ece, precision_recall_f1

    test = load_dataset(DATA / "ag_news", split="test").sample(args.quality_rows, seed=0)
    texts = list(test.texts)
    ref = LMClassifier.load(args.quality_classifier, dtype="float32", progress=False)
    names = [str(c) for c in ref.classes_]
    y = np.array([names.index(str(v)) for v in test.labels or []])

    def figures(logits: np.ndarray) -> dict[str, Any]:
        p = ref.probabilities(logits)
        return {"macro_f1": precision_recall_f1(y, p.argmax(1), len(names))["macro_f1"], "ece": ece(y, p), "_p": p}

    print(f"quality: float32 on {len(texts)} rows…", file=sys.stderr)
    with torch.inference_mode():
        base = figures(ref.predict_scores(texts).logits)
    out: dict[str, Any] = {
        "classifier": str(args.quality_classifier),
        "training": {k: v for k, v in (getattr(ref, "training_", None) or {}).items() if k != "history"} or None,
        "temperature": ref.temperature_,
        "dataset": "ag_news test",
        "n_texts": len(texts),
        "sample": f"TextDataset.sample({args.quality_rows}, seed=0): seeded, stratified by class",
        "fp32": {k: v for k, v in base.items() if k != "_p"},
    }
    candidates: dict[str, Callable[[], Fn]] = {}
    for name in args.quality_candidates:
        if name == "bf16":
            candidates[name] = lambda: LMClassifier.load(args.quality_classifier, dtype="bfloat16").predict_scores
        else:
            candidates[name] = lambda name=name: make_candidate(name, ref)[0]  # type: ignore[misc]
    for name, make in candidates.items():
        print(f"quality: {name}…", file=sys.stderr)
        try:
            fn = make()
            with torch.inference_mode():
                z = fn(texts)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is reported, not fatal
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        got = figures(getattr(z, "logits", z))
        out[name] = {
            "macro_f1": got["macro_f1"],
            "ece": got["ece"],
            "macro_f1_delta": got["macro_f1"] - base["macro_f1"],
            "ece_delta": got["ece"] - base["ece"],
            "max_abs_prob_delta": float(np.abs(got["_p"] - base["_p"]).max()),
            "argmax_agreement": float(np.mean(got["_p"].argmax(1) == base["_p"].argmax(1))),
        }
    return out


def cuda_models(args: argparse.Namespace, root: Path) -> list[tuple[str, str]]:
    """Random-weight bf16 models of real shapes, saved with the SmolLM2 tokenizer so LMClassifier loads them."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    ref = LMClassifier(model=args.model, labels=NEWS_LABELS, device="cpu").fit([]).backbone_
    tok = ref.tokenizer
    qwen = Qwen3Config(
        vocab_size=max(151936, len(tok)),  # >= the tokenizer's size, so every SmolLM2 id is valid
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
        max_position_embeddings=40960,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    out = []
    for name, config in ((f"{args.model}-shape", copy.deepcopy(ref.model.config)), ("qwen3-0.6b-shape", qwen)):
        torch.manual_seed(0)
        folder = root / name
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
        tok.save_pretrained(folder)
        out.append((f"{name} (random weights, bf16)", str(folder)))
    return out


# -- report ------------------------------------------------------------------------------------------------------------
def fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


# The speed issues' targets: shipped >= this many times the variant's texts/s (the alternatives run in shipped's
# dtype; floor_fp32 is the float32 floor, llama_server llama.cpp's own quantised model):
SPEEDUP_TARGETS = {
    "seqcls_raw": 1.3,
    "seqcls_prompt": 2.5,
    "generate": 3.0,
    "full_logits": 4.0,
    "floor_fp32": 2.5,
    "llama_server_1": 8.0,
    "llama_server_4": 6.0,
}
# shipped's time per text at most this many times the floor's (the prompt is free), and the bf16 quality bounds.
FLOOR_TARGETS = {"floor_bf16": 1.1}
MANY_CLASSES_FLOOR_TARGET = 1.3
QUALITY_BOUND = 0.005


def target_rows(run: dict[str, Any]) -> list[str]:
    """Markdown rows: each target, this run's figure, met or not; plus the floor's ratio to the variant, the most
    that any exact method, which must run at least the floor's tokens, reaches against it here."""
    tps = {v: r.get("texts_per_second") for v, r in run["variants"].items()}
    floor = tps.get("floor_bf16") or tps.get("floor_fp32")
    rows = []
    for v, want in SPEEDUP_TARGETS.items():
        if tps.get("shipped") and tps.get(v):
            got, ceiling = tps["shipped"] / tps[v], (floor / tps[v] if floor else None)
            rows.append(
                f"| shipped texts/s >= {want}x {v} | {got:.2f}x | {'yes' if got >= want else '**no**'} | "
                f"{fmt(ceiling)}x |"
            )
    for v, want in FLOOR_TARGETS.items():
        ratio = run.get(f"shipped_time_per_text_over_{v}")
        if ratio is not None:
            rows.append(
                f"| shipped time per text <= {want}x {v} | {ratio:.2f}x | {'yes' if ratio <= want else '**no**'} | – |"
            )
    for r in run.get("sweeps", {}).get("classes", []):
        if r.get("dataset") == "clinc150" and "texts_per_second" in r:
            t = r["texts_per_second"]
            got = t["floor"] / t["shipped"]
            rows.append(
                f"| clinc150 (151 classes): shipped time per text <= {MANY_CLASSES_FLOOR_TARGET}x the floor | "
                f"{got:.2f}x | {'yes' if got <= MANY_CLASSES_FLOOR_TARGET else '**no**'} | – |"
            )
    return rows


def quality_lines(q: dict[str, Any]) -> list[str]:
    t = q.get("training") or {}
    lines = [
        "",
        "## Quality: bf16 and int8 scoring against float32, on one trained classifier",
        "",
        f"Classifier `{q['classifier']}` (LoRA, {t.get('n_train', '?')} ag_news training rows; temperature "
        f"{q['temperature']:.3f}, fitted in float32 and used as it is by every row); {q['n_texts']} {q['dataset']} "
        "rows "
        f"({q['sample']}). Deltas are candidate − float32; ECE after that temperature. Bound: |Δ| <= {QUALITY_BOUND}.",
        "",
        "| scoring | macro-F1 | ECE | Δ macro-F1 | Δ ECE | max abs Δp | argmax agreement | within bounds |",
        "|---|---|---|---|---|---|---|---|",
        f"| float32 | {q['fp32']['macro_f1']:.4f} | {q['fp32']['ece']:.4f} | – | – | – | – | – |",
    ]
    for name, r in q.items():
        if not isinstance(r, dict) or name in ("fp32", "training", "bf16_trained"):
            continue
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:200]} | | | | | | |")
            continue
        ok = abs(r["macro_f1_delta"]) <= QUALITY_BOUND and abs(r["ece_delta"]) <= QUALITY_BOUND
        lines.append(
            f"| {name} | {r['macro_f1']:.4f} | {r['ece']:.4f} | {r['macro_f1_delta']:+.4f} | {r['ece_delta']:+.4f} | "
            f"{r['max_abs_prob_delta']:.4f} | {r['argmax_agreement']:.1%} | {'yes' if ok else '**no**'} |"
        )
    return lines


def machine_text(doc: dict[str, Any]) -> str:
    """The machine block's line, and why dtype auto resolved as it did here."""
    return f"{machine_line(doc['machine'])}: {doc['machine']['dtype']['reason']}."


def variant_lines(doc: dict[str, Any], run: dict[str, Any]) -> list[str]:
    cuda = doc["device"] == "cuda"
    mem = "peak CUDA MiB | after warm-up MiB" if cuda else "peak RSS MiB | timed peak RSS MiB"
    lines = [
        "",
        f"## {run['model']} (prompt {run.get('prompt_tokens')} tokens)",
        "",
        f"| variant | dtype | texts/s | ratio to shipped | {mem} | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, r in run["variants"].items():
        what = VARIANTS.get(v, ("",))[0]
        if "error" in r:
            lines.append(f"| **{v}**: {what} | | failed | | | | {r['error']} |")
            continue
        m1, m2 = (r["peak_cuda_mib"], r["warm_cuda_mib"]) if cuda else (r["peak_rss_mib"], r["run_peak_rss_mib"])
        server = r.get("llama_server")
        note = r["notes"] + (
            f"; server: `{server['command']}`, its peak RSS {fmt(server['server_peak_rss_mib'], '.0f')} MiB"
            if server
            else ""
        )
        lines.append(
            f"| **{v}**: {what} | {r.get('dtype', '–')} | {r['texts_per_second']:.2f} | "
            f"{fmt(r.get('ratio_to_shipped'))} | "
            f"{fmt(m1, '.0f')} | {fmt(m2, '.0f')} | {note} |"
        )
    c, shipped = run["checks"], run["variants"].get("shipped", {})
    lines += [
        "",
        f"shipped time per text / floor_fp32's: **{fmt(run.get('shipped_time_per_text_over_floor_fp32'))}**, "
        f"/ floor_bf16's: **{fmt(run.get('shipped_time_per_text_over_floor_bf16'))}**. shipped computes the prompt "
        f"head's keys/values once, in {fmt(shipped.get('prefix_seconds'), '.2f')} s (again only when the weights or "
        f"the prompt change); a pass over these texts that pays it runs at "
        f"{fmt(shipped.get('cold_texts_per_second'))} texts/s.",
        "",
        "Checks: shipped vs no_reuse class logits max abs diff "
        f"{fmt(c.get('shipped_vs_no_reuse_max_abs_diff'), '.1e')}; "
        f"vs full_logits {fmt(c.get('shipped_vs_full_logits_max_abs_diff'), '.1e')}; probabilities vs shipped_fp32 max "
        f"abs diff {fmt(c.get('shipped_vs_shipped_fp32_max_abs_prob_diff'), '.3f')}, vs llama_server_1 "
        f"{fmt(c.get('shipped_vs_llama_server_1_max_abs_prob_diff'), '.3f')}; generate: "
        f"{fmt(c.get('generate_unparseable_share'), '.1%')} unparseable, "
        f"{fmt(c.get('generate_agrees_with_shipped_share'), '.1%')} of the parsed answers equal shipped's argmax; "
        "first "
        f"continuations: {', '.join(repr(x) for x in c.get('generate_examples') or [])}.",
        "",
        "Targets (from the speed issues), this run: the last column is the floor's texts/s (bf16 where measured) over "
        "the variant's, the most that any exact method, which must run at least the floor's tokens, reaches here.",
        "",
        "| target | measured | met | ceiling floor/(x) |",
        "|---|---|---|---|",
        *target_rows(run),
    ]
    return lines


SWEEP_SETUP = "its labels.json names as classes, the default instruction and scoring, dtype auto; floor: the same dtype"


def sweep_lines(doc: dict[str, Any], run: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"### Texts/s vs number of classes (each dataset's first {doc['n_texts'] // 2} test texts; "
        f"{run['sweeps'].get('classes_setup', SWEEP_SETUP)})",
        "",
        "| dataset | classes | answers | prompt tokens | shipped | no_reuse | floor | shipped/no_reuse | "
        "shipped time / floor time | prefix one-off s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in run["sweeps"]["classes"]:
        if "skipped" in r:
            lines.append(f"| {r['dataset']} | {r.get('k', '–')} | skipped: {r['skipped'][:200]} | | | | | | |")
            continue
        t = r["texts_per_second"]
        lines.append(
            f"| {r['dataset']} | {r['k']} | {r['labels']} | {r['prompt_tokens']} | {t['shipped']:.2f} | "
            f"{t['no_reuse']:.2f} | {t['floor']:.2f} | {t['shipped'] / t['no_reuse']:.2f} | "
            f"{t['floor'] / t['shipped']:.2f} | {t['prefix_seconds']:.2f} |"
        )
    lines += [
        "",
        "### Texts/s vs text length (ag_news test, token-count terciles)",
        "",
        "| bucket | texts | text tokens mean (min–max) | shipped | no_reuse | floor | shipped/no_reuse | "
        "shipped time / floor time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in run["sweeps"]["length"]:
        t, k = r["texts_per_second"], r["text_tokens"]
        lines.append(
            f"| {r['bucket']} | {r['n_texts']} | {k['mean']:.0f} ({k['min']}–{k['max']}) | {t['shipped']:.2f} | "
            f"{t['no_reuse']:.2f} | {t['floor']:.2f} | {t['shipped'] / t['no_reuse']:.2f} | "
            f"{t['floor'] / t['shipped']:.2f} |"
        )
    return lines


def training_lines(t: dict[str, Any]) -> list[str]:
    return [
        "",
        f"### LoRA training (ag_news train, batch {t['batch_size']}, {t['lora']}, {t['steps_timed']} timed steps, "
        f"{t.get('dtype', 'float32')})",
        "",
        "| prefix reuse | training examples/s |",
        "|---|---|",
        f"| on (the prompt head runs once per batch, with gradients) | {t['with_prefix_reuse']:.2f} |",
        f"| off (every row runs the whole prompt) | {t['without_prefix_reuse']:.2f} |",
        "",
        f"Speed-up {t['speedup']:.2f}x; the loss and gradients are the plain path's (tests/test_scoring.py, "
        "tests/test_training.py).",
    ]


def auto_tokens(doc: dict[str, Any]) -> str:
    b = doc["shipped_batching"]
    if b["batch_tokens"] != "auto":
        return str(b["batch_tokens"])
    return "auto: " + ", ".join(f"{n} in {d}" for d, n in b["auto_batch_tokens_on_cpu"].items())


def to_markdown(doc: dict[str, Any]) -> str:
    cuda = doc["device"] == "cuda"
    lines = [
        "# Throughput: classlm against the alternatives",
        "",
        f"Reproduce: `{doc['command']}`",
        "",
        f"{machine_text(doc)} {doc['n_texts']} ag_news test texts; shipped, no_reuse and the floors batch as classlm "
        f"ships (length-sorted, <= {doc['shipped_batching']['batch_size']} texts and <= "
        f"{auto_tokens(doc)} padded tokens per pass), the usual ways (seqcls, full_logits, "
        f"generate) in batches of {doc['batch_size']} in the given order, in the same dtype as shipped. One warm-up "
        f"batch then best of {doc['rounds']} passes, each variant in a fresh process. Prompt: chat template, "
        f"instruction {INSTRUCTION!r}, the 4 classes with one-line descriptions. The floors are the least any exact "
        "method runs: the answer is read after the text and the chat template's answer tail, so those tokens must "
        "run; floor_bare_text, the bare text, is shown for reference.",
        "",
        "Peak memory: "
        + (
            "`torch.cuda.max_memory_allocated` over the timed passes (`reset_peak_memory_stats` after the warm-up "
            "batch), so it includes the weights; 'after warm-up' is `memory_allocated` at that point."
            if cuda
            else "process peak RSS (`ru_maxrss`) of the variant's own process, **including Python, torch and the "
            "loaded model**; 'timed peak' is the peak RSS over the timed passes only (VmHWM reset after the warm-up "
            "batch, which pages in the memory-mapped weights), so it too includes the resident model. The "
            "llama_server variants' process is the client; the server's own peak is in the notes."
        ),
    ]
    for run in doc["runs"]:
        lines += variant_lines(doc, run)
        if "training" in run:
            lines += training_lines(run["training"])
        if "sweeps" in run:
            lines += sweep_lines(doc, run)
    if "fp32" in doc.get("quality", {}):
        lines += quality_lines(doc["quality"])
    if "training" in doc:
        lines += recipe_lines(doc["training"], doc.get("quality", {}).get("bf16_trained"))
    return "\n".join(lines) + "\n"


SECTIONS = ("variants", "sweeps", "training", "quality")


def merged(old: dict[str, Any], new: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``new`` laid over ``old``: the variants and sections run now replace theirs, the rest is kept."""
    # A training-only run measured no scoring: the header's command and machine stay those of the scoring rows
    # (the training section carries its own).
    mine = ("runs", "quality", *(("command", "machine") if set(args.sections) <= {"training"} else ()))
    out = {**old, **{k: v for k, v in new.items() if k not in mine}}
    if "quality" in new:  # the quality section replaces the scoring rows; the training section adds bf16_trained
        keep = {"bf16_trained": old["quality"]["bf16_trained"]} if "bf16_trained" in old.get("quality", {}) else {}
        out["quality"] = {**(old.get("quality", {}) if "fp32" not in new["quality"] else keep), **new["quality"]}
    runs = []
    for i, run in enumerate(new["runs"]):
        before = old.get("runs", [])[i] if i < len(old.get("runs", [])) else {"variants": {}}
        combined = {**before, **{k: v for k, v in run.items() if k not in ("variants", "checks") and v is not None}}
        combined["variants"] = {**before.get("variants", {}), **run["variants"]}
        # A check between two variants is replaced only when this run measured both (a None here: it did not).
        old_checks = before.get("checks", {})
        combined["checks"] = {k: old_checks.get(k) if v is None else v for k, v in run.get("checks", {}).items()}
        ratios(combined)
        runs.append(combined)
    out["runs"] = runs
    out["merged"] = [
        *old.get("merged", []),
        {"command": new["command"], "sections": args.sections, "variants": args.variants},
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="CPU: the model; CUDA: its config gives one shape")
    parser.add_argument("--n-texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants to run")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {SECTIONS}")
    parser.add_argument("--train-steps", type=int, default=8, help="timed LoRA steps per variant (0: skip)")
    parser.add_argument(
        "--recipe-rows",
        type=int,
        default=recipe_speed.RECIPE_ROWS,
        help="training rows of the recipe runs (0: skip them)",
    )
    parser.add_argument(
        "--recipe-allocators",
        type=lambda v: tuple(v.split(",")),
        default=("auto", "system"),
        help="comma-separated: auto (the classlm command's, tcmalloc where installed) and/or system (glibc's malloc)",
    )
    parser.add_argument("--quality-classifier", type=Path, help="a trained classifier folder for the quality section")
    parser.add_argument("--quality-rows", type=int, default=1000)
    parser.add_argument(
        "--quality-candidates", default=",".join(["bf16", *INT8]), help="comma-separated, scored against float32"
    )
    parser.add_argument("--llama-server", help="the llama-server binary (default: the venv's, from make llama-server)")
    parser.add_argument("--merge", action="store_true", help="lay these results over the existing JSON")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--server-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    args.sections = [x for x in args.sections.split(",") if x]
    args.quality_candidates = [x for x in args.quality_candidates.split(",") if x]
    unknown = sorted(set(args.variants) - set(VARIANTS)) + sorted(set(args.sections) - set(SECTIONS))
    unknown += sorted(set(args.quality_candidates) - {"bf16", *INT8})
    if unknown:
        sys.exit(
            f"unknown variants/sections/quality candidates {unknown}; variants: {list(VARIANTS)}; sections: "
            f"{list(SECTIONS)}; quality candidates: bf16, {', '.join(INT8)}"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device cuda: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if not (DATA / "ag_news").is_dir():
        sys.exit(f"{DATA / 'ag_news'} not found: this benchmark reads ../shared/data beside the repo")
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    if "quality" in args.sections and args.quality_classifier is None:
        args.sections.remove("quality")
        print("no --quality-classifier: skipping the quality section", file=sys.stderr)
    if "variants" not in args.sections:
        args.variants = []  # e.g. --sections quality --merge: the variants already in the JSON stay as they are
    root = Path(tempfile.mkdtemp(prefix="classlm-throughput-"))
    try:
        models = [(args.model, args.model)] if args.device == "cpu" else cuda_models(args, root)
        runs = [finish_run(run_model(args, name, location, root), args, location) for name, location in models]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    doc: dict[str, Any] = {
        "benchmark": "throughput",
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
        # The threads the variants ran with (each in its own process, with torch's default).
        "machine": machine_block(args.device, "auto", runs[0]["variants"].get("shipped", {}).get("torch_threads")),
        "device": args.device,
        "model": args.model,
        "dataset": "ag_news",
        "n_texts": args.n_texts,
        "batch_size": args.batch_size,
        "shipped_batching": {
            "batch_size": LMClassifier().batch_size,
            "batch_tokens": LMClassifier().batch_tokens,
            "auto_batch_tokens_on_cpu": CPU_BATCH_TOKENS,
        },
        "rounds": args.rounds,
        "instruction": INSTRUCTION,
        "labels": NEWS_LABELS,
        "runs": runs,
    }
    if "quality" in args.sections:
        doc["quality"] = quality(args)
    if "training" in args.sections and args.recipe_rows:
        doc["training"], bf16_trained = recipe_training(args)
        doc["training"]["command"] = doc["command"]
        doc.setdefault("quality", {})["bf16_trained"] = bf16_trained
    path = args.out / "throughput.json"
    if args.merge and path.is_file():
        doc = merged(json.loads(path.read_text()), doc, args)
    write_results(args.out / "throughput", doc, to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
