import os
import subprocess
import sys

import pytest

# 20 blocks of 8 MiB under glibc's dynamic mmap threshold (raised to 24 MiB by one freed
# block), with a small tensor allocated after them so the top of the heap stays in use.
# Prints the MiB that freeing the blocks gave back to the system; a model under LARGE_MODEL
# parameters leaves malloc as it is.
FREE_BLOCKS = """
import re, sys, torch
from pathlib import Path
from alignlab.host_memory import LARGE_MODEL, return_freed_memory
if sys.argv[1] == "set":
    assert return_freed_memory(LARGE_MODEL)
else:
    assert not return_freed_memory(LARGE_MODEL - 1)
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
big = torch.ones(24 << 18)
del big
blocks = [torch.ones(2 << 20) for _ in range(20)]
pin = torch.ones(16)
before = rss()
del blocks
print((before - rss()) / 1024)
"""


def returned_mib(mode):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run(
        [sys.executable, "-c", FREE_BLOCKS, mode], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_tensors_go_back_to_the_system():
    blocks_mib = 20 * 8
    kept_by_default = blocks_mib - returned_mib("small model")
    if kept_by_default < 16:
        pytest.skip("this C library gives the blocks back without the setting")
    assert returned_mib("set") >= blocks_mib - 4  # a few pages of bookkeeping at most


def test_a_threshold_the_user_set_is_kept(monkeypatch):
    from alignlab.host_memory import LARGE_MODEL, return_freed_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert return_freed_memory(LARGE_MODEL) is False
