"""The C heap allocator a process runs on: glibc's malloc, or tcmalloc / jemalloc loaded ahead of it.

Why it matters: LoRA training on CPU allocates and frees activation tensors of ever-changing sizes (micro-batches are
cut by length), and glibc's malloc keeps fragments of them: over the finetune recipe on ag_news (480 rows, SmolLM2-135M,
2-core AMX Xeon) bf16 training ran 3.92 examples/s at 3,203 MiB peak RSS under glibc and 5.69 examples/s at 2,365 MiB
under tcmalloc; float32 2.97 → 3.37 examples/s, 2,429 → 1,889 MiB (``benchmarks/recipe_speed.py``). Same losses and
the same test predictions: the allocator changes where memory lives, not what is computed.

An allocator can only be chosen before a process starts (``LD_PRELOAD``), so the ``classlm`` command re-executes
itself once with the first one found (:func:`reexec`); ``$CLASSLM_ALLOCATOR`` picks one (``tcmalloc``,
``jemalloc``) or keeps glibc's (``system``). A library user preloads it by hand (the README shows how).
:func:`active` tells which one this process runs on; training summaries and benchmark machine blocks record it.

Pure: no torch; /proc/self/maps is read as text.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ENV = "CLASSLM_ALLOCATOR"
CHOICES = ("auto", "tcmalloc", "jemalloc", "system")
# Set in the re-executed process: it never re-executes again, whatever it finds (no loop if a preload is ignored).
MARK = "_CLASSLM_ALLOCATOR_PRELOADED"
# In order of preference: tcmalloc measured faster than jemalloc (5.69 against 4.96 examples/s, bf16, same run).
LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),  # Debian/Ubuntu: libtcmalloc-minimal4
    "jemalloc": ("libjemalloc.so.2",),  # Debian/Ubuntu: libjemalloc2
}
# Where distributions and conda put them; sys.prefix/lib covers a conda environment's gperftools or jemalloc.
SEARCH_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    os.path.join(sys.prefix, "lib"),
)
# tcmalloc prints "tcmalloc: large alloc …" for each allocation past 1 GiB: a notice, not an error, kept off the log.
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}
INSTALL_HINT = "apt-get install libtcmalloc-minimal4 (Debian/Ubuntu) or conda install gperftools"


def active(maps: str | None = None) -> str:
    """``"tcmalloc"``, ``"jemalloc"`` or ``"system"``: the allocator mapped into this process (``maps``: the text
    of /proc/self/maps, read when not given; ``"system"`` where there is no /proc)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "system"
    for name, files in LIBRARIES.items():
        if any(f"/{f.split('.so')[0]}." in maps for f in files):
            return name
    return "system"


def find(name: str, dirs: Sequence[str] | None = None) -> Path | None:
    """The first library file of allocator ``name`` in ``dirs`` (default :data:`SEARCH_DIRS`), or None."""
    for d in SEARCH_DIRS if dirs is None else dirs:
        for f in LIBRARIES[name]:
            if (path := Path(d) / f).is_file():
                return path
    return None


def preload_env(
    env: Mapping[str, str], *, platform: str = sys.platform, maps: str | None = None
) -> dict[str, str] | None:
    """The environment to re-execute with so that the process runs on a faster allocator, or None to go on as is:
    not Linux, ``$CLASSLM_ALLOCATOR=system``, one already active (or already tried), or none installed."""
    want = env.get(ENV, "auto").strip().lower() or "auto"
    if platform != "linux" or want == "system" or env.get(MARK) or active(maps) != "system":
        return None
    if want not in CHOICES:
        # The CLI's one-line error would come before any work, but a bad value here should not stop a run either.
        print(f"classlm: ${ENV} must be one of {', '.join(CHOICES)}, got {want!r}; using glibc's", file=sys.stderr)
        return None
    for name in (want,) if want != "auto" else tuple(LIBRARIES):
        if (path := find(name)) is not None:
            preload = " ".join(p for p in (str(path), env.get("LD_PRELOAD", "")) if p)
            return {**QUIET, **env, "LD_PRELOAD": preload, MARK: name}
    return None


def reexec(argv: Sequence[str] | None = None) -> None:
    """Replace this process with itself on a faster allocator when :func:`preload_env` finds one; else return.

    Call it first thing in a command's entry point, before any work (the process is replaced, not forked)."""
    env = preload_env(os.environ)
    if env is None:
        return
    argv = list(argv if argv is not None else sys.orig_argv)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:  # cannot re-execute (a frozen or odd interpreter): run on glibc's malloc rather than not at all
        return
