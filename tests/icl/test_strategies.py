"""In-context strategies: each one's defining behaviour, on a tiny model and on recorded prompts."""

import json
import math
from pathlib import Path

import pytest
import torch
from real_templates import FAMILIES, family_tokenizer

from alignlab.config import ConfigError, ModelConfig
from alignlab.icl import Backend, Sampling, build_stack
from alignlab.icl.args import RewardPrefixScorer
from alignlab.icl.base import Answer, Cost, derived_seed
from alignlab.icl.best_of_n import kl_best_of_n, kl_estimate
from alignlab.icl.demonstrations import BUILT_IN
from alignlab.icl.principles import with_principle
from alignlab.icl.retrieved import BM25
from alignlab.models.generation import Generation, generate
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.reward import load_reward_model, reward_forward
from alignlab.training.checkpoint import save_reward_folder
from alignlab.training.distributed import Runtime

CHAT = [{"role": "user", "content": "What is 2 plus 3?"}]
CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
LENGTH = f"{Path(__file__).parent / 'rewards.py'}:length"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(cfg)
    return load_model(cfg, tokenizer, device="cpu").eval(), tokenizer


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, tmp_path_factory):
    cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(cfg)
    model = load_reward_model(cfg, tokenizer, seed=3).eval()
    return save_reward_folder(tmp_path_factory.mktemp("rm") / "rm", model, tokenizer, CPU)


class Recorder:
    """A backend whose 'model' echoes: answer i is 'A<seed>' and every prompt is recorded."""

    def __init__(self, tokenizer=None):
        self.prompts = []
        self.seeds = []
        self.backend = Backend(None, tokenizer, self.generate)

    def generate(self, prompts, sampling, seeds):
        self.prompts.append(list(prompts))
        self.seeds.append(list(seeds))
        return [Generation(str(p), [1], [5, 6], f"A{s}", True) for p, s in zip(prompts, seeds)]


def test_principles_system_turn_or_merged_into_first_user_turn():
    chatml = family_tokenizer(FAMILIES["qwen2.5"])
    gemma = family_tokenizer(FAMILIES["gemma"])
    assert with_principle(chatml, CHAT, "Be kind.") == [
        {"role": "system", "content": "Be kind."},
        *CHAT,
    ]
    merged = with_principle(gemma, CHAT, "Be kind.")
    assert merged == [{"role": "user", "content": "Be kind.\n\nWhat is 2 plus 3?"}]
    joined = with_principle(chatml, [{"role": "system", "content": "Terse."}, *CHAT], "Be kind.")
    assert joined[0] == {"role": "system", "content": "Be kind.\n\nTerse."}
    assert with_principle(chatml, "Hi", "Be kind.") == "Be kind.\n\nHi"


def test_principles_reach_the_model_through_the_template(tiny):
    model, tokenizer = tiny
    (answer,) = build_stack({"strategy": "principles", "text": "Be kind."}).answer(
        Backend(model, tokenizer), [CHAT], Sampling(max_new_tokens=4), [0]
    )
    assert "Be kind." in answer.generation.prompt_text
    assert answer.cost.tokens == len(answer.generation.response_ids) > 0


def test_urial_prompt_holds_k_demonstrations_and_stops_at_the_block_end():
    for k in (0, 1, 3):
        recorder = Recorder()
        build_stack({"strategy": "urial", "k": k}).answer(
            recorder.backend, ["Why?"], Sampling(), [0]
        )
        (prompt,) = recorder.prompts[0]
        assert prompt.count("# Query:\n") == k + 1
        assert prompt.count("# Answer:\n") == k + 1
        assert prompt.endswith("# Query:\n```\nWhy?\n```\n\n# Answer:\n```\n")
        for demo in BUILT_IN[:k]:
            assert f"```\n{demo.query}\n```" in prompt and demo.answer in prompt
    with pytest.raises(ConfigError, match="urial.k"):
        build_stack({"strategy": "urial", "k": 9})


def test_stop_strings_cut_the_answer(tiny):
    model, tokenizer = tiny
    backend = Backend(model, tokenizer)
    sampling = Sampling(max_new_tokens=12, temperature=0)
    (plain,) = backend.plain(["alpha"], sampling, [0])
    assert len(plain.text) > 4
    stop = plain.text[3:5]
    (cut,) = backend.plain(["alpha"], Sampling(max_new_tokens=12, temperature=0, stop=(stop,)), [0])
    assert cut.text == plain.text[: plain.text.index(stop)] and cut.finished


def test_urial_flattens_a_conversation_into_blocks():
    recorder = Recorder()
    chat = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Why?"},
    ]
    build_stack({"strategy": "urial", "k": 1}).answer(recorder.backend, [chat], Sampling(), [0])
    (prompt,) = recorder.prompts[0]
    assert "Be terse." in prompt and "```\nHi\n```\n\n# Answer:\n```\nHello.\n```" in prompt
    assert prompt.count("# Query:\n") == 3


def test_bm25_matches_a_hand_computation():
    docs = ["the cat sat", "the dog", "cat cat fish"]
    bm25 = BM25(docs, k1=1.5, b=0.75)
    # query "cat": df=2 of N=3 -> idf = ln((3 - 2 + .5) / (2 + .5) + 1) = ln(1.6)
    idf = math.log(1.6)
    mean = (3 + 2 + 3) / 3

    def term(tf, length):
        return idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * length / mean))

    assert bm25.scores("cat") == pytest.approx([term(1, 3), 0.0, term(2, 3)])


def test_retrieved_puts_the_nearest_demonstrations_before_the_query(tmp_path):
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"prompt": "How tall is the tower?", "completion": "It is 300 m."},
        {"prompt": "Tell me a joke about cats", "completion": "No."},
        {"prompt": "What colour is the sky?", "completion": "Blue."},
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recorder = Recorder()
    stack = build_stack({"strategy": "retrieved", "pool": str(pool), "k": 2})
    stack.answer(
        recorder.backend, [[{"role": "user", "content": "Why is the sky blue?"}]], Sampling(), [0]
    )
    (messages,) = recorder.prompts[0]
    shown = [m["content"] for m in messages if m["role"] == "user"]
    assert shown[-1] == "Why is the sky blue?"
    assert shown[-2] == "What colour is the sky?"  # the nearest sits next to the query
    assert len(shown) == 3
    with pytest.raises(ConfigError, match="retrieved.pool"):
        build_stack({"strategy": "retrieved"})


def test_retrieved_by_hidden_states_runs_on_the_model(tiny, tmp_path):
    model, tokenizer = tiny
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(
            json.dumps({"prompt": f"What is {i} plus 1?", "completion": f"{i + 1}."}) + "\n"
            for i in range(4)
        )
    )
    stack = build_stack(
        {"strategy": "retrieved", "pool": str(pool), "k": 1, "similarity": "hidden"}
    )
    (answer,) = stack.answer(Backend(model, tokenizer), [[{"role": "user", "content": "What is 2 plus 1?"}]],
                             Sampling(max_new_tokens=3), [0])  # fmt: skip
    assert answer.generation.prompt_text.count("What is 2 plus 1?") == 2  # a demo, the query
    strategy = stack.strategies[0]
    (nearest,) = strategy.nearest(Backend(model, tokenizer), ["What is 2 plus 1?"])
    assert nearest[0].query == "What is 2 plus 1?"  # identical text: cosine 1


def test_best_of_n_returns_the_highest_scored_candidate(tiny):
    model, tokenizer = tiny
    backend = Backend(model, tokenizer)
    sampling = Sampling(max_new_tokens=8)
    stack = build_stack({"strategy": "best_of_n", "n": 4, "reward": LENGTH})
    answers = stack.answer(backend, [CHAT, "alpha"], sampling, [7, 8])
    for answer, seed, query in zip(answers, (7, 8), (CHAT, "alpha")):
        info = answer.info["best_of_n"]
        seeds = [seed] + [derived_seed(seed, "best_of_n", k) for k in range(1, 4)]
        candidates = backend.plain([query] * 4, sampling, seeds)
        lengths = [float(len(c.text)) for c in candidates]
        assert info["rewards"] == lengths
        assert answer.text == candidates[lengths.index(max(lengths))].text
        assert info["kl_bound"] == pytest.approx(math.log(4) - 3 / 4)
        assert answer.cost.tokens == sum(len(c.generation.response_ids) for c in candidates)
        assert answer.cost.forwards == answer.cost.tokens + 4
    (one,) = build_stack({"strategy": "best_of_n", "n": 1, "reward": LENGTH}).answer(
        backend, [CHAT], sampling, [7]
    )
    assert one.text == backend.plain([CHAT], sampling, [7])[0].text


def test_best_of_n_kl_bound_and_estimate():
    assert kl_best_of_n(1) == 0 and kl_best_of_n(8) == pytest.approx(math.log(8) - 7 / 8)
    # picked at the top of m = 3 distinct references: F = (3 + 1) / 4 = 1, F- = 3 / 4
    n = 4
    want = math.log((1 - 0.75**n) / 0.25)
    assert kl_estimate([5.0], [[1.0, 2.0, 3.0]], n) == pytest.approx(want)
    # a constant reward: every answer ties, best-of-n is π itself and the estimate ~ 0 as m grows
    assert kl_estimate([1.0], [[1.0] * 999], n) == pytest.approx(0.0, abs=1e-2)
    assert kl_estimate([1.0], [[1.0] * 3], 1) == pytest.approx(0.0)


def test_critique_revise_asks_for_a_critique_then_a_revision():
    recorder = Recorder(family_tokenizer(FAMILIES["qwen2.5"]))
    stack = build_stack({"strategy": "critique_revise", "rounds": 2, "principle": "rude"})
    (answer,) = stack.answer(recorder.backend, [CHAT], Sampling(), [5])
    assert len(recorder.prompts) == 1 + 2 * 2
    critique_ask = recorder.prompts[1][0]
    assert critique_ask[:1] == CHAT and critique_ask[1] == {"role": "assistant", "content": "A5"}
    assert "rude" in critique_ask[2]["content"] and critique_ask[2]["role"] == "user"
    revision_ask = recorder.prompts[2][0]
    assert revision_ask[3]["role"] == "assistant" and "rewrite" in revision_ask[4]["content"]
    second_critique = recorder.prompts[3][0]
    revised = f"A{derived_seed(5, 'revision', 0)}"
    assert second_critique[1]["content"] == revised  # round 2 criticises round 1's revision
    assert answer.text == f"A{derived_seed(5, 'revision', 1)}"
    assert [r["draft"] for r in answer.info["critique_revise"]["rounds"]] == ["A5", revised]
    with pytest.raises(ConfigError, match="critique_revise.critique"):
        build_stack({"strategy": "critique_revise", "critique": "{other}"})


def test_args_with_zero_weight_is_greedy_decoding(tiny, rm_dir):
    model, tokenizer = tiny
    prompts = [CHAT, "alpha beta", [{"role": "user", "content": "What is 1 plus 4?"}]]
    sampling = Sampling(max_new_tokens=10, temperature=0, batch_size=2)
    stack = build_stack({"strategy": "args", "reward": str(rm_dir), "weight": 0.0})
    answers = stack.answer(Backend(model, tokenizer), prompts, sampling, [0, 1, 2])
    greedy = generate(model, tokenizer, prompts, max_new_tokens=10, temperature=0, batch_size=1)
    assert [a.generation.response_ids for a in answers] == [g.response_ids for g in greedy]


def test_args_prefix_scores_with_the_cache_equal_full_forwards(tiny, rm_dir):
    model, tokenizer = tiny
    from alignlab.models.reward import load_reward_folder

    rm, _ = load_reward_folder(rm_dir)
    ids = torch.tensor([[0, 0, 5, 9, 12], [3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    candidates = torch.tensor([[20, 21, 22], [30, 31, 32]])
    scorer = RewardPrefixScorer(rm)
    with torch.no_grad():
        scorer.prefill(ids, mask, positions)
        extended = torch.cat([mask, mask.new_ones(2, 1)], 1)
        got = scorer.score(candidates, extended, positions[:, -1:] + 1)
        for row in range(2):
            for j in range(3):
                full = torch.cat([ids[row], candidates[row, j : j + 1]])[None]
                want = reward_forward(
                    rm, {"input_ids": full, "attention_mask": extended[row : row + 1]}
                )
                assert got[row, j].item() == pytest.approx(
                    want.item(), abs=1e-4 * (1 + abs(want.item()))
                )


def test_args_with_a_reward_changes_tokens_and_records_its_logps(tiny, rm_dir):
    model, tokenizer = tiny
    stack = build_stack({"strategy": "args", "reward": str(rm_dir), "weight": 50.0, "top_k": 5})
    answers = stack.answer(
        Backend(model, tokenizer), [CHAT, "alpha"], Sampling(max_new_tokens=6), [0, 1]
    )
    for a in answers:
        logps = a.generation.sampler_logps
        assert len(logps) == len(a.generation.response_ids) and all(x <= 0 for x in logps)
        assert a.cost.forwards == 2 * a.cost.tokens


def test_stacks_apply_in_order_and_check_their_specs():
    tokenizer = family_tokenizer(FAMILIES["qwen2.5"])
    recorder = Recorder(tokenizer)
    build_stack(["principles", {"strategy": "urial", "k": 0, "principle": "P."}]).answer(
        recorder.backend, [CHAT], Sampling(), [0]
    )
    first = recorder.prompts[-1][0]  # principles first: its system turn reaches URIAL's preamble
    assert isinstance(first, str) and first.index("P.") < first.index(
        "helpful, honest and harmless"
    )
    build_stack([{"strategy": "urial", "k": 0, "principle": "P."}, "principles"]).answer(
        recorder.backend, [CHAT], Sampling(), [0]
    )
    second = recorder.prompts[-1][0]  # URIAL first: the principle is a paragraph above the document
    assert second.startswith("You are a helpful") and second.index("# Instruction") > 0
    with pytest.raises(ConfigError, match="did you mean urial"):
        build_stack({"strategy": "urail"})
    with pytest.raises(ConfigError, match="did you mean urial.k"):
        build_stack({"strategy": "urial", "kk": 2})
    with pytest.raises(ConfigError, match="must be the last"):
        build_stack([{"strategy": "args", "reward": "x"}, "principles"])


def test_best_of_n_scores_the_users_query_not_the_rewritten_prompt(monkeypatch):
    seen = []

    def reward(prompts, texts, extras):
        seen.extend(prompts)
        return [0.0] * len(texts)

    recorder = Recorder()
    stack = build_stack(
        [{"strategy": "urial", "k": 1}, {"strategy": "best_of_n", "n": 2, "reward": "x:y"}]
    )
    stack.strategies[1].reward_fn = reward
    stack.answer(recorder.backend, ["Why?"], Sampling(), [0])
    assert seen == ["Why?", "Why?"] and recorder.prompts[0][0].startswith("# Instruction")


def test_cost_adds_up():
    total = Cost(1, 2, 0.5)
    total += Cost(3, 4, 1.0)
    assert total.to_dict() == {"tokens": 4, "forwards": 6, "seconds": 1.5}
    assert Answer("x", True, Generation("", [], [], "x", True)).cost == Cost()


def test_load_stack_reads_yaml_or_json_and_names_the_file(tmp_path):
    from alignlab.icl import load_stack

    spec = tmp_path / "stack.yaml"
    spec.write_text("strategies:\n  - strategy: principles\n    text: Be kind.\n  - urial\n")
    assert load_stack(spec).names == ["principles", "urial"]
    as_json = tmp_path / "stack.json"
    as_json.write_text(json.dumps([{"strategy": "urial", "k": 1}]))
    assert load_stack(as_json).strategies[0].config.k == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("- strategy: urial\n  k: many\n")
    with pytest.raises(ConfigError, match="bad.yaml.*urial.k"):
        load_stack(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_stack(tmp_path / "missing.yaml")
