"""Checks that a saved classifier folder holds what loading it needs, as data, before anything reads it.

A damaged or hand-edited run folder must fail as an :class:`~classlm.errors.ArtifactError` that names the file,
says what was expected and how to fix it — not as the KeyError / SafetensorError / TypeError that peft,
safetensors or a constructor would raise further in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from classlm.config import (
    SCORING,
    CalibrationConfig,
    LoraConfig,
    ModelConfig,
    TrainConfig,
    check_run_options,
    config_from_dict,
)
from classlm.errors import ArtifactError, ConfigError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
FIX = "restore the run folder from a copy, or train and save it again"

log = logging.getLogger("classlm.artifacts")  # the loader's logger: what a user turns on to see loading


def check_settings(
    file: Path,
    doc: Mapping[str, Any],
    options: Mapping[str, Any],
    method: Any,
    method_options: Any,
    saved_options: Sequence[str],
    with_lora: bool,
) -> None:
    """Refuse saved settings this classlm cannot use before anything is built: raised later, a bad value would read
    as a mistake in the caller's arguments (a TypeError for an unknown key, a ConfigError for a bad value)."""
    from classlm.methods import get_method

    saved_by = f"saved by classlm {doc.get('classlm_version', '?')}"
    unknown = sorted(map(str, set(options) - set(saved_options)))
    if unknown or "model" not in options:
        raise ArtifactError(
            f"{file}: 'options' has {f'unknown key(s) {unknown}' if unknown else 'no model'} ({saved_by}); "
            f"expected 'model' and some of {list(saved_options[1:])}: load it with the classlm version that saved "
            f"it, or {FIX}"
        )
    try:
        get_method(method).parse_options(method_options)
        ModelConfig(name=options["model"], **{k: options[k] for k in ModelConfig.__dataclass_fields__ if k in options})
        check_run_options(
            max_length=options.get("max_length", 512),
            batch_size=options.get("batch_size", 64),
            batch_tokens=options.get("batch_tokens"),
            max_prompt_length=options.get("max_prompt_length"),
        )
        if options.get("scoring", "first_token") not in SCORING:
            raise ConfigError(f"scoring must be one of {SCORING}, got {options['scoring']!r}")
        CalibrationConfig(method=options.get("calibration", "temperature"))
        if with_lora:
            config_from_dict(LoraConfig, doc.get("lora"))  # type: ignore[arg-type]  # checked: a dict or an error
            if doc.get("train") is not None:
                config_from_dict(TrainConfig, doc["train"])
    except (ConfigError, TypeError) as exc:
        raise ArtifactError(
            f"{file}: a saved setting is not valid here ({exc}; {saved_by}): load it with that classlm version, "
            f"or {FIX}"
        ) from exc


def note_leftovers(folder: Path, prefixes: tuple[str, ...]) -> None:
    """A save killed half-way leaves ``.adapter.tmp-*`` / ``.<file>.*.tmp`` beside the manifest, which names none of
    them. Ignored here, not removed: a save running right now in another process may own them; the next save into
    the folder removes them."""
    for entry in folder.iterdir():
        if entry.name.startswith(prefixes):
            log.debug("%s: ignoring %s, left by an interrupted save (the next save removes it)", folder, entry.name)


def check_adapter(folder: Path) -> None:
    """The adapter folder holds what peft needs, as data: peft would raise KeyError/SafetensorError tracebacks, and
    falls back to unpickling ``adapter_model.bin`` when the safetensors file is absent."""
    config = folder / "adapter_config.json"
    try:
        conf = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        conf = exc
    if not isinstance(conf, dict) or not isinstance(conf.get("peft_type"), str):
        got = f"unreadable JSON ({conf})" if isinstance(conf, Exception) else f"{json.dumps(conf)[:80]}"
        raise ArtifactError(
            f"{config}: expected peft's adapter config, a JSON object with 'peft_type' (\"LORA\"), got {got}; {FIX}"
        )
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = " (only a pickled adapter_model.bin, which classlm never loads)" if any(folder.glob("*.bin")) else ""
        raise ArtifactError(f"{folder}: the adapter weights {ADAPTER_WEIGHTS} are missing{pickled}; {FIX}")
    check_safetensors(weights)


def check_safetensors(file: Path) -> None:
    """A complete safetensors file (its header parses and covers the whole file), else an ArtifactError saying what
    the file is instead. Reads the header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy"):
            return
    except (SafetensorError, OSError) as exc:
        problem = exc
    with open(file, "rb") as fh:
        head = fh.read(4)
    if head[:1] == b"\x80" or head == b"PK\x03\x04":  # pickle's PROTO opcode; torch.save's zip container
        found = "pickled data (pickle / torch.save), which classlm never loads"
    elif not head:
        found = "an empty file"
    else:
        found = f"a truncated or damaged file ({problem})"
    raise ArtifactError(f"{file}: expected a safetensors file, found {found}; {FIX}")
