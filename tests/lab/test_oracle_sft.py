"""Oracle-SFT's data: the lab's SFT prompts, in the same order, answered by the oracle."""

from alignlab.lab.corpus import sft_demonstrations
from alignlab.lab.gold import gold_score, ideal_response
from alignlab.lab.oracle_sft import oracle_demonstrations
from alignlab.lab.world import LabWorld


def test_same_prompts_as_the_sft_demonstrations_every_answer_the_oracles():
    world = LabWorld(seed=3)
    n = 200
    demonstrations = sft_demonstrations(world, n, seed=1)
    oracle = oracle_demonstrations(world, n, seed=1)
    assert [d["messages"][:-1] for d in demonstrations] == [o["messages"][:-1] for o in oracle]
    assert [d["family"] for d in demonstrations] == [o["family"] for o in oracle]
    prompts = world.prompts("train", n, stream="sft-1")
    texts = [o["messages"][0]["content"] for o in oracle]
    assert texts == [p.text for p in prompts]
    for prompt, row in zip(prompts, oracle):
        answer = row["messages"][-1]["content"]
        assert answer == ideal_response(prompt)
        assert gold_score(prompt, answer).total == 1.0
    # the lab's demonstrators do slip: the two data sets differ in what SFT learns from
    slipped = sum(
        d["messages"][-1]["content"] != o["messages"][-1]["content"]
        for d, o in zip(demonstrations, oracle)
    )
    assert slipped > n // 10
