"""The server through the official openai client: shapes, sampling parity with the offline
sampler, streaming, stop strings, n > 1, seeds."""

import concurrent.futures
import json

import openai
import pytest
from serving import raw_request

from alignlab.icl.base import derived_seed
from alignlab.models.generation import generate

CHAT = [{"role": "user", "content": "What is 2 plus 3?"}]


def offline(tiny_lm, prompt, max_tokens, temperature=1.0, top_p=1.0, seed=0):
    model, tokenizer = tiny_lm
    return generate(
        model, tokenizer, [prompt], max_new_tokens=max_tokens, temperature=temperature,
        top_p=top_p, seeds=[seed],
    )[0]  # fmt: skip


def test_chat_completion_has_the_openai_shape(client):
    reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5, seed=1)
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion" and reply.model == "tiny" and reply.created > 0
    (choice,) = reply.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_completion_has_the_openai_shape(client):
    reply = client.completions.create(model="tiny", prompt="alpha beta", max_tokens=4, seed=1)
    assert reply.id.startswith("cmpl-") and reply.object == "text_completion"
    assert isinstance(reply.choices[0].text, str) and reply.choices[0].index == 0
    assert reply.usage.prompt_tokens > 0


@pytest.mark.parametrize(("temperature", "top_p"), [(0.0, 1.0), (1.0, 1.0), (0.8, 0.9)])
def test_a_lone_request_equals_offline_generate_with_its_seed(client, tiny_lm, temperature, top_p):
    expected = offline(tiny_lm, CHAT, 24, temperature, top_p, seed=7)
    reply = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=24, temperature=temperature, top_p=top_p, seed=7
    )
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == len(expected.response_ids)
    assert reply.choices[0].finish_reason == ("stop" if expected.finished else "length")
    prompt = "What is the capital of"
    expected = offline(tiny_lm, prompt, 16, temperature, top_p, seed=3)
    reply = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=16, temperature=temperature, top_p=top_p, seed=3
    )
    assert reply.choices[0].text == expected.text


def test_the_same_seed_gives_the_same_answer_and_another_seed_another(client):
    def ask(seed):
        reply = client.completions.create(model="tiny", prompt="alpha", max_tokens=20, seed=seed)
        return reply.choices[0].text

    assert ask(11) == ask(11)
    assert len({ask(11), ask(12), ask(13)}) > 1


def test_n_choices_use_the_seed_then_derived_seeds(client, tiny_lm):
    reply = client.completions.create(model="tiny", prompt="beta", max_tokens=12, n=3, seed=5)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    seeds = [5, derived_seed(5, 1), derived_seed(5, 2)]
    assert [c.text for c in reply.choices] == [
        offline(tiny_lm, "beta", 12, seed=s).text for s in seeds
    ]


def test_a_list_of_prompts_gets_n_choices_each(client, tiny_lm):
    reply = client.completions.create(
        model="tiny", prompt=["alpha", "gamma"], max_tokens=6, n=2, seed=4
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[2].text == offline(tiny_lm, "gamma", 6, seed=4).text


def test_streamed_chunks_add_up_to_the_whole_answer(client):
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=20, seed=9)
    stream = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=20, seed=9, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )


def test_a_streamed_completion_with_n_choices(client):
    whole = client.completions.create(model="tiny", prompt="delta", max_tokens=10, n=2, seed=2)
    texts = {0: "", 1: ""}
    for chunk in client.completions.create(
        model="tiny", prompt="delta", max_tokens=10, n=2, seed=2, stream=True
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]


def test_the_stream_is_server_sent_events_ending_with_done(server):
    body = {"model": "tiny", "prompt": "alpha", "max_tokens": 3, "stream": True, "seed": 1}
    status, headers, data = raw_request(server[0], "POST", "/v1/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = data.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])


def test_stop_strings_cut_the_answer_and_finish_with_stop(client, tiny_lm):
    full = offline(tiny_lm, "alpha beta", 30, temperature=0.0).text
    assert len(full) > 6, full
    stop = full[3:6]  # a piece from the middle of the greedy answer
    cut = full[: full.find(stop)]
    for stream in (False, True):
        kwargs = dict(
            model="tiny", prompt="alpha beta", max_tokens=30, temperature=0, stop=[stop, "zzzz"]
        )
        if stream:
            chunks = list(client.completions.create(**kwargs, stream=True))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            reply = client.completions.create(**kwargs)
            text, reason = reply.choices[0].text, reply.choices[0].finish_reason
        assert (text, reason) == (cut, "stop")
    chat = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=30, temperature=0, stop=stop
    )
    assert stop not in chat.choices[0].message.content


def test_concurrent_requests_batched_together_answer_as_alone(client, server):
    """Greedy: 6 requests of different prompt lengths arrive together and decode in one batch
    (merged caches, left padding both ways); each answer equals its answer alone."""
    prompts = ["alpha", "What is the capital of gamma plus delta", "beta gamma", "sorry",
               "what is the answer plus equals", "delta"]  # fmt: skip

    def ask(prompt):
        reply = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0)
        return reply.choices[0].text

    alone = [ask(p) for p in prompts]
    steps = server[1].scheduler.steps
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone
    # batched: far fewer decode steps than 6 answers one after the other would take
    assert server[1].scheduler.steps - steps < 4 * 24


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    status, _, data = raw_request(server[0], "GET", "/health", key=None)
    health = json.loads(data)
    assert status == 200
    assert health["status"] == "ok" and health["models"]["tiny"]["alive"]


def test_an_unknown_model_is_404_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=CHAT, max_tokens=2)
    error = caught.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "tiny" in error["message"]
