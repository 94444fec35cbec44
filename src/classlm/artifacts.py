"""Saving and loading a classifier directory.

A classifier directory is data only: ``classlm.json`` (schema version, base model identity, labels, verbalizers,
class token ids, prompt, method, options, temperature, metrics) and, for a fine-tuned classifier, an adapter folder
in peft's own format, named by the manifest's ``adapter`` field (``PeftModel.from_pretrained(base,
"RUN/adapter-…")`` loads it without classlm). A training run keeps its ``metrics.jsonl``, checkpoints and plots in
the same folder. No pickle, and no class path read from a
file is ever imported: the method is looked up by name in classlm's own registry. Loading re-resolves the class
tokens with the tokenizer and refuses a mismatch, because a different tokenizer would silently read the wrong
LM-head rows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from classlm.artifact_checks import FIX, check_adapter, check_safetensors, check_settings, note_leftovers
from classlm.calibration import TemperatureScaler
from classlm.calibrators import CalibratorChain, calibrator_from_dict
from classlm.config import config_to_dict
from classlm.errors import ArtifactError, ConfigError
from classlm.estimator import NotFittedError
from classlm.io import umask_modes, write_bytes_atomic, write_text_atomic
from classlm.labels import LabelSet
from classlm.priors import check_saved_priors
from classlm.prompts import PromptTemplate

# 2: max_length counts the text's own tokens (in 1 it counted the whole prompt: such manifests load with
# max_prompt_length set to it, which gives the text the same room as before).
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "classlm.json"
ADAPTER = "adapter"
# What a method learned besides LoRA (a head, TF-IDF weights, few-shot pool embeddings): method-<id>.safetensors.
STATE = "method"
# The out-of-scope distance's Gaussians over hidden features (classlm.feature_distance): features-<id>.safetensors.
FEATURES = "features"
# What a training run writes into its folder before the classifier itself is saved there.
RUN_FILES = ("metrics.jsonl", "checkpoints", "train_args.json", "eval.json", "report.html")
# Options that describe how to run, not what was learned: a loader may override them.
RUN_OPTIONS = ("batch_size", "batch_tokens", "device", "dtype", "cache_dir", "progress")
# Everything the manifest's "options" may hold: LMClassifier arguments that are not stored elsewhere in it.
SAVED_OPTIONS = ("model", "scoring", "calibration", "max_length", "max_prompt_length", *RUN_OPTIONS)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("classlm")
    except PackageNotFoundError:
        return "unknown"


def manifest(
    clf: Any,
    metrics: Mapping[str, Any] | None = None,
    adapter: str | None = None,
    state_file: str | None = None,
    state_json: Mapping[str, Any] | None = None,
    features_file: str | None = None,
) -> dict[str, Any]:
    """The JSON document describing a fitted classifier (``state_json``: the JSON half of ``method_.state()``;
    ``features_file``: where ``feature_model_``'s arrays go)."""
    if not hasattr(clf, "method_"):
        raise NotFittedError("only a fitted classifier can be saved; call fit first")
    info = clf.method_.info()
    lora = clf.lora_config()
    return {
        "schema_version": SCHEMA_VERSION,
        "classlm_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": clf.method,
        "options": {
            "model": clf.model,
            "scoring": clf.scoring_,  # resolved ("auto" → the head it chose), so a load scores alike
            "calibration": clf.calibration,
            "max_length": clf.max_length,
            "max_prompt_length": clf.max_prompt_length,
            "batch_size": clf.batch_size,
            "batch_tokens": clf.batch_tokens,
            "dtype": clf.dtype,
        },
        "method_options": clf.method_.options_dict(),
        "base_model": clf.method_.base_identity(),
        "labels": clf.label_set_.to_dict(),
        # Number classes (fit with integer y) come back as numbers; None: the names above are the classes.
        "class_values": (
            None
            if clf.classes_.dtype == object
            else {"values": clf.classes_.tolist(), "dtype": clf.classes_.dtype.name}
        ),
        # Methods that read class tokens (label_tokens, letters, few_shot, generate) record them: load checks them.
        "class_tokens": (
            None
            if info.class_tokens is None
            else {
                "strings": list(info.class_tokens.answers),
                "sequences": [list(s) for s in info.class_tokens.token_ids],
            }
        ),
        "prompt": clf.method_.prompt.to_dict(),
        "rendered_prompt": (
            None
            if info.prompt is None
            else {"head": info.prompt.head, "tail": info.prompt.tail, "chat": info.prompt.chat_template}
        ),
        "method_state": {"file": state_file, "json": dict(state_json or {})},
        "out_of_scope": (None if features_file is None else {"file": features_file, **clf.feature_model_.info()}),
        "calibration": {**clf.calibrator_.to_dict(), **clf.calibration_info_},
        "lora": None if lora is None else config_to_dict(lora),
        "train": None if lora is None else config_to_dict(clf.train_config()),
        "training": {k: v for k, v in getattr(clf, "training_", {}).items() if k != "history"} or None,
        "adapter": adapter,
        "metrics": dict(metrics or {}),
        # How the saving process ran (dtype chosen and why, CPU, versions): a record, never read back as an option.
        "run": clf.run_info(),
    }


def save_classifier(clf: Any, path: str | Path, *, metrics: Mapping[str, Any] | None = None) -> Path:
    """Write the classifier into folder ``path``.

    A fine-tuned classifier's adapter goes to a new folder ``adapter-<id>`` (built under a temp name, then renamed),
    and ``classlm.json``, which names that folder, is replaced last and atomically: until then the previous manifest
    still names the previous, untouched adapter, so a crash at any point leaves a consistent classifier. Older
    adapter folders are removed after. Other files of the folder (a training run's metrics, checkpoints, plots) are
    left alone.
    """
    target = Path(path)
    save_id = uuid.uuid4().hex[:8]
    adapter = f"{ADAPTER}-{save_id}" if clf.lora_config() is not None else None
    tensors, state_json = clf.method_.state() if hasattr(clf, "method_") else ({}, {})
    state_file = f"{STATE}-{save_id}.safetensors" if tensors else None
    feature_model = getattr(clf, "feature_model_", None)
    features_file = f"{FEATURES}-{save_id}.safetensors" if feature_model is not None else None
    doc = manifest(clf, metrics, adapter, state_file, state_json, features_file)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} is a file; a classifier is saved as a folder — choose another path")
    if target.is_dir() and not (target / MANIFEST).is_file():
        foreign = sorted(p.name for p in target.iterdir() if not is_run_entry(p.name))
        if foreign:
            raise ConfigError(
                f"{target} exists and is not a classlm run folder (it holds {foreign[:3]}); refusing to write into it"
            )
    target.mkdir(parents=True, exist_ok=True)
    if adapter is not None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{ADAPTER}.tmp-", dir=target))
        try:
            assert clf.backbone_ is not None  # LoRA implies an LM backbone (checked when the classifier is built)
            clf.backbone_.model.save_pretrained(str(tmp))
            umask_modes(tmp)
            os.rename(tmp, target / adapter)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if state_file is not None:
        from safetensors.numpy import save

        write_bytes_atomic(target / state_file, save({n: _numpy(t) for n, t in tensors.items()}))
    if features_file is not None and feature_model is not None:
        from safetensors.numpy import save

        write_bytes_atomic(target / features_file, save(feature_model.arrays()))
    write_text_atomic(target / MANIFEST, json.dumps(doc, indent=2, allow_nan=False))
    for old in target.iterdir():  # now unreferenced: earlier adapters/states and leftovers of interrupted saves
        if old.name in (adapter, state_file, features_file):
            continue
        if old.is_dir() and old.name.startswith((f"{ADAPTER}-", f".{ADAPTER}.")):
            shutil.rmtree(old, ignore_errors=True)
        elif old.is_file() and old.name.startswith(tuple(f"{p}{k}-" for p in ("", ".") for k in (STATE, FEATURES))):
            old.unlink(missing_ok=True)
    return target


def _numpy(t: Any) -> Any:
    import numpy as np

    if hasattr(t, "detach"):  # a torch tensor; numpy has no bfloat16
        t = t.detach().cpu()
        t = (t.float() if t.is_floating_point() else t).numpy()
    return np.ascontiguousarray(t)


def is_run_entry(name: str) -> bool:
    """Names classlm writes into a run folder (a folder holding anything else is refused as a save target)."""
    own = (".", f"{ADAPTER}-", f"{STATE}-", f"{FEATURES}-")
    return name in (MANIFEST, *RUN_FILES) or name.endswith(".png") or name.startswith(own)


def read_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{path} is not a classlm run folder: {MANIFEST} not found")
    try:
        doc = json.loads(file.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{file} is not valid JSON ({exc}); the folder is corrupt — retrain or restore it") from exc
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if type(version) is not int or version not in READABLE_SCHEMAS:
        raise ArtifactError(
            f"{file}: schema_version {version!r} is not supported by this classlm (it reads {list(READABLE_SCHEMAS)})"
        )
    options = doc.get("options")
    if version == 1 and isinstance(options, dict):
        # schema 1's max_length bounded prompt + text; the same cap on the whole prompt keeps the text's room.
        doc["options"] = {**options, "max_prompt_length": options.get("max_length", 512)}
    return doc


@dataclass(frozen=True)
class SavedClassifier:
    """A run folder's manifest, read and checked: what ``LMClassifier.load`` rebuilds the classifier from."""

    path: Path
    doc: dict[str, Any]
    options: dict[str, Any]  # LMClassifier arguments: model, scoring, …, lora/train for a fine-tuned one
    method: str
    method_options: Any
    labels: LabelSet
    prompt: PromptTemplate
    classes: Any  # the typed classes_, or None when the names are the classes
    calibrator: TemperatureScaler | CalibratorChain
    adapter: Path | None
    state_file: Path | None
    state_json: dict[str, Any]
    saved_tokens: list[list[int]] | None
    features_file: Path | None = None  # the out-of-scope Gaussians' arrays (None: none were fitted)

    @property
    def calibration_info(self) -> dict[str, Any]:
        return {k: v for k, v in self.doc["calibration"].items() if k not in self.calibrator.to_dict()}


def read_classifier(path: str | Path, overrides: Mapping[str, Any]) -> SavedClassifier:
    """Read and check a saved classifier's manifest and the files it names; ``overrides`` may change run options
    only (see ``RUN_OPTIONS``). Nothing is loaded into memory yet but the manifest."""
    root = Path(path)
    doc = read_manifest(root)
    bad = sorted(set(overrides) - set(RUN_OPTIONS))
    if bad:
        raise ConfigError(f"cannot override {bad} when loading; only run options {list(RUN_OPTIONS)} can change")
    try:
        options = dict(doc["options"])
        labels = LabelSet.from_dict(doc["labels"])
        prompt = PromptTemplate.from_dict(doc["prompt"])
        class_tokens = doc["class_tokens"]
        saved_tokens = None if class_tokens is None else [list(s) for s in class_tokens["sequences"]]
        calibrator = calibrator_from_dict(doc["calibration"])
        check_saved_priors(doc["calibration"].get("priors"), len(labels.names))
        method, method_options = doc["method"], doc.get("method_options")
        method_state = doc.get("method_state") or {"file": None, "json": {}}
        state_file, state_json = method_state["file"], dict(method_state.get("json") or {})
        classes = _class_values(doc.get("class_values"), labels.names)
    except (KeyError, TypeError, ValueError, ConfigError, ArtifactError) as exc:
        raise ArtifactError(f"{path}/{MANIFEST} is missing or has a bad field: {exc}") from exc
    adapter = doc.get("adapter")
    check_settings(root / MANIFEST, doc, options, method, method_options, SAVED_OPTIONS, adapter is not None)
    note_leftovers(root, (f".{ADAPTER}.tmp-", f".{STATE}-", f".{MANIFEST}."))
    if adapter is not None:
        # A folder name inside the run, never a path: a manifest must not point the loader elsewhere.
        if not _inside(adapter, ADAPTER) or not (root / adapter / "adapter_config.json").is_file():
            raise ArtifactError(
                f"{path}: the manifest names adapter folder {adapter!r}, which is not a peft adapter folder in {path}"
            )
        check_adapter(root / adapter)
        options["lora"] = doc.get("lora")
        options["train"] = doc.get("train")
    if state_file is not None:
        if not _inside(state_file, STATE) or not (root / state_file).is_file():
            raise ArtifactError(
                f"{path}: the manifest names method state {state_file!r}, which is not a file in {path}"
            )
        check_safetensors(root / state_file)
    features = doc.get("out_of_scope")
    features_file = features.get("file") if isinstance(features, dict) else None
    if features is not None:
        if not _inside(features_file, FEATURES) or not (root / str(features_file)).is_file():
            raise ArtifactError(
                f"{path}: the manifest names out-of-scope features {features_file!r}, which is not a file in {path}"
            )
        check_safetensors(root / str(features_file))
    return SavedClassifier(
        root, doc, {**options, **overrides}, method, method_options, labels, prompt, classes, calibrator,
        None if adapter is None else root / adapter, None if state_file is None else root / state_file,
        state_json, saved_tokens, None if features_file is None else root / str(features_file),
    )  # fmt: skip


def load_feature_model(saved: SavedClassifier) -> Any:
    """The saved out-of-scope Gaussians (:class:`~classlm.feature_distance.FeatureGaussian`), or None."""
    if saved.features_file is None:
        return None
    from safetensors.numpy import load_file

    from classlm.feature_distance import FeatureGaussian

    return FeatureGaussian.from_saved(load_file(str(saved.features_file)), saved.doc["out_of_scope"])


def _inside(name: Any, prefix: str) -> bool:
    """A file name of the run's own kind (``prefix-…``), never a path that could point elsewhere."""
    return isinstance(name, str) and name.startswith(f"{prefix}-") and Path(name).name == name


def restore_method_state(method: Any, saved: SavedClassifier) -> None:
    """Give the prepared method what it learned (``load_state``); check its class tokens against the saved ones,
    since a different tokenizer would silently read the wrong LM-head rows."""
    path = saved.path
    if method.learns_from_data and saved.state_file is None and not saved.state_json:
        raise ArtifactError(f"{path}: method {saved.method!r} learns from data, but the manifest names no saved state")
    if saved.state_file is not None or saved.state_json:
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(saved.state_file)) if saved.state_file is not None else {}
            method.load_state(tensors, saved.state_json)
        except Exception as exc:  # safetensors, numpy and torch each raise their own types for a corrupt state
            raise ArtifactError(
                f"{path}: the saved method state ({saved.state_file}) does not fit method {saved.method!r}: {exc}; "
                f"{FIX}"
            ) from exc
    info = method.info()
    resolved = [] if info.class_tokens is None else [list(s) for s in info.class_tokens.token_ids]
    if saved.saved_tokens is not None and resolved != saved.saved_tokens:
        diffs = [
            f"{name!r}: saved {old} now {new}"
            for name, old, new in zip(saved.labels.names, saved.saved_tokens, resolved)
            if old != new
        ]
        raise ArtifactError(
            f"the tokenizer of {saved.options['model']!r} gives different class token ids than when {path} was "
            f"saved ({'; '.join(diffs[:5])}); load it with the same base model it was trained on "
            f"(saved: {saved.doc.get('base_model', {}).get('name')!r})"
        )


def _class_values(saved: Any, names: tuple[str, ...]) -> Any:
    """The typed classes recorded by ``manifest`` (None: the names are the classes); ValueError if they do not
    match the names."""
    import numpy as np

    if saved is None:
        return None
    dtype = np.dtype(saved["dtype"])
    if dtype.kind not in "biuf":  # only what JSON carries exactly: bools, ints, floats
        raise ValueError(f"class_values: dtype {saved['dtype']!r} is not a number type")
    values = np.array(saved["values"], dtype=dtype)
    if values.shape != (len(names),) or [str(v) for v in values] != list(names):
        raise ValueError(f"class_values {saved['values']!r} do not match the class names {list(names)}")
    return values
