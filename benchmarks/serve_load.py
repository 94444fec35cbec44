"""Load test of ``classlm serve``: N concurrent clients on loopback, with micro-batching on and off.

Starts ``classlm serve`` (the default model, zero-shot, the ag_news prompt of the accuracy benchmarks) as a
subprocess on a free loopback port, once with micro-batching and once without. At each concurrency (default 1, 8,
64) every client sends its requests one after another, one ag_news test text per request. Records throughput
(texts/s), latency percentiles, the average micro-batch size (from the server's /metrics), and every failed or lost
request. Writes ``benchmarks/results/serve_load.json`` and ``.md``. Run with ``make bench-serve`` or::

    .venv/bin/python benchmarks/serve_load.py --concurrency 1,8,64 --requests 32,16,4

Traffic goes to 127.0.0.1 only, the number of requests is bounded, and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from classlm.io import write_results
from classlm.machine import machine_block, machine_line

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
PROMPT = json.loads((HERE / "prompts" / "ag_news.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


class Server:
    def __init__(self, batching: bool, args: argparse.Namespace) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The CLI takes {name: description} labels as a .json file.
        fd, name = tempfile.mkstemp(suffix=".json", prefix="classlm-serve-load-")
        with os.fdopen(fd, "w") as fh:
            json.dump(PROMPT["labels"], fh)
        labels = Path(name)
        self.cmd = [
            sys.executable, "-m", "classlm.cli", "serve", args.model,
            "--labels", str(labels), "--instruction", PROMPT["instruction"],
            "--port", str(self.port), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
            "--batching" if batching else "--no-batching", "--log-level", "warning",
        ]  # fmt: skip
        self.labels = labels

    def __enter__(self) -> Server:
        # The server's log goes to a file: a pipe nobody reads would fill up and stall it.
        self.log = tempfile.NamedTemporaryFile("w+", prefix="classlm-serve-load-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"the server exited: {self.log.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("the server did not become healthy in 300 s")

    def __exit__(self, *exc: Any) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.labels.unlink(missing_ok=True)
        self.log.close()


async def run_level(url: str, texts: list[str], concurrency: int, per_client: int) -> dict[str, Any]:
    """Failed: answered with an error or a malformed body. Lost: never answered (connection dropped, timed out)."""
    latencies: list[float] = []
    failures: list[str] = []
    lost: list[str] = []
    answered = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        before = (await client.get("/metrics")).text

        async def one_client(c: int) -> None:
            nonlocal answered
            for r in range(per_client):
                text = texts[(c * per_client + r) % len(texts)]
                t0 = time.perf_counter()
                try:
                    response = await client.post("/v1/classify", json={"text": text})
                except httpx.HTTPError as exc:
                    lost.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - t0)
                try:
                    body = response.json() if response.status_code == 200 else None
                except ValueError:
                    body = None
                results = body.get("results") if isinstance(body, dict) else None
                if not (isinstance(results, list) and len(results) == 1 and "label" in results[0]):
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    answered += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(concurrency)))
        seconds = time.perf_counter() - t0
        after = (await client.get("/metrics")).text
    sent = concurrency * per_client
    calls = metric(after, "classlm_batch_size_texts_count") - metric(before, "classlm_batch_size_texts_count")
    scored = metric(after, "classlm_batch_size_texts_sum") - metric(before, "classlm_batch_size_texts_sum")
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {
        "concurrency": concurrency,
        "requests_per_client": per_client,
        "sent": sent,
        "answered": answered,
        "failed": len(failures),
        "lost": len(lost),
        "failures": (failures + lost)[:5],
        "seconds": round(seconds, 3),
        "texts_per_second": round(answered / seconds, 3),
        "latency_p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1),
        "latency_p95_ms": round(float(np.percentile(lat, 95)) * 1000, 1),
        "latency_p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1),
        "scoring_calls": int(calls),
        "avg_batch_texts": round(scored / calls, 2) if calls else None,
    }


def level_in_child(url: str, texts: list[str], concurrency: int, per_client: int) -> dict[str, Any]:
    return asyncio.run(run_level(url, texts, concurrency, per_client))


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# classlm serve: load test",
        "",
        f"Reproduce: `{doc['command']}`",
        "",
        f"{machine_line(doc['machine'])}; model {doc['model']}, zero-shot, the ag_news "
        f"prompt of the accuracy benchmarks; one ag_news test text per request; clients and server on loopback on "
        f"the same machine, the clients at lower CPU priority (nice 10). Server: max batch {doc['max_batch']} texts, "
        f"max wait {doc['max_wait_ms']} ms.",
        "",
        "| batching | clients | requests | failed | lost | texts/s | p50 ms | p95 ms | p99 ms | avg batch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("on", "off"):
        for row in doc["results"][mode]:
            lines.append(
                f"| {mode} | {row['concurrency']} | {row['sent']} | {row['failed']} | {row['lost']} | "
                f"{row['texts_per_second']:.2f} | {row['latency_p50_ms']:.0f} | {row['latency_p95_ms']:.0f} | "
                f"{row['latency_p99_ms']:.0f} | {row['avg_batch_texts']} |"
            )
    lines += ["", "Throughput gain from micro-batching (texts/s on ÷ off):", ""]
    for c, gain in doc["batching_gain"].items():
        lines.append(f"- {c} clients: {gain:.2f}x")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--concurrency", default="1,8,64", help="Comma-separated client counts.")
    parser.add_argument("--requests", default="32,16,4", help="Requests per client at each concurrency.")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    per_client = [int(r) for r in args.requests.split(",")]
    if len(per_client) != len(levels):
        raise SystemExit("--requests needs one count per --concurrency level")
    test = DATA / "ag_news" / "test.jsonl"
    if not test.is_file():
        raise SystemExit(f"{test} is absent: the load test reads ag_news test texts from ../shared/data")
    texts = [json.loads(line)["text"] for line in test.read_text().splitlines()[:512]]
    command = shlex.join(["python", "benchmarks/serve_load.py", *sys.argv[1:]])
    results: dict[str, list[dict[str, Any]]] = {}
    # The clients share the 2 cores with the server; in a child process at lower priority (nice 10) they take the
    # CPU the server leaves idle instead of competing with it, which is closer to clients on other machines.
    with ProcessPoolExecutor(1, initializer=os.nice, initargs=(10,)) as clients:
        for mode in ("on", "off"):
            with Server(mode == "on", args) as server:
                clients.submit(
                    level_in_child, server.url, texts[:16], 4, 2
                ).result()  # warm-up: first passes are slower
                results[mode] = []
                for c, m in zip(levels, per_client):
                    row = clients.submit(level_in_child, server.url, texts, c, m).result()
                    print(f"batching {mode}, {c} clients: {json.dumps(row)}", flush=True)
                    results[mode].append(row)
    gain = {
        str(on["concurrency"]): round(on["texts_per_second"] / off["texts_per_second"], 3)
        for on, off in zip(results["on"], results["off"])
    }
    doc = {
        "command": command,
        "machine": machine_block("cpu"),
        "model": args.model,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "results": results,
        "batching_gain": gain,
        "no_failed_or_lost": all(r["failed"] == 0 and r["lost"] == 0 for rows in results.values() for r in rows),
    }
    write_results(args.out / "serve_load", doc, to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
