"""A boolean score of a lab benchmark's samples, paired with the reference model per prompt.

The lab's report tables give rates with Wilson intervals per model; this pairs them: for the
prompts of one family, the per-prompt difference of a flag (e.g. `correct` on `fact`
prompts: the alignment tax on facts) between each model and the reference, with its paired
t interval (`scipy.stats.ttest_rel`), from the run's samples.jsonl (one sample per prompt).

    python benchmarks/paired_flag.py runs/lab_rl --flag correct --family fact
    python benchmarks/paired_flag.py runs/lab_rl --flag total --family headline --reference ppo

(`--flag total`: the gold total, so `--family headline --reference METHOD` pairs two methods'
headline gold with each other.)
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignlab.lab.evaluate import in_headline, lab_prompts  # noqa: E402
from alignlab.lab.world import LabWorld  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a lab_rl / lab_preference output folder")
    parser.add_argument("--flag", default="correct")
    parser.add_argument(
        "--family",
        default="fact",
        help='a prompt family; "headline": all outside the headline\'s left-out',
    )
    parser.add_argument("--reference", default="sft")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--eval-prompts", type=int, default=1500, help="as the run evaluated")
    parser.add_argument("--world-seed", type=int, default=0)
    args = parser.parse_args()
    prompts = lab_prompts(LabWorld(seed=args.world_seed), args.split, args.eval_prompts)
    members = [
        i
        for i, p in enumerate(prompts)
        if (
            in_headline(p.meta["family"])
            if args.family == "headline"
            else p.meta["family"] == args.family
        )
    ]
    flags: dict[str, dict[int, float]] = collections.defaultdict(dict)
    with (Path(args.run) / "samples.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            if row["role"] == "model" and row["sample_index"] == 0:
                flags[row["model"]][row["prompt_index"]] = float(row["scores"][args.flag])
    reference = [flags[args.reference][i] for i in members]
    print(
        f"| model | {args.flag} on {args.family} ({len(members)} prompts) | Δ to {args.reference} (paired t) |"
    )
    print("|---|---|---|")
    for name, values in flags.items():
        if name == "oracle" or not all(i in values for i in members):
            continue
        mine = [values[i] for i in members]
        mean = sum(mine) / len(mine)
        if name == args.reference:
            print(f"| {name} | {mean:.3f} | 0 |")
            continue
        test = stats.ttest_rel(mine, reference)
        ci = test.confidence_interval()
        delta = mean - sum(reference) / len(reference)
        print(f"| {name} | {mean:.3f} | {delta:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}] |")


if __name__ == "__main__":
    main()
