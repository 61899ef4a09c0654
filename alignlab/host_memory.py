"""Host memory: give the memory of freed tensors back to the system when they are freed.

glibc's malloc serves blocks below its mmap threshold from its heaps and keeps their pages
when they are freed. The threshold is dynamic: it starts at 128 KiB and rises to the size of
the largest mapped block freed so far, up to 32 MiB. A training step at 0.5B parameters frees
and allocates again activations of 3.5-20 MiB, which then live in the heap, fragmented: SFT's
resident memory grew 1.3 GB above the live tensors over its first four steps (9.8 GB peak
against 8.5). With a fixed threshold of 1 MiB every larger block is its own mapping, returned
to the system when freed.

Mapping a block again costs a page fault per 4 KiB page touched (about 1.7 us on the 2-core
test VM, zeroing included). For a small model that is most of the gain's price and none of
its worth: a 3M-parameter DPO step took 1.3 CPU-s instead of 0.7 (160,000 faults instead of
5,000) to save 80 MB. So the threshold is fixed only for models of LARGE_MODEL parameters or
more, where a step's matmuls outweigh its faults and the heap's growth is gigabytes.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter, glibc's malloc.h
MMAP_THRESHOLD = 1 << 20
LARGE_MODEL = 100_000_000


def return_freed_memory(num_params: int) -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD for this process when a model of
    `num_params` parameters is trained; True when it is set.

    Does nothing for models under LARGE_MODEL parameters, off Linux, on a C library without
    `mallopt` (musl), or when the user chose a threshold with MALLOC_MMAP_THRESHOLD_.
    """
    if num_params < LARGE_MODEL:
        return False
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
