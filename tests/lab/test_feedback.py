"""Simulated feedback on samples: every pair of distinct samples labelled, Copeland binarisation."""

from alignlab.lab.annotators import Annotator
from alignlab.lab.feedback import label_samples
from alignlab.lab.world import LabWorld

SHARP = (Annotator(temperature=1e-3, flip_rate=0.0),)  # always picks the gold-better side


def test_all_pairs_and_best_vs_worst_follow_gold():
    world = LabWorld(seed=0)
    prompts = world.prompts("train", 3)
    samples = []
    for prompt in prompts:
        ideal = world.ideal_response(prompt)
        samples.append([ideal, "zz zz zz", ideal, "", "I am not sure, maybe."])
    samples.append(["same", "same", " "])  # a fourth prompt with one distinct sample: dropped
    feedback = label_samples(world, [*prompts, world.prompts("train", 4)[3]], samples, SHARP)
    assert len(feedback.texts) == 3
    assert all(len(texts) == 3 for texts in feedback.texts)  # duplicates and blanks removed
    assert feedback.stats["comparisons"] == 3 * 3 == len(feedback.all_pairs())
    assert feedback.stats["gold_agreement"] == 1.0
    for prompt, texts, pair in zip(prompts, feedback.texts, feedback.best_vs_worst(), strict=True):
        gold = {t: world.score(prompt, t).total for t in texts}
        assert pair["chosen"][0]["content"] == max(gold, key=gold.get)
        assert pair["rejected"][0]["content"] == min(gold, key=gold.get)
        assert pair["prompt"] == prompt.messages


def test_prompts_whose_samples_all_tie_are_dropped_from_best_vs_worst():
    world = LabWorld(seed=0)
    prompt = world.prompts("train", 1)[0]
    feedback = label_samples(world, [prompt], [["a b", "b c", "c a"]], SHARP)
    wins = [0, 0, 0]
    for _, a, b, a_wins in feedback.pairs:
        wins[a if a_wins else b] += 1
    assert len(feedback.best_vs_worst()) == (0 if len(set(wins)) == 1 else 1)
