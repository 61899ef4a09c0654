"""Comparing the weights two training runs wrote, with tolerances derived from dtype and size.

Two kinds of "the same run":
- the same computation in the same order (a resumed run against an uninterrupted one, one
  process, the same thread count): bit for bit, `assert_identical_weights`;
- the same mathematics in another float summation order (gradient accumulation against a bigger
  batch, 2 processes against 1, cached against live reference log-probs): the gradients agree to
  a few ulps of their terms, but AdamW divides each update by sqrt(v), so where a gradient is
  near zero that noise becomes an lr-sized step whose size depends on the CPU's kernels. Such
  runs are compared under `train.optimizer=sgd` (no clipping), where the update is linear in the
  gradient and its error stays a tiny fraction of the update: `assert_same_updates`.
"""

import torch
from safetensors.torch import load_file

# Summation-order error of a float sum of n terms is ~sqrt(n)·eps of the terms' scale
# (~1e-5 relative for fp32 at these sizes, worst case n·eps); 1e-3 of the tensor's largest update
# leaves two orders of margin and is still 500x below the smallest real bug (a gradient off by
# a factor of 2 moves the update by 0.5 of itself).
UPDATE_RTOL = 1e-3


def weights(folder):
    return load_file(folder / "model.safetensors")


def assert_identical_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=0, rtol=0, msg=key)


def assert_same_updates(a, b, start, rtol=UPDATE_RTOL):
    """Runs from the same `start` weights moved them alike: per tensor, |a - b| stays within
    `rtol` of its largest update plus the rounding of the weights themselves (4 ulps). A tensor
    `start` lacks (a freshly initialised head) is measured against its own size."""
    wa, wb, w0 = weights(a), weights(b), weights(start)
    assert wa.keys() == wb.keys()
    moved = 0.0
    for key in wa:
        x, y = wa[key].double(), wb[key].double()
        x0 = w0[key].double() if key in w0 else torch.zeros_like(x)
        update = torch.maximum((x - x0).abs().max(), (y - x0).abs().max())
        rounding = 4 * torch.finfo(wa[key].dtype).eps * torch.maximum(x.abs(), y.abs())
        excess = ((x - y).abs() - rtol * update - rounding).max()
        assert excess <= 0, f"{key}: differs by {(x - y).abs().max():.3g}, update {update:.3g}"
        moved = max(moved, float(update))
    assert moved > 0, "neither run changed the weights: the comparison would prove nothing"


def assert_close_series(xs, ys, rtol=1e-5, what=""):
    """Metric series of such runs: equal to `rtol` relative to max(1, |value|)."""
    assert len(xs) == len(ys) > 0, what
    for x, y in zip(xs, ys, strict=True):
        assert abs(x - y) <= rtol * max(1.0, abs(x), abs(y)), f"{what}: {x} vs {y}"
