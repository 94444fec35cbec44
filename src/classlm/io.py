"""Atomic file writes: a reader never sees half a file, and a crash leaves the previous version (stdlib only)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, then ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, hence same filesystem: os.replace is then an atomic rename, so readers never see half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file private (0600); a report or artifact is meant to be read like any file written.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_text_atomic(path: str | Path, text: str) -> Path:
    """UTF-8 text version of :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def umask_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a plain ``mkdir``/``open`` would (0755/0644 under umask 022).

    The folder comes from ``mkdtemp`` (always 0700) and safetensors writes its files 0600: left so, another user or
    a container running as another uid cannot read a saved classifier or an exported model.
    """
    umask = os.umask(0)  # the only portable way to read the umask is to set it; restored at once
    os.umask(umask)
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                os.chmod(file, 0o666 & ~umask)


def write_results(stem: str | Path, doc: Any, markdown: str) -> None:
    """A benchmark's results: ``stem.json`` (strict JSON: no NaN) and ``stem.md``, each written atomically."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stem.with_name(stem.name + ".json"), json.dumps(doc, indent=2, allow_nan=False) + "\n")
    write_text_atomic(stem.with_name(stem.name + ".md"), markdown.rstrip("\n") + "\n")
