"""Batched critique-and-revise (SL-CAI's data): the paper's turns in order, one generate call
per step over every sample, principles drawn per sample and round, the revision critiqued next
round, empty revisions keep the previous answer, plain transcripts cut at the next user line;
on a real tiny model a sample does not depend on the batch it shared."""

import pytest
import torch

import alignlab.aif.revise as revise
from alignlab.aif.constitution import parse_constitution
from alignlab.aif.revise import critique_and_revise, revision_stats
from alignlab.config import ConfigError
from alignlab.eval.harness import load_for_eval
from alignlab.icl.base import derived_seed

CONSTITUTION = parse_constitution(
    "".join(
        f"- {{name: p{i}, critique: critique request {i}, revision: revision request {i}, "
        f"choice: question {i}}}\n"
        for i in range(5)
    )
)


class Gen:
    def __init__(self, text):
        self.text = text


class FakeGenerate:
    """Stands in for `generate`: records each call, answers from the context's last turn."""

    def __init__(self, empty_revision_of=()):
        self.calls = []
        self.empty_revision_of = set(empty_revision_of)

    def __call__(self, model, tokenizer, contexts, seeds=None, **kw):
        self.calls.append({"contexts": list(contexts), "seeds": list(seeds), **kw})
        out = []
        for context in contexts:
            if isinstance(context, str):  # a transcript: the model runs on into the next line
                text = "revised answer" if "revision request" in context else "a critique"
                out.append(Gen(f" {text}\n\nUser: and more"))
            elif "critique request" in context[-1]["content"]:
                out.append(Gen(f" critique of [{_draft(context)}] "))
            elif _draft(context) in self.empty_revision_of:
                out.append(Gen(""))
            else:
                out.append(Gen(f"revised {_draft(context)}"))
        return out


def _draft(context):
    return [m["content"] for m in context if m["role"] == "assistant"][0]


def chat(text):
    return [{"role": "user", "content": text}]


def test_the_turns_follow_the_paper_and_each_step_is_one_batched_call(monkeypatch):
    fake = FakeGenerate()
    monkeypatch.setattr(revise, "generate", fake)
    prompts = [chat("q0"), chat("q1"), chat("q2")]
    revised = critique_and_revise(
        None, None, prompts, [" a0 ", "a1", "a2"], CONSTITUTION, rounds=2, seed=7,
        max_new_tokens=5, temperature=0.7, batch_size=2,
    )  # fmt: skip
    assert len(fake.calls) == 4  # critiques, revisions, twice: every sample in each call
    assert all(len(c["contexts"]) == 3 for c in fake.calls)
    assert all(c["max_new_tokens"] == 5 and c["temperature"] == 0.7 for c in fake.calls)
    for i, item in enumerate(revised):
        first, second = (CONSTITUTION.draw(7, i, r) for r in range(2))
        # round 1: the request follows the response as a user turn, the critique as the
        # assistant's, then the revision request
        assert fake.calls[0]["contexts"][i] == [
            *prompts[i],
            {"role": "assistant", "content": f"a{i}"},
            {"role": "user", "content": first.critique},
        ]
        assert fake.calls[1]["contexts"][i][-2:] == [
            {"role": "assistant", "content": f"critique of [a{i}]"},
            {"role": "user", "content": first.revision},
        ]
        # round 2 critiques round 1's revision, in a fresh context
        assert fake.calls[2]["contexts"][i][:3] == [
            *prompts[i],
            {"role": "assistant", "content": f"revised a{i}"},
            {"role": "user", "content": second.critique},
        ]
        assert [r.principle for r in item.rounds] == [first.name, second.name]
        assert item.response == f"a{i}" and item.final == f"revised revised a{i}"
        assert fake.calls[0]["seeds"][i] == derived_seed(7, "critique", i, 0)
        assert fake.calls[3]["seeds"][i] == derived_seed(7, "revision", i, 1)
    row = revised[0].to_row()
    assert row["initial_response"] == "a0" and row["revision"] == "revised revised a0"
    assert row["rounds"][0] == {
        "principle": revised[0].rounds[0].principle,
        "critique": "critique of [a0]",
        "revision": "revised a0",
    }


def test_principles_are_drawn_per_sample():
    names = {CONSTITUTION.draw(3, i, 0).name for i in range(40)}
    assert len(names) == len(CONSTITUTION)


def test_an_empty_revision_keeps_the_previous_answer_and_is_counted(monkeypatch):
    monkeypatch.setattr(revise, "generate", FakeGenerate(empty_revision_of={"a1"}))
    revised = critique_and_revise(
        None, None, [chat("q0"), chat("q1")], ["a0", "a1"], CONSTITUTION, rounds=1
    )
    assert [r.final for r in revised] == ["revised a0", "a1"]
    stats = revision_stats(revised)
    assert stats["samples"] == 2 and stats["rounds"] == 2
    assert stats["changed"] == 1 and stats["empty_revisions"] == 1
    assert sum(stats["principles"].values()) == 2


def test_a_string_prompt_continues_as_a_transcript_cut_at_the_next_user_line(monkeypatch):
    fake = FakeGenerate()
    monkeypatch.setattr(revise, "generate", fake)
    (item,) = critique_and_revise(None, None, ["Q: hello"], ["hi"], CONSTITUTION)
    principle = CONSTITUTION.draw(1, 0, 0)
    assert fake.calls[0]["contexts"][0] == (
        f"Q: hello\n\nAssistant: hi\n\nUser: {principle.critique}\n\nAssistant:"
    )
    assert fake.calls[1]["contexts"][0].endswith(
        f"User: {principle.critique}\n\nAssistant: a critique\n\nUser: {principle.revision}"
        "\n\nAssistant:"
    )
    assert item.rounds[0].critique == "a critique"  # not "... User: and more"
    assert item.final == "revised answer"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_for_eval(tiny_model_dir, device="cpu")
    torch.set_num_threads(threads)


def test_on_a_tiny_model_a_sample_does_not_depend_on_its_batch(tiny):
    prompts = [chat("What is 1 plus 2?"), chat("alpha"), chat("What is the capital of beta?")]
    responses = ["1 plus 2 equals 3.", "beta", "sorry"]

    def run(batch_size, order):
        revised = critique_and_revise(
            tiny.model, tiny.tokenizer, [prompts[i] for i in order], [responses[i] for i in order],
            CONSTITUTION, max_new_tokens=6, batch_size=batch_size, seed=3,
        )  # fmt: skip
        return [(r.rounds[0].critique, r.final) for r in revised]

    alone = run(1, [0, 1, 2])
    assert run(3, [0, 1, 2]) == alone
    assert any(text for pair in alone for text in pair)  # the model said something


def test_contexts_longer_than_the_positions_are_refused(tiny):
    with pytest.raises(
        ConfigError, match="critique round 1: contexts of up to .* max_new_tokens=6"
    ):
        critique_and_revise(
            tiny.model, tiny.tokenizer, [chat("alpha")], ["beta"], CONSTITUTION,
            max_new_tokens=6, max_positions=20,
        )  # fmt: skip
