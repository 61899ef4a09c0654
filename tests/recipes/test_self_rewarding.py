"""Self-rewarding from the command line on a tiny model: each round's policy judges its own
samples with the paper's additive prompt (expected rating after "Score: "), the highest and
lowest scored become the DPO pair (all-tied prompts dropped), the next round samples and judges
with the DPO'd model; an optional seed SFT stage comes first; bad options are one line."""

import json

import pytest
from transformers import AutoModelForCausalLM
from word_model import _one_thread  # noqa: F401 - an autouse fixture

import alignlab.recipes.rounds as rounds
import alignlab.recipes.self_rewarding as self_rewarding
from alignlab.cli import main

PROMPTS = [
    "What is 1 plus 2?",
    "What is 3 plus 1?",
    "What is the capital of alpha?",
    "What is 4 plus 4?",
]
QUIET = ["train.progress=false", "train.tensorboard=false", "train.max_steps=1"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("self-rewarding") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def args(policy, prompts, out, *extra):
    return [
        "self_rewarding", f"model.path={policy}", f"data.path={prompts}", f"output_dir={out}",
        "prompts_per_round=2", "k=3", "max_new_tokens=8", "temperature=1.0", "top_p=1.0",
        f"dpo_overrides={json.dumps(QUIET)}", *extra,
    ]  # fmt: skip


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_round_judges_its_own_samples(tiny_model_dir, prompts, tmp_path, monkeypatch):
    judges, sampled = [], []
    load_judge, load_policy = self_rewarding.load_local_judge, rounds.load_for_eval

    def recording_judge(path, **kw):
        judges.append((str(path), load_judge(path, **kw)))
        return judges[-1][1]

    def recording_policy(path, *a, **kw):
        sampled.append(str(path))
        return load_policy(path, *a, **kw)

    monkeypatch.setattr(self_rewarding, "load_local_judge", recording_judge)
    monkeypatch.setattr(rounds, "load_for_eval", recording_policy)
    out = tmp_path / "run"
    assert main(args(tiny_model_dir, prompts, out, "rounds=2")) == 0

    # M_t samples and judges round t: M_1 = model.path, M_2 = round 1's DPO
    first = str(out / "round_1" / "dpo" / "final")
    assert sampled == [str(tiny_model_dir), first]
    assert [path for path, _ in judges] == [str(tiny_model_dir), first]
    assert judges[0][1].templates.pointwise == self_rewarding.ADDITIVE_PROMPT
    record = json.loads((out / "round_2" / "dpo" / "run.json").read_text())["config"]
    assert record["model"]["path"] == first
    assert record["reference"]["path"] == ""  # reference=previous: DPO against M_t itself

    # each pair: chosen scored above rejected by the judge that labelled it (re-asked here)
    summary = read_jsonl(out / "rounds.jsonl")
    for r, (_, judge) in enumerate(judges, start=1):
        pairs = read_jsonl(out / f"round_{r}" / "pairs" / "pairs.jsonl")
        assert pairs and len(pairs) == summary[r - 1]["pairs_kept"]
        gaps = []
        for pair in pairs:
            chosen, rejected = judge.score([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]])
            gaps.append(chosen - rejected)
        # re-asked in other batches: equal up to float rounding of the padded forward
        assert min(gaps) > -1e-6 and sum(gaps) > 0
        assert 1.0 <= summary[r - 1]["mean_reward"] <= 5.0  # expected rating on 1..5
    AutoModelForCausalLM.from_pretrained(out / "final")


class WordCountJudge:
    """A deterministic test judge: a response scores half its word count, rounded down, so
    that some prompts' samples all tie."""

    def __init__(self, path):
        self.path = path

    def score(self, prompts, responses, principle=None):
        return [float(len(r.split()) // 2) for r in responses]


def test_pairs_are_highest_vs_lowest_score_after_a_seed_sft(
    tiny_model_dir, prompts, sft_file, tmp_path, monkeypatch
):
    judged = []

    def fake_judge(path, **kw):
        judged.append(str(path))
        return WordCountJudge(path)

    monkeypatch.setattr(self_rewarding, "load_local_judge", fake_judge)
    out = tmp_path / "seeded"
    extra = [
        "rounds=1",
        "prompts_per_round=4",
        f"seed_judge_data={sft_file}",
        f"sft_overrides={json.dumps(QUIET)}",
    ]
    assert main(args(tiny_model_dir, prompts, out, *extra)) == 0
    assert judged == [str(out / "seed_sft" / "final")]  # M_1 is the seed SFT model

    score = WordCountJudge(None).score
    pairs = {p["prompt"]: p for p in read_jsonl(out / "round_1" / "pairs" / "pairs.jsonl")}
    tied = 0
    for row in read_jsonl(out / "round_1" / "samples" / "samples.jsonl"):
        distinct = [t for t in dict.fromkeys(row["responses"]) if t.strip()]
        scores = score(None, distinct)
        if len(distinct) < 2 or max(scores) == min(scores):
            assert row["prompt"] not in pairs  # the paper drops ties
            tied += 1
            continue
        pair = pairs[row["prompt"]]
        assert score(None, [pair["chosen"], pair["rejected"]]) == [max(scores), min(scores)]
    assert len(pairs) + tied == len(PROMPTS)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([f"sft_overrides={json.dumps(QUIET)}"], "need seed_judge_data"),
        (['dpo_overrides=["data.path=x.jsonl"]'], "dpo_overrides: data.path is set by each round"),
        (["reference=both"], "reference"),
        (["top_p=0"], "top_p"),
    ],
)
def test_bad_options_are_one_config_line(tiny_model_dir, prompts, tmp_path, capsys, extra, message):
    assert main(args(tiny_model_dir, prompts, tmp_path / "bad", *extra)) == 2
    err = capsys.readouterr().err
    assert "config error" in err and message in err
    assert not (tmp_path / "bad").exists()


def test_a_judge_template_without_the_response_is_named(tiny_model_dir, prompts, tmp_path, capsys):
    templates = tmp_path / "judge.yaml"
    templates.write_text("pointwise: 'Rate this: {prompt}'\n")
    assert (
        main(args(tiny_model_dir, prompts, tmp_path / "out", f"judge_templates={templates}")) == 2
    )
    assert "pointwise: the template lacks {response}" in capsys.readouterr().err
