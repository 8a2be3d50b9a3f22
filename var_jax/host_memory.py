"""Huge pages for the host memory that XLA's CPU programs allocate.

XLA's CPU runtime allocates each execution's temporaries anew with ``malloc`` (VAR-d16's training
step at batch 1 in float32: one block of 4.8 GB).  glibc maps a block that large with ``mmap`` and
unmaps it when it is freed, so every step touches fresh pages and the kernel faults in each 4 KiB
page again: on a 2-core VM, 1.2 million faults and 2.3 s of kernel time a step.  Where the kernel
gives transparent huge pages only to memory that asks for them (``transparent_hugepage=madvise``,
the common default), glibc's tunable ``glibc.malloc.hugetlb=1`` makes ``malloc`` ask: 2 MiB pages,
about 500 times fewer faults, and freed memory still goes back to the system.

glibc reads its tunables once, when a process starts, so :func:`restart_with_huge_pages` starts the
same command again with the tunable set.  ``VAR_JAX_HUGE_PAGES=0`` leaves ``malloc`` as it is.
"""
from __future__ import annotations

import os
import pathlib
import platform
import sys

TUNABLES = "GLIBC_TUNABLES"
HUGETLB = "glibc.malloc.hugetlb=1"
SWITCH = "VAR_JAX_HUGE_PAGES"
THP_MODE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_pages() -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise`` or ``never``), or None where
    it cannot be read (not Linux)."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return None
    chosen = [word for word in text.split() if word.startswith("[")]
    return chosen[0].strip("[]") if chosen else None


def supported() -> bool:
    """glibc, on a kernel that gives transparent huge pages on request: where the tunable helps."""
    return platform.libc_ver()[0] == "glibc" and transparent_huge_pages() == "madvise"


def wanted() -> bool:
    """Whether :func:`restart_with_huge_pages` would restart: :func:`supported`, the tunable not yet
    set, and not switched off."""
    if os.environ.get(SWITCH, "1") == "0" or "glibc.malloc.hugetlb" in os.environ.get(TUNABLES, ""):
        return False
    return supported()


def restart_with_huge_pages() -> None:
    """When :func:`wanted`, replace this process by the same command line with ``glibc.malloc.hugetlb=1``
    added to ``GLIBC_TUNABLES`` (this call then never returns); otherwise return at once.  Call it
    first in a program's ``main``, before it has written or started anything."""
    if not wanted():
        return
    current = os.environ.get(TUNABLES, "")
    os.environ[TUNABLES] = f"{current}:{HUGETLB}" if current else HUGETLB
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
