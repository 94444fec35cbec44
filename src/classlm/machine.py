"""The machine a run is on, and the dtype chosen for it: what ``dtype="auto"`` resolves to, why, and the CPU flags
and library versions behind the choice (for ``classlm inspect``, ``GET /v1/model``, a saved manifest's ``run``
section and every benchmark's machine block).

Pure: /proc/cpuinfo is read as text; torch is imported only where a CPU's own capability is asked (no /proc).
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from classlm import allocator
from classlm.config import DTYPES
from classlm.errors import ConfigError

DTYPE_ENV = "CLASSLM_DTYPE"
# The flags that decide (amx_bf16, avx512_bf16) or explain (the rest) a CPU's fast paths for bf16 and int8 matmuls.
MATRIX_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2")
CPUINFO = Path("/proc/cpuinfo")
VERSIONED = ("classlm", "torch", "transformers", "peft", "numpy")


@dataclass(frozen=True)
class CPU:
    """A CPU's model name and the :data:`MATRIX_FLAGS` it reports."""

    model: str
    flags: tuple[str, ...]
    source: str  # "/proc/cpuinfo" or "torch" (no /proc: torch's own capability checks)

    @property
    def bf16_path(self) -> str | None:
        """The flag of the CPU's native bf16 matmul path, None without one. AMX-BF16: oneDNN runs bf16 matmuls on
        the tile engine (3.2x fp32 on SmolLM2-135M's backbone, Xeon). AVX512-BF16 without AMX (AMD Zen 4): its
        bf16 dot-product instructions (2.5x fp32 on a 283x576 @ 576x1536 linear; a LoRA run trained 1.9x and
        scored 1.8x faster than float32, EPYC, 2 threads). Without either, bf16 matmuls ran 7x *slower* than
        fp32 on a CPU we measured earlier, so nothing less counts."""
        return next((f for f in ("amx_bf16", "avx512_bf16") if f in self.flags), None)

    @property
    def bf16_matmul(self) -> bool:
        return self.bf16_path is not None


def parse_cpuinfo(text: str) -> CPU:
    """The first processor's model name and matrix flags from the text of /proc/cpuinfo."""
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return CPU(
        model or platform.processor() or platform.machine(), tuple(f for f in MATRIX_FLAGS if f in flags), str(CPUINFO)
    )


def _torch_cpu() -> CPU:
    import torch

    checks = {"amx_tile": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    found = [flag for flag, fn in checks.items() if getattr(torch.cpu, fn, lambda: False)()]
    if "amx_tile" in found and "avx512_bf16" in found:  # torch has no amx_bf16 check; AMX with bf16 support implies it
        found.insert(0, "amx_bf16")
    return CPU(platform.processor() or platform.machine(), tuple(f for f in MATRIX_FLAGS if f in found), "torch")


_CPU: CPU | None = None


def this_cpu() -> CPU:
    """The running CPU (read once per process): /proc/cpuinfo, else torch's own checks."""
    global _CPU
    if _CPU is None:
        try:
            _CPU = parse_cpuinfo(CPUINFO.read_text())
        except OSError:
            _CPU = _torch_cpu()
    return _CPU


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a backbone runs in, and how it was chosen."""

    dtype: str  # float32, bfloat16 or float16
    requested: str  # what the caller passed (auto, or a dtype)
    source: str  # "argument", "CLASSLM_DTYPE" or "auto"
    reason: str
    device: str  # cpu, cuda, …
    cpu: str
    cpu_flags: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_flags": list(self.cpu_flags)}


def choose_dtype(
    requested: str, device_type: str, *, training: bool = False, cpu: CPU | None = None, heap: str | None = None
) -> DtypeChoice:
    """Resolve ``requested`` for a backbone on ``device_type``.

    An explicit dtype wins; ``"auto"`` takes ``$CLASSLM_DTYPE`` when set, else bf16 on CUDA, bf16 on a CPU with
    AMX-BF16 or AVX512-BF16 (:attr:`CPU.bf16_path`) and float32 on other CPUs. ``training=True`` on CPU ignores
    ``$CLASSLM_DTYPE`` (a resumed run must not switch dtype with it) and picks bf16 (frozen bf16 weights, float32
    adapters and AdamW state) only with that path *and* tcmalloc or jemalloc as the process's heap allocator
    (``heap``, default :func:`classlm.allocator.active`; the ``classlm`` command runs on one where installed): on
    glibc's malloc bf16 training fragments the heap and measured no faster than float32 over a whole run, with 1 GB
    more (``benchmarks/results/throughput.json``, ``training``).
    """
    cpu = cpu or this_cpu()

    def choice(dtype: str, source: str, reason: str) -> DtypeChoice:
        return DtypeChoice(dtype, requested, source, reason, device_type, cpu.model, cpu.flags)

    if requested not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {requested!r}")
    if requested != "auto":
        return choice(requested, "argument", "asked for")
    if training and device_type == "cpu":
        if not cpu.bf16_matmul:
            return choice(
                "float32", "auto", "training on a CPU without amx_bf16 or avx512_bf16: bf16 matmuls would be slower"
            )
        heap = heap or allocator.active()
        if heap == "system":
            return choice(
                "float32",
                "auto",
                "training on CPU on glibc's malloc: bf16 measured no faster than float32 over a run, with more "
                f"memory; on tcmalloc it is the faster ({allocator.INSTALL_HINT}; the classlm command then uses it)",
            )
        return choice(
            "bfloat16", "auto", f"training on CPU with {cpu.bf16_path} on {heap}: bf16 trains faster than float32"
        )
    env = os.environ.get(DTYPE_ENV, "").strip()
    if env and env != "auto":
        if env not in DTYPES:
            raise ConfigError(f"${DTYPE_ENV} must be one of {DTYPES}, got {env!r}; unset it or fix its value")
        return choice(env, DTYPE_ENV, f"${DTYPE_ENV}={env}")
    if device_type == "cuda":
        return choice("bfloat16", "auto", "CUDA: bf16 is the GPU's fast path")
    if device_type != "cpu":
        return choice("float32", "auto", f"{device_type}: float32 (bf16 not measured there)")
    if cpu.bf16_matmul:
        engine = "its AMX tiles" if cpu.bf16_path == "amx_bf16" else "its AVX512-BF16 dot products"
        return choice("bfloat16", "auto", f"the CPU reports {cpu.bf16_path}: bf16 matmuls run on {engine}")
    return choice(
        "float32", "auto", "the CPU has neither amx_bf16 nor avx512_bf16: bf16 matmuls would be slower than float32"
    )


@functools.cache  # /v1/model asks on every request; installed versions do not change under a running process
def versions() -> dict[str, str | None]:
    """Installed versions of the libraries a result depends on (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_info(choice: DtypeChoice | None, threads: int | None = None) -> dict[str, Any]:
    """What a manifest, /v1/model and a benchmark record about how a run ran: dtype choice, CPU, threads, heap
    allocator, versions.
    ``threads`` defaults to torch's, when torch is loaded (importing it here would break the pure layer's rule)."""
    cpu = this_cpu()
    torch = sys.modules.get("torch")
    if threads is None and torch is not None:
        threads = torch.get_num_threads()
    return {
        "dtype": choice.as_dict() if choice is not None else None,
        "cpu": {"model": cpu.model, "flags": list(cpu.flags), "cores": os.cpu_count(), "source": cpu.source},
        "threads": threads,
        "allocator": allocator.active(),
        "platform": platform.platform(),
        "versions": dict(versions()),  # a copy: the cached dict is shared
    }


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def machine_block(
    device: str = "cpu", dtype: str = "auto", threads: int | None = None, *, training: bool = False
) -> dict[str, Any]:
    """A benchmark's machine block: device, CPU model and matrix flags, cores, torch threads, the dtype ``dtype``
    resolves to on this device (for training with ``training``) and why, library versions."""
    import torch

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    info = run_info(choose_dtype(dtype, "cuda" if cuda else "cpu", training=training), threads)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({info['cpu']['model']}), {os.cpu_count()} cores"
    return {"device": name, "torch": torch.__version__, **info}


def machine_line(m: dict[str, Any]) -> str:
    """``CPU (…), 2 cores, torch 2.13 (2 threads); CPU flags: amx_bf16, …; dtype bfloat16 (auto)`` from a machine
    block (older results files have only device and torch)."""
    line = f"{m['device']}, torch {m['torch']}"
    if "cpu" in m:
        line += f" ({m['threads']} threads); CPU flags: {', '.join(m['cpu']['flags']) or 'none of note'}"
    if m.get("dtype"):
        line += f"; dtype {m['dtype']['dtype']} ({m['dtype']['source']})"
    return line
