"""Where the alignment tax on facts comes from: what the labels, the reward model and each
policy do on the lab's fact prompts.

1. The labels and the reward model: every labelled pair of the feedback on a fact prompt,
   each response put in one of three kinds by the world's gold (`correct`; `ignorance`:
   claims not to know; `wrong`: anything else). For each pair of kinds, the share of pairs
   whose label, and whose reward-model score, prefers the first kind; gold prefers correct
   over ignorance over wrong.
2. The policies: per model of a lab_rl / lab_preference run, on its heldout fact prompts, the
   share of each kind and the mean length: whether lost accuracy went to "I don't know" (as
   a reward model that prefers abstaining would push it) or to wrong answers (drift).

    python benchmarks/alignment_tax.py --run runs/lab_rl_ptx --feedback runs/lab_preference/feedback --rm runs/lab_preference/rm/final
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignlab.lab.evaluate import lab_prompts  # noqa: E402
from alignlab.lab.pipeline import feedback_prompts  # noqa: E402
from alignlab.lab.rewards import user_text  # noqa: E402
from alignlab.lab.world import LabWorld  # noqa: E402
from alignlab.rl.rewards import reward_model_reward  # noqa: E402

KINDS = ("correct", "ignorance", "wrong")


def kind(flags: dict) -> str:
    if flags.get("correct"):
        return "correct"
    return "ignorance" if flags.get("claimed_ignorance") else "wrong"


def label_and_rm_preferences(feedback: Path, rm: str, world: LabWorld, n_prompts: int) -> str:
    rows = [json.loads(line) for line in (feedback / "rm_pairs.jsonl").open()]
    by_text = {p.text: p for p in feedback_prompts(world, n_prompts)}
    fact = []
    for row in rows:
        prompt = by_text[user_text(row["prompt"])]
        if prompt.family == "fact":
            chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
            fact.append((row["prompt"], chosen, rejected, prompt))
    score = reward_model_reward([rm])
    chosen_rm = score([p for p, *_ in fact], [c for _, c, _, _ in fact])
    rejected_rm = score([p for p, *_ in fact], [r for *_, r, _ in fact])
    counts: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for (_, chosen, rejected, prompt), rc, rr in zip(fact, chosen_rm, rejected_rm):
        kc = kind(world.score(prompt, chosen).details)
        kr = kind(world.score(prompt, rejected).details)
        if kc == kr:
            continue
        # orient every pair as (better kind by gold, worse kind)
        first_is_chosen = KINDS.index(kc) < KINDS.index(kr)
        key = (kc, kr) if first_is_chosen else (kr, kc)
        counts[key][0] += 1
        counts[key][1] += first_is_chosen  # the label prefers the gold-better kind
        counts[key][2] += (rc > rr) == first_is_chosen  # so does the reward model
    lines = [
        f"{len(fact)} labelled pairs on fact prompts; pairs of two kinds:",
        "",
        "| pair (gold prefers the first) | pairs | label prefers the first | RM prefers the first |",
        "|---|---|---|---|",
    ]
    for a, b in itertools.combinations(KINDS, 2):
        n, label, model = counts[(a, b)]
        if n:
            lines.append(f"| {a} vs {b} | {n} | {label / n:.2f} | {model / n:.2f} |")
    return "\n".join(lines)


def policy_kinds(run: Path, world: LabWorld, eval_prompts: int) -> str:
    prompts = lab_prompts(world, "heldout", eval_prompts)  # as the run evaluated them
    fact = {i for i, p in enumerate(prompts) if p.meta["family"] == "fact"}
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    lengths: dict[str, list[int]] = collections.defaultdict(list)
    for line in (run / "samples.jsonl").open():
        row = json.loads(line)
        if row["role"] == "model" and row["prompt_index"] in fact:
            kinds[row["model"]][kind(row["scores"])] += 1
            lengths[row["model"]].append(row["response_tokens"])
    lines = [
        f"\nheldout fact prompts ({len(fact)}), share of responses of each kind:",
        "",
        "| model | correct | ignorance | wrong | length (tokens) |",
        "|---|---|---|---|---|",
    ]
    for name, counter in kinds.items():
        n = sum(counter.values())
        shares = " | ".join(f"{counter[k] / n:.3f}" for k in KINDS)
        lines.append(f"| {name} | {shares} | {sum(lengths[name]) / n:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", help="a lab_rl / lab_preference output folder")
    parser.add_argument("--feedback", default="runs/lab_preference/feedback")
    parser.add_argument("--rm", default="runs/lab_preference/rm/final")
    parser.add_argument("--n-prompts", type=int, default=3000, help="feedback prompts")
    parser.add_argument("--eval-prompts", type=int, default=1500, help="as the run evaluated")
    parser.add_argument("--world-seed", type=int, default=0)
    args = parser.parse_args()
    world = LabWorld(seed=args.world_seed)
    print(label_and_rm_preferences(Path(args.feedback), args.rm, world, args.n_prompts))
    if args.run:
        print(policy_kinds(Path(args.run), world, args.eval_prompts))


if __name__ == "__main__":
    main()
