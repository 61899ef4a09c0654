"""In-context strategies behind the API: a request's `alignlab.strategy`, the server's default,
their samples through the shared scheduler, and what a request's spec may not name."""

import json

import openai
import pytest
from serving import client_for, raw_request, tiny_server

from alignlab.icl.base import Answer, Backend, Cost, Sampling

icl = pytest.importorskip("alignlab.icl")
if not hasattr(icl, "build_stack"):
    pytest.skip("alignlab.icl.build_stack is not there yet", allow_module_level=True)

URIAL = [{"strategy": "urial", "k": 1}]
QUERY = [{"role": "user", "content": "What is 2 plus 3?"}]


def offline_answer(tiny_lm, spec, query, max_tokens, seed, temperature=0.0):
    model, tokenizer = tiny_lm
    stack = icl.build_stack(spec)
    sampling = Sampling(max_new_tokens=max_tokens, temperature=temperature)
    return stack.answer(Backend(model, tokenizer), [query], sampling, [seed])[0]


def test_a_request_strategy_answers_as_the_offline_stack(client, server, tiny_lm):
    steps = server[1].scheduler.steps
    reply = client.chat.completions.create(
        model="tiny", messages=QUERY, max_tokens=12, temperature=0, seed=3,
        extra_body={"alignlab": {"strategy": URIAL}},
    )  # fmt: skip
    expected = offline_answer(tiny_lm, URIAL, QUERY, 12, 3)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == ("stop" if expected.finished else "length")
    assert reply.model_extra["alignlab"]["strategy"] == URIAL
    assert server[1].scheduler.steps > steps  # its samples ran in the server's scheduler


def test_a_streamed_strategy_reply_is_one_content_chunk_then_done(client, tiny_lm):
    chunks = list(
        client.completions.create(
            model="tiny", prompt="What is the capital of", max_tokens=10, temperature=0, seed=1,
            stream=True, extra_body={"alignlab": {"strategy": URIAL}},
        )
    )  # fmt: skip
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) <= 1
    expected = offline_answer(tiny_lm, URIAL, "What is the capital of", 10, 1)
    assert "".join(texts) == expected.text


def test_the_server_default_applies_and_a_request_can_turn_it_off(tiny_lm):
    with tiny_server(tiny_lm, default_strategy=URIAL) as (url, _):
        client = client_for(url)
        ask = dict(model="tiny", messages=QUERY, max_tokens=8, temperature=0, seed=2)
        with_default = client.chat.completions.create(**ask)
        assert (
            with_default.choices[0].message.content
            == offline_answer(tiny_lm, URIAL, QUERY, 8, 2).text
        )
        plain = client.chat.completions.create(**ask, extra_body={"alignlab": {"strategy": None}})
        alone = offline_answer(tiny_lm, [], QUERY, 8, 2)
        assert plain.choices[0].message.content == alone.text


@pytest.mark.parametrize("spec", [{"strategy": "urail"}, "urail", ["principles", "urail"]])
def test_an_unknown_strategy_is_400_with_a_suggestion(server, spec):
    body = {"model": "tiny", "messages": QUERY, "alignlab": {"strategy": spec}}
    status, _, data = raw_request(server[0], "POST", "/v1/chat/completions", body)
    error = json.loads(data)["error"]
    assert status == 400 and error["param"] == "alignlab.strategy"
    assert "did you mean urial" in error["message"]


def test_a_request_may_not_point_a_strategy_at_code_or_files(server):
    spec = {"strategy": "best_of_n", "n": 2, "reward": "os:system"}
    body = {"model": "tiny", "messages": QUERY, "alignlab": {"strategy": spec}}
    status, _, data = raw_request(server[0], "POST", "/v1/chat/completions", body)
    assert status == 403 and "best_of_n.reward" in json.loads(data)["error"]["message"]


def test_a_strategy_samples_in_the_scheduler_with_everyone(monkeypatch, tiny_lm):
    """A stand-in stack asks the backend for 3 samples at once: they arrive as 3 rows of one
    batch and come back as Generations; the reply reports the stack's cost."""
    from alignlab.serve import strategies

    seen = {}

    class ThreeSamples:
        strategies = []

        def answer(self, backend, queries, sampling, seeds):
            generations = backend.generate(queries * 3, sampling, [seeds[0], 7, 8])
            seen["texts"] = [g.text for g in generations]
            best = max(generations, key=lambda g: len(g.text))
            return [Answer(best.text, best.finished, best, Cost(tokens=30))]

    monkeypatch.setattr(strategies, "build", lambda spec: ThreeSamples())
    with tiny_server(tiny_lm) as (url, served):
        reply = client_for(url).completions.create(
            model="tiny", prompt="alpha", max_tokens=10, seed=5,
            extra_body={"alignlab": {"strategy": {"strategy": "three"}}},
        )  # fmt: skip
        assert reply.choices[0].text == max(seen["texts"], key=len)
        assert reply.usage.completion_tokens == 30
        assert served.scheduler.steps <= 10  # the three rows decoded together


def test_a_strategy_whose_inner_sample_fails_answers_500(monkeypatch, tiny_lm):
    from alignlab.serve import strategies

    class TooLong:
        strategies = []

        def answer(self, backend, queries, sampling, seeds):
            return backend.plain(["alpha " * 5000], sampling, seeds)  # over the context

    monkeypatch.setattr(strategies, "build", lambda spec: TooLong())
    with tiny_server(tiny_lm) as (url, served):
        with pytest.raises(openai.InternalServerError):
            client_for(url).completions.create(
                model="tiny", prompt="alpha", max_tokens=4,
                extra_body={"alignlab": {"strategy": {"strategy": "too_long"}}},
            )  # fmt: skip
        assert served.scheduler.alive


def test_a_strategy_may_be_named_by_a_string(server):
    body = {
        "model": "tiny",
        "messages": QUERY,
        "max_tokens": 4,
        "alignlab": {"strategy": "principles"},
    }
    status, _, data = raw_request(server[0], "POST", "/v1/chat/completions", body)
    assert status == 200 and json.loads(data)["choices"][0]["message"]["role"] == "assistant"
