"""Training checkpoints: everything a run needs to continue, written atomically and read back, with no pickle.

``<run>/checkpoints/step-NNNNNNNN`` holds the trainable tensors (``adapter.safetensors``), the best ones so far
(``best.safetensors``), AdamW's state (``optimizer.safetensors`` plus its JSON rest), the RNG states
(``rng.safetensors``) and the loop's counters (``state.json``). It is written to a dot-named temp folder, fsynced and
renamed into place, so a kill at any point leaves the previous checkpoint whole; only the newest is kept. The run's
evaluation log, ``metrics.jsonl``, lives beside them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from classlm.errors import ArtifactError, ConfigError
from classlm.io import write_text_atomic

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise ArtifactError(
            f"checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]}); it is not this run's"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def start_run(run_dir: Path) -> None:
    """Prepare ``run_dir`` for a fresh run: refuse one holding a checkpoint, drop leftovers and an old metrics log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if has_checkpoints(run_dir):
        raise ConfigError(
            f"{run_dir} already holds a training run's checkpoints; pass resume=True (--resume) to continue "
            "it, or choose a new output folder"
        )
    _remove_leftovers(run_dir)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)


def write_checkpoint(
    run_dir: Path,
    counters: dict[str, Any],
    model: Any,
    best: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    *,
    rng: list[dict[str, torch.Tensor]] | None = None,
) -> None:
    """Checkpoint ``step-<counters["step"]>``: ``model``'s trainable tensors, ``best``, optimizer and RNG states
    (``rng``: each training process's :func:`rng_states`, rank 0 first; default this process's)."""
    from safetensors.torch import save_file

    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".step-tmp-", dir=root))
    try:
        save_file(trainable_state(model), str(tmp / "adapter.safetensors"))
        if best is not None:
            save_file(best, str(tmp / "best.safetensors"))
        opt_tensors, opt_meta = _optimizer_to_flat(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        ranks = rng if rng is not None else [rng_states()]
        # Rank 0's under the plain names (as one process writes them), rank r's under "rank<r>.<name>".
        states = {(f"rank{r}." if r else "") + k: v for r, s in enumerate(ranks) for k, v in s.items()}
        save_file(states, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"state": counters, "optimizer": opt_meta}, indent=1))
        for f in tmp.iterdir():  # the rename below publishes the folder: its files must be on disk first
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, root / f"step-{counters['step']:08d}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in _checkpoint_dirs(root)[:-1]:
        shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(
    run_dir: Path, model: Any, optimizer: torch.optim.Optimizer, *, rank: int = 0, tidy: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, torch.Tensor] | None]:
    """Restore ``model``'s trainable tensors, the optimizer and (training process ``rank``'s) RNG states from the
    newest checkpoint.

    Returns its counters, the evaluation rows logged up to it (later ones are dropped from ``metrics.jsonl`` when
    ``tidy``, the writing process: they will be redone) and the best tensors as of it.
    """
    from safetensors.torch import load_file

    dirs = _checkpoint_dirs(run_dir / CHECKPOINTS)
    if not dirs:
        raise ConfigError(
            f"nothing to resume in {run_dir}: no checkpoint was written yet (they are written every "
            "checkpoint_every steps); start the run again without resume"
        )
    ckpt = dirs[-1]
    meta = json.loads((ckpt / "state.json").read_text())
    load_trainable_state(model, load_file(str(ckpt / "adapter.safetensors")))
    _optimizer_from_flat(optimizer, load_file(str(ckpt / "optimizer.safetensors")), meta["optimizer"])
    _set_rng_states(_rank_states(load_file(str(ckpt / "rng.safetensors")), rank, ckpt))
    counters = meta["state"]
    if tidy:
        _remove_leftovers(run_dir)
    # Evaluations logged after the checkpoint will be redone: drop them so each step appears once. So is the
    # end-of-run baseline row (classlm train writes it again when the resumed run ends).
    history: list[dict[str, Any]] = []
    log = run_dir / METRICS_FILE
    if log.is_file():
        history = [r for r in _read_jsonl(log) if "eval" in r and r["step"] <= counters["step"]]
        if tidy:
            write_text_atomic(log, "".join(json.dumps(r) + "\n" for r in history))
    best = ckpt / "best.safetensors"
    return counters, history, load_file(str(best)) if best.is_file() else None


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished checkpoint, i.e. a run that ``resume`` can continue."""
    return bool(_checkpoint_dirs(Path(run_dir) / CHECKPOINTS))


def _checkpoint_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def _remove_leftovers(run_dir: Path) -> None:
    """Temp files and folders of writes that a kill interrupted (dot-names: never a finished checkpoint)."""
    for folder in (run_dir, run_dir / CHECKPOINTS):
        if folder.is_dir():
            for p in folder.glob(".*tmp*"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def rng_states() -> dict[str, torch.Tensor]:
    """Every generator LoRA dropout may draw from: the CPU one and, where present, each CUDA device's."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _rank_states(states: dict[str, torch.Tensor], rank: int, ckpt: Path) -> dict[str, torch.Tensor]:
    """Training process ``rank``'s generator states out of a checkpoint's (see :func:`write_checkpoint`)."""
    if rank == 0:
        return {k: v for k, v in states.items() if not k.startswith("rank")}
    prefix = f"rank{rank}."
    mine = {k.removeprefix(prefix): v for k, v in states.items() if k.startswith(prefix)}
    if not mine:  # the run started with fewer processes: the update is the same, LoRA dropout's masks are not
        log.warning("%s has no RNG state for rank %d (the run had fewer processes); it uses rank 0's", ckpt, rank)
        return _rank_states(states, 0, ckpt)
    return mine


def _set_rng_states(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[f"cuda{i}"] for i in range(len(states) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # a line cut by a kill mid-write ends the usable log
    return out


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW state as named tensors (safetensors) plus the JSON-able rest: no pickle in checkpoints."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            tensors[f"{idx}.{name}"] = torch.as_tensor(value).detach().clone().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups}


def _optimizer_from_flat(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The evaluation rows of a run's ``metrics.jsonl`` (one per evaluation, in step order)."""
    path = Path(run_dir) / METRICS_FILE
    return _read_jsonl(path) if path.is_file() else []
