"""Frozen configuration dataclasses with a JSON round trip.

Each config validates itself in ``__post_init__`` (the way peft's ``LoraConfig`` does), so a bad value fails where it
is written, not deep inside a forward pass. ``to_dict``/``from_dict`` give the plain-JSON form stored in artifacts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from classlm.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SCORING = ("first_token", "exact")
# Padded tokens per forward pass. Measured on the 2-core CPU (benchmarks/throughput.py): throughput peaks at a few
# hundred tokens per pass and falls at larger batches, whose activations no longer stay in cache.
DEFAULT_BATCH_TOKENS = 512

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-JSON dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict, rejecting unknown keys with the list of known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown option(s) {unknown}; known options are {sorted(known)}")
    return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone to load and how to run it.

    ``name`` is a built-in alias (default ``"smollm2-135m"``), a local Hugging Face folder, a hub id or a ``.gguf``
    path. ``device="auto"`` picks CUDA when present, else CPU; ``dtype="auto"`` is float32 on CPU (bf16 was measured
    7x slower on CPU) and bfloat16 on CUDA.
    """

    name: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    max_length: int = 512
    batch_size: int = 64
    batch_tokens: int | None = DEFAULT_BATCH_TOKENS
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"model name must be a non-empty string, got {self.name!r}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be one of {DEVICES} or 'cuda:N', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not isinstance(self.max_length, int) or self.max_length < 16:
            raise ConfigError(f"max_length must be an int >= 16 (tokens), got {self.max_length!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.batch_tokens is not None and (not isinstance(self.batch_tokens, int) or self.batch_tokens < 1):
            raise ConfigError(f"batch_tokens must be a positive int or None (no budget), got {self.batch_tokens!r}")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", str(Path(self.cache_dir).expanduser()))


@dataclass(frozen=True)
class CalibrationConfig:
    """How the temperature is fitted.

    ``method="temperature"`` fits one temperature by NLL on held-out logits; ``"none"`` keeps T = 1.
    """

    method: str = "temperature"
    n_bins: int = 15

    def __post_init__(self) -> None:
        if self.method not in ("temperature", "none"):
            raise ConfigError(f"calibration must be 'temperature' or 'none', got {self.method!r}")
        if not isinstance(self.n_bins, int) or self.n_bins < 2:
            raise ConfigError(f"n_bins must be an int >= 2, got {self.n_bins!r}")
