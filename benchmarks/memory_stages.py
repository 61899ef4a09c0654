"""Where a training step's memory goes: peak RSS of each stage of each step, for either side.

Hooks mark the stages without touching either trainer: a global module forward pre-hook
(forward, or forward without grad for a reference), a wrapper around
`torch.autograd.backward`, and the global optimizer step hooks. At every stage change the
process's VmHWM (the peak RSS since the last change) is read and reset (`/proc/self/clear_refs`
= 5), so each stage gets its own peak, exactly, without sampling. The assets (model folder and
data) are built in a separate process first, so their allocations do not count.

    python benchmarks/memory_stages.py sft alignlab --shape qwen0.5b --layers 4 --steps 3
    python benchmarks/memory_stages.py dpo trl --shape qwen0.5b --steps 3

`--layers N` keeps the shape's hidden size and vocabulary with fewer layers (a quick probe).
"""

from __future__ import annotations

import argparse
import atexit
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GB = 2**30


def read_status() -> tuple[int, int]:
    """(VmHWM, VmRSS) of this process in bytes."""
    text = Path("/proc/self/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1))
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
    return hwm * 1024, rss * 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def cpu_and_faults() -> tuple[float, int]:
    """(user + system CPU seconds, minor page faults) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


class StageMeter:
    """(step, stage, RSS at entry, peak RSS, CPU seconds, minor page faults) of every stage,
    recorded at each stage change. CPU seconds (user + system, all threads) are less sensitive
    to other processes' load than wall time; minor faults count the pages the kernel handed
    out (each a zeroed page: the cost of returning freed memory to the system)."""

    def __init__(self) -> None:
        self.step, self.stage = 0, "setup"
        self.entry_rss = read_status()[1]
        self.entry_cpu = cpu_and_faults()
        self.rows: list[tuple[int, str, int, int, float, int]] = []

    def enter(self, stage: str) -> None:
        if stage == self.stage:
            return
        hwm, rss = read_status()
        cpu, faults = cpu_and_faults()
        self.rows.append(
            (self.step, self.stage, self.entry_rss, hwm, cpu - self.entry_cpu[0],
             faults - self.entry_cpu[1])
        )  # fmt: skip
        reset_peak()
        self.stage, self.entry_rss, self.entry_cpu = stage, rss, (cpu, faults)

    def report(self) -> str:
        self.enter("end")
        lines = [
            "| step | stage | RSS at entry GB | peak GB | peak - entry GB | CPU s | minor faults |",
            "|---|---|---|---|---|---|---|",
        ]
        per_step: dict[int, list[float]] = {}
        for step, stage, entry, peak, cpu, faults in self.rows:
            lines.append(
                f"| {step} | {stage} | {entry / GB:.2f} | {peak / GB:.2f} "
                f"| {(peak - entry) / GB:+.2f} | {cpu:.1f} | {faults:,} |"
            )
            totals = per_step.setdefault(step, [0.0, 0])
            totals[0] += cpu
            totals[1] += faults
        steps = [per_step[k] for k in sorted(per_step) if 0 < k < max(per_step)]
        lines.append(
            "CPU s and minor faults per whole step (from one optimizer step to the next): "
            + ", ".join(f"{cpu:.1f} s / {faults:,}" for cpu, faults in steps)
        )
        overall = max(row[3] for row in self.rows)
        lines.append(f"overall peak RSS: {overall / GB:.2f} GB")
        return "\n".join(lines)


def install(meter: StageMeter) -> None:
    import torch

    def forward_hook(module, args):  # noqa: ANN001, ANN202
        if meter.stage not in ("backward",):  # checkpointed recomputation stays in backward
            meter.enter("forward" if torch.is_grad_enabled() else "forward (no grad)")

    torch.nn.modules.module.register_module_forward_pre_hook(forward_hook)

    plain_backward = torch.autograd.backward

    def backward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        meter.enter("backward")
        try:
            return plain_backward(*args, **kwargs)
        finally:
            meter.enter("after backward (clip, ...)")

    torch.autograd.backward = backward

    def pre_step(optimizer, args, kwargs):  # noqa: ANN001, ANN202
        meter.enter("optimizer step")

    def post_step(optimizer, args, kwargs):  # noqa: ANN001, ANN202
        meter.step += 1
        meter.enter("after step (zero_grad, log, ...)")

    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    register_optimizer_step_pre_hook(pre_step)
    register_optimizer_step_post_hook(post_step)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", choices=["sft", "dpo"])
    parser.add_argument("framework", choices=["alignlab", "alignlab-low-memory", "trl"])
    parser.add_argument("--shape", default="qwen0.5b")
    parser.add_argument("--layers", type=int, default=0, help="0 = the shape's own")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="more alignlab overrides"
    )
    parser.add_argument("--assets-only", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    bench = __import__("sft_speed" if args.recipe == "sft" else "dpo_speed")
    shape = dict(bench.SHAPES[args.shape])
    if args.layers:
        shape["body"] = {**shape["body"], "num_layers": args.layers}

    if args.assets_only:
        bench.make_shape_assets(shape, Path(args.assets_only), args.steps)
        return
    if args.folder is None:
        with tempfile.TemporaryDirectory() as tmp:
            base = [sys.executable, __file__, *sys.argv[1:]]
            subprocess.run([*base, "--assets-only", tmp], check=True)
            subprocess.run([*base, "--folder", tmp], check=True)
        return

    meter = StageMeter()
    install(meter)
    atexit.register(lambda: print(meter.report(), flush=True))
    if args.framework == "trl":
        gaps = bench.worker_trl(shape, args.steps, Path(args.folder), args.precision)
    else:
        extra = (*__import__("sft_speed").ALIGNLAB_RUNS[args.framework], *args.set)
        gaps = bench.worker_alignlab(
            shape, args.steps, Path(args.folder), args.precision, extra=extra
        )
    print(f"seconds between steps: {[round(g, 2) for g in gaps]}")


if __name__ == "__main__":
    main()
