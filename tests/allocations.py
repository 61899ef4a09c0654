"""Peak bytes a piece of code allocates through torch's CPU allocator, for memory tests.

The profiler records every allocation and free with its size (not its address); the running
sum, in time order, of the code's own allocations and the frees that match one of them in size
is the memory the code holds on top of what existed before, and its maximum the peak. Frees
of blocks allocated before are left out: which of them happen inside (an earlier test's
garbage, a cache) varies from run to run, and each would lower the peak by its size. The
garbage collector is run before and kept off during for the same reason. Deterministic: it
counts bytes asked for, not resident pages.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile


def peak_new_bytes(fn: Callable[[], object]) -> int:
    """The most bytes `fn()` held at once beyond what was allocated before it ran."""
    gc.collect()
    gc.disable()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        gc.enable()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    outstanding = Counter()  # sizes of the blocks fn() allocated and has not freed
    for event in sorted(events, key=lambda e: e.start_ns()):
        size = event.nbytes()  # negative for a free
        if size > 0:
            outstanding[size] += 1
        elif outstanding[-size] > 0:
            outstanding[-size] -= 1
        else:
            continue  # a block from before fn()
        live += size
        peak = max(peak, live)
    return peak
