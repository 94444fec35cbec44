"""Saving and loading a classifier directory.

A classifier directory is data only: ``classlm.json`` (schema version, base model identity, labels, verbalizers,
class token ids, prompt, method, options, temperature, metrics) — later also a peft adapter folder and/or
``head.safetensors``. No pickle, and no class path read from a file is ever imported: the method is looked up by name
in classlm's own registry. Loading re-resolves the class tokens with the tokenizer and refuses a mismatch, because a
different tokenizer would silently read the wrong LM-head rows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classlm.calibration import TemperatureScaler
from classlm.errors import ArtifactError, ConfigError, NotFittedError
from classlm.labels import LabelSet
from classlm.prompts import PromptTemplate

if TYPE_CHECKING:
    from classlm.classifier import LMClassifier

SCHEMA_VERSION = 1
MANIFEST = "classlm.json"
# Options that describe how to run, not what was learned: a loader may override them.
RUN_OPTIONS = ("batch_size", "batch_tokens", "device", "dtype", "cache_dir", "progress")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("classlm")
    except PackageNotFoundError:
        return "unknown"


def manifest(clf: LMClassifier, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document describing a fitted classifier."""
    if not hasattr(clf, "method_"):
        raise NotFittedError("only a fitted classifier can be saved; call fit first")
    desc = clf.method_.describe()
    return {
        "schema_version": SCHEMA_VERSION,
        "classlm_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": clf.method,
        "options": {
            "model": clf.model,
            "scoring": clf.scoring,
            "calibration": clf.calibration,
            "max_length": clf.max_length,
            "batch_size": clf.batch_size,
            "batch_tokens": clf.batch_tokens,
            "dtype": clf.dtype,
        },
        "base_model": clf.backbone_.identity(),
        "labels": clf.label_set_.to_dict(),
        "class_tokens": {"strings": desc["answers"], "sequences": desc["token_ids"]},
        "prompt": clf.method_.prompt.to_dict(),
        "rendered_prompt": {"head": desc["prompt_head"], "tail": desc["prompt_tail"], "chat": desc["chat_template"]},
        "calibration": {**clf.calibrator_.to_dict(), **clf.calibration_info_},
        "metrics": dict(metrics or {}),
    }


def save_classifier(clf: LMClassifier, path: str | Path, *, metrics: Mapping[str, Any] | None = None) -> Path:
    """Write the classifier directory atomically: built beside ``path``, then swapped in."""
    target = Path(path)
    doc = manifest(clf, metrics)
    if target.exists() and not (target / MANIFEST).is_file() and any(target.iterdir()):
        raise ConfigError(f"{target} exists and is not a classlm run folder; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=2, allow_nan=False))
        if target.exists():
            # Move the old folder aside first so a crash leaves either the old or the new one in place.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{path} is not a classlm run folder: {MANIFEST} not found")
    try:
        doc = json.loads(file.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{file} is not valid JSON ({exc}); the folder is corrupt — retrain or restore it") from exc
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{file}: schema_version {version!r} is not supported by this classlm (expects {SCHEMA_VERSION})"
        )
    return doc


def load_classifier(path: str | Path, **overrides: Any) -> LMClassifier:
    """Rebuild a saved classifier; ``overrides`` may change run options only (see ``RUN_OPTIONS``)."""
    from classlm.classifier import LMClassifier

    doc = read_manifest(path)
    bad = sorted(set(overrides) - set(RUN_OPTIONS))
    if bad:
        raise ConfigError(f"cannot override {bad} when loading; only run options {list(RUN_OPTIONS)} can change")
    try:
        options = dict(doc["options"])
        labels = LabelSet.from_dict(doc["labels"])
        prompt = PromptTemplate.from_dict(doc["prompt"])
        saved_tokens = [list(s) for s in doc["class_tokens"]["sequences"]]
        calibrator = TemperatureScaler.from_dict(doc["calibration"])
        method = doc["method"]
    except (KeyError, TypeError, ConfigError) as exc:
        raise ArtifactError(f"{path}/{MANIFEST} is missing or has a bad field: {exc}") from exc
    clf = LMClassifier(
        model=options.pop("model"), method=method, labels=labels, prompt=prompt, **{**options, **overrides}
    )
    clf._build(labels)
    resolved = [list(s) for s in clf.method_.describe()["token_ids"]]
    if resolved != saved_tokens:
        diffs = [
            f"{name!r}: saved {old} now {new}"
            for name, old, new in zip(labels.names, saved_tokens, resolved)
            if old != new
        ]
        raise ArtifactError(
            f"the tokenizer of {clf.model!r} gives different class token ids than when {path} was saved "
            f"({'; '.join(diffs[:5])}); load it with the same base model it was trained on "
            f"(saved: {doc.get('base_model', {}).get('name')!r})"
        )
    clf.calibrator_ = calibrator
    clf.calibration_info_ = {k: v for k, v in doc["calibration"].items() if k not in calibrator.to_dict()}
    clf.metrics_ = doc.get("metrics", {})
    return clf
