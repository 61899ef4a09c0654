"""Peak bytes a piece of code allocates through torch's CPU allocator, for memory tests.

The profiler records every allocation and free with its size; their running sum in time
order is the memory the code holds on top of what existed before, and its maximum the peak.
Deterministic: it counts bytes asked for, not resident pages.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile


def peak_new_bytes(fn: Callable[[], object]) -> int:
    """The most bytes `fn()` held at once beyond what was allocated before it ran."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak
