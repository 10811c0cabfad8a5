"""ptycli.utils.heap: freed heap memory goes back to the operating system."""

import sys

import numpy as np
import pytest

from ptycli.utils.heap import release_freed_memory


def _resident_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS and malloc_trim are Linux (glibc) facts")
def test_freed_heap_pages_are_returned():
    # 64 KiB arrays come from the heap (below glibc's mmap threshold); the last one stays alive, so that
    # free() cannot shrink the heap from its top: the 60 MB freed below it stay resident until trimmed
    arrays = [np.ones(8192) for _ in range(1000)]
    keep = arrays[-1]
    del arrays
    before = _resident_mb()
    assert release_freed_memory() is True
    after = _resident_mb()
    assert before - after > 30.0, (before, after)
    assert keep.sum() == 8192
