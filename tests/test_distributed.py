"""Training under ``accelerate launch`` with two processes (CPU, gloo): the same global batch trains as one process
does, only rank 0 writes, and a killed two-process run resumes to the uninterrupted one's adapter."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classlm.distributed import World
from conftest import free_port
from test_cli import CLI_KILL


def test_ranks_split_a_batch_and_an_eval_set_without_gaps_or_overlaps():
    idx = np.arange(11) * 3
    for size in (1, 2, 3, 8):  # 8 ranks for 5 eval rows: some get none
        shards = [World(r, size).shard(idx) for r in range(size)]
        assert sorted(np.concatenate(shards).tolist()) == idx.tolist()
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        spans = [World(r, size).span(5) for r in range(size)]
        assert [i for s in spans for i in range(5)[s]] == [0, 1, 2, 3, 4]  # in rank order: gathering keeps it


def test_one_process_sums_nothing_and_runs_main_first_once():
    import torch

    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    assert World().sum_gradients([p], 1.5) == [1.5] and p.grad.tolist() == [3.0, 3.0]
    calls = []
    World().main_first(lambda: calls.append(1))
    assert calls == [1]


@pytest.fixture()
def news(tmp_path) -> Path:
    texts = {
        "Sports": ["The team won the match.", "Great goal in the last minute.", "A new record in the race."],
        "Business": ["Stocks fell sharply.", "Shares rose on Monday.", "The bank cut rates."],
    }
    rows = [{"text": f"{t} {i}", "label": c} for c, ts in texts.items() for t in ts for i in range(5)]
    random.Random(0).shuffle(rows)
    folder = tmp_path / "news"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# test_cli's kill-after-the-first-checkpoint wrapper, with only rank 1 dying: the launcher then ends rank 0 too.
KILLER = CLI_KILL.replace("    if written:", "    if written and self.world.rank == 1:")
assert KILLER != CLI_KILL


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_a_kill(tiny_model_dir, news, tmp_path):
    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    common = ["train", str(news), "-m", str(tiny_model_dir), "--max-steps", "6", "--train-batch", "8"]
    common += ["--eval-every", "2", "--lora-r", "4", "--lr", "1e-2", "--no-baseline"]

    def classlm(out: Path, *args: str, processes: int = 1, script: Path | None = None):
        program = [str(script)] if script else ["-m", "classlm"]
        launch = [sys.executable, *(program if processes == 1 else [])]
        if processes > 1:  # --multi_gpu is accelerate's torchrun launcher; on a machine without GPUs it runs on CPU
            launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                      str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                      "--main_process_port", str(free_port()), *program]  # fmt: skip
        cmd = [*launch, *common, "--out", str(out), *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    one = classlm(tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = classlm(tmp_path / "two", processes=2)
    assert two.returncode == 0, two.stderr[-3000:]

    def curve(run: Path) -> list[tuple[int, float, float]]:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["train_loss"], r["eval"]["nll"]) for r in rows if "eval" in r]

    # Rank 0 alone wrote the log (two writers would have doubled every row); the curve is one process's.
    assert [s for s, _, _ in curve(tmp_path / "two")] == [0, 2, 4, 6]
    np.testing.assert_allclose(np.array(curve(tmp_path / "two")), np.array(curve(tmp_path / "one")), rtol=1e-4)

    def adapter(run: Path) -> dict:
        doc = json.loads((run / "classlm.json").read_text())
        return load_file(str(run / doc["adapter"] / "adapter_model.safetensors"))

    a, b = adapter(tmp_path / "one"), adapter(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        np.testing.assert_allclose(b[name].numpy(), a[name].numpy(), atol=1e-5, err_msg=name)

    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    killed = classlm(tmp_path / "killed", processes=2, script=killer)  # checkpoints every eval
    assert killed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["step-00000002"]
    assert not (tmp_path / "killed" / "classlm.json").exists()
    resumed = classlm(tmp_path / "killed", "--resume", processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    c = adapter(tmp_path / "killed")
    for name in a:
        np.testing.assert_allclose(c[name].numpy(), b[name].numpy(), atol=1e-6, err_msg=name)
    assert [s for s, _, _ in curve(tmp_path / "killed")] == [0, 2, 4, 6]
