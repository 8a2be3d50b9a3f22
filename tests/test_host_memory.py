"""The restart that puts malloc on huge pages: what it sets, when it does nothing, and that the
restarted program gets its own command line back."""
import os
import subprocess
import sys

import pytest

from var_jax import host_memory

# Prints the tunables the program ran with and its arguments, after asking for the restart.
_PROGRAM = ("import os, sys; from var_jax import host_memory; host_memory.restart_with_huge_pages(); "
            "print(os.environ.get('GLIBC_TUNABLES')); print(sys.argv[1:])")


def _run(env_changes: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.SWITCH)}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", _PROGRAM, "--a", "b c"], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.splitlines()


@pytest.mark.skipif(not host_memory.supported(), reason="needs glibc and transparent huge pages in madvise mode")
def test_restart_sets_the_tunable_and_keeps_the_arguments():
    tunables, args = _run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    assert tunables == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
    assert args == "['--a', 'b c']"


def test_switched_off_or_already_set_nothing_changes():
    assert _run({host_memory.SWITCH: "0"})[0] == "None"
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})[0] == "glibc.malloc.hugetlb=0"


def test_thp_mode_is_the_bracketed_word(tmp_path, monkeypatch):
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    monkeypatch.setattr(host_memory, "THP_MODE", mode)
    assert host_memory.transparent_huge_pages() == "madvise"
    monkeypatch.setattr(host_memory, "THP_MODE", tmp_path / "missing")
    assert host_memory.transparent_huge_pages() is None
