"""worker.malloc: with the thresholds held, a multi-MB buffer comes from the heap instead of its own mmap."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
from pathlib import Path

import pytest

from worker import malloc

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter: is a buffer of N MB its own mapping while it lives (mallinfo2's hblks)? First 4 MB (glibc's
# default threshold, 128 KB, maps it; freeing it raises the dynamic threshold to 4 MB), then the thresholds are set
# (or not), then 8 MB.
PROBE = """
import ctypes, ctypes.util, sys
from worker import malloc
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                              "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def mapped(mb):
    before = libc.mallinfo2().hblks
    p = libc.malloc(mb * 2**20)
    ctypes.memset(p, 1, mb * 2**20)
    after = libc.mallinfo2().hblks
    libc.free(p)
    return after - before
print(mapped(4), malloc.hold_thresholds(int(sys.argv[1])), mapped(8))
"""


def glibc_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not glibc_mallinfo2(), reason="glibc ≥ 2.33 only (mallinfo2)")
def test_held_thresholds_keep_big_buffers_in_the_heap():
    def probe(threshold: int) -> list[str]:
        out = subprocess.run([sys.executable, "-c", PROBE, str(threshold)], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        return out.stdout.split()

    assert probe(0) == ["1", "False", "1"]  # glibc's own: 8 MB is past its raised threshold, mapped
    assert probe(32 * 2**20) == ["1", "True", "0"]  # held at 32 MiB: from the heap


def test_zero_leaves_malloc_alone():
    assert malloc.hold_thresholds(0) is False
