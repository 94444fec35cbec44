"""The ``classlm`` command re-executes itself once on tcmalloc or jemalloc when one is installed, and never where it
is told not to, already runs on one, or is not on Linux; the allocator a process runs on is recorded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from classlm import allocator, machine

MAPS_GLIBC = """7f0000000000-7f0000001000 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000002000-7f0000003000 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libm.so.6
"""
MAPS_TCMALLOC = MAPS_GLIBC + "7f00000f0000-7f00000f1000 r-xp 0 08:01 3 /usr/lib/libtcmalloc_minimal.so.4.5.10\n"
MAPS_JEMALLOC = MAPS_GLIBC + "7f00000f0000-7f00000f1000 r-xp 0 08:01 3 /opt/conda/lib/libjemalloc.so.2\n"
PROBE = "from classlm import allocator; allocator.reexec(); print(allocator.active())"


def test_the_active_allocator_is_read_from_the_process_maps():
    assert allocator.active(MAPS_GLIBC) == "system"
    assert allocator.active(MAPS_TCMALLOC) == "tcmalloc"
    assert allocator.active(MAPS_JEMALLOC) == "jemalloc"
    assert allocator.active() in ("system", "tcmalloc", "jemalloc")  # this process, read from /proc/self/maps
    assert machine.run_info(None)["allocator"] == allocator.active()


@pytest.fixture()
def fake_libs(tmp_path, monkeypatch):
    """A library folder holding fake jemalloc and tcmalloc files (only found, never loaded, by these tests)."""
    for name in ("libtcmalloc_minimal.so.4", "libjemalloc.so.2"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(allocator, "SEARCH_DIRS", (str(tmp_path / "none"), str(tmp_path)))
    return tmp_path


def test_preload_env_prefers_tcmalloc_keeps_the_users_preload_and_marks_the_new_process(fake_libs):
    env = allocator.preload_env({"LD_PRELOAD": "/opt/libmine.so", "PATH": "/bin"}, platform="linux", maps=MAPS_GLIBC)
    assert env is not None
    assert env["LD_PRELOAD"] == f"{fake_libs / 'libtcmalloc_minimal.so.4'} /opt/libmine.so"
    assert env["PATH"] == "/bin" and env[allocator.MARK] == "tcmalloc"
    assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == str(1 << 40)  # its "large alloc" notices kept off the log
    env = allocator.preload_env({allocator.ENV: "jemalloc"}, platform="linux", maps=MAPS_GLIBC)
    assert env is not None and env["LD_PRELOAD"] == str(fake_libs / "libjemalloc.so.2")
    # A user's own threshold wins over the quiet default.
    env = allocator.preload_env({"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"}, platform="linux", maps=MAPS_GLIBC)
    assert env is not None and env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"


@pytest.mark.parametrize(
    ("env", "platform", "maps"),
    [
        ({allocator.ENV: "system"}, "linux", MAPS_GLIBC),  # told to keep glibc's
        ({allocator.ENV: " System "}, "linux", MAPS_GLIBC),
        ({}, "darwin", MAPS_GLIBC),  # LD_PRELOAD is a Linux (ld.so) mechanism
        ({}, "linux", MAPS_JEMALLOC),  # already on one: the user's choice stands
        ({allocator.MARK: "tcmalloc"}, "linux", MAPS_GLIBC),  # re-executed once already: never a loop
    ],
)
def test_no_reexecution_where_it_is_not_wanted_or_already_done(fake_libs, env, platform, maps):
    assert allocator.preload_env(env, platform=platform, maps=maps) is None


def test_nothing_installed_or_a_bad_choice_runs_on_as_it_is(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(allocator, "SEARCH_DIRS", (str(tmp_path),))
    assert allocator.preload_env({}, platform="linux", maps=MAPS_GLIBC) is None
    assert allocator.preload_env({allocator.ENV: "tcmalloc"}, platform="linux", maps=MAPS_GLIBC) is None
    assert allocator.preload_env({allocator.ENV: "mimalloc"}, platform="linux", maps=MAPS_GLIBC) is None
    err = capsys.readouterr().err
    assert "CLASSLM_ALLOCATOR must be one of auto, tcmalloc, jemalloc, system, got 'mimalloc'" in err


def _probe(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV, allocator.MARK)}
    return subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD re-execution is Linux only")
def test_a_real_process_reexecutes_onto_an_installed_allocator_quietly():
    installed = [name for name in allocator.LIBRARIES if allocator.find(name)]
    if not installed:
        pytest.skip(f"neither tcmalloc nor jemalloc is installed here ({allocator.INSTALL_HINT})")
    proc = _probe()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == installed[0]
    assert proc.stderr == ""  # no ld.so or allocator notices
    proc = _probe(**{allocator.ENV: "system"})
    assert (proc.returncode, proc.stdout.strip()) == (0, "system")
