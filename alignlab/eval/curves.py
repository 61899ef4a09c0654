"""Training curves of RL runs: proxy reward, gold reward, KL, entropy and clip fraction.

Gao et al. 2022 ("Scaling laws for reward model overoptimization", arXiv:2210.10760): as a
policy optimises a learned (proxy) reward, the proxy keeps rising while the gold reward it
stands for rises, peaks and falls; plotted against d = sqrt(KL(π ‖ π_ref)) the gold follows
d(α - β d). The RL recipes log `train/reward_mean` (proxy), `train/gold_mean` (when `rl.gold`
is set) and `train/kl_ref` every `train.log_every` steps; `plot_curves` draws them for one or
more runs: per step, and proxy and gold against sqrt(KL).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from alignlab.eval.report import figure_png
from alignlab.fileio import atomic_write_bytes
from alignlab.training.metrics import read_metrics

PROXY, GOLD, KL = "train/reward_mean", "train/gold_mean", "train/kl_ref"
ENTROPY, CLIP = "train/entropy", "train/clip_fraction"


def curve(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the records that have it."""
    rows = [(r["step"], float(r[key])) for r in records if key in r]
    return [s for s, _ in rows], [v for _, v in rows]


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` points: one step's batch holds only a few prompts, so the
    per-step means are noisy."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i + 1 - window) : i + 1]
        out.append(sum(part) / len(part))
    return out


def overoptimisation_summary(records: list[dict]) -> dict[str, float]:
    """Where the (smoothed) gold peaked, and how proxy and gold moved from there to the end."""
    steps, gold = curve(records, GOLD)
    _, proxy = curve(records, PROXY)
    if not gold or len(proxy) != len(gold):
        return {}
    window = max(1, len(steps) // 5)  # as plotted: per-step means are noisy
    gold, proxy = smooth(gold, window), smooth(proxy, window)
    peak = max(range(len(gold)), key=gold.__getitem__)
    return {
        "gold_start": gold[0],
        "gold_peak": gold[peak],
        "gold_peak_step": float(steps[peak]),
        "gold_end": gold[-1],
        "proxy_start": proxy[0],
        "proxy_at_gold_peak": proxy[peak],
        "proxy_end": proxy[-1],
        "overoptimised": float(proxy[-1] > proxy[peak] and gold[-1] < gold[peak]),
    }


def plot_curves(runs: Mapping[str, str | Path], out: str | Path, title: str = "") -> Path:
    """One PNG: proxy, gold, KL, entropy and clip fraction per step (faint: as logged; solid:
    trailing mean over a fifth of the logged points), and the smoothed proxy and gold against
    sqrt(KL), for each run (a run folder or its metrics.jsonl)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(18, 7.5), layout="constrained")
    axes = list(figure.subplots(2, 3).flat)
    axes = [axes[0], axes[1], axes[2], axes[5], axes[3], axes[4]]  # sqrt(KL) panel last
    for index, (name, path) in enumerate(runs.items()):
        records = read_metrics(path)
        steps, proxy = curve(records, PROXY)
        gold_steps, gold = curve(records, GOLD)
        kl_steps, kl = curve(records, KL)
        window = max(1, len(steps) // 5)
        color = f"C{index % 10}"
        for ax, xs, ys in (
            (axes[0], steps, proxy),
            (axes[1], gold_steps, gold),
            (axes[2], kl_steps, kl),
            (axes[4], *curve(records, ENTROPY)),
            (axes[5], *curve(records, CLIP)),
        ):
            if not ys:
                continue
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)  # raw, faint
            ax.plot(xs, smooth(ys, window), color=color, label=name)
        if kl and len(kl) == len(proxy):
            root_kl = [max(x, 0.0) ** 0.5 for x in smooth(kl, window)]
            axes[3].plot(root_kl, smooth(proxy, window), color=color, linestyle="--")
            if len(gold) == len(kl):
                axes[3].plot(root_kl, smooth(gold, window), color=color, label=name)
    axes[0].set_title("proxy reward (trained on)")
    axes[1].set_title("gold reward (not trained on)")
    axes[2].set_title("KL to the reference (nats / response)")
    axes[3].set_title("proxy (dashed), gold vs sqrt(KL)")
    axes[4].set_title("entropy estimate (nats / token)")
    axes[5].set_title("clip fraction (tokens)")
    for ax in (*axes[:3], *axes[4:]):
        ax.set_xlabel("step")
    axes[3].set_xlabel("sqrt(KL)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    out = Path(out)
    atomic_write_bytes(out, figure_png(figure))
    return out
