"""Log-probs through the official openai client: OpenAI's chat and legacy completion shapes,
the numbers against one forward pass of the model over prompt + answer, streamed against
whole, stop strings, and what is refused. The tiny model is barely trained, so its answers
hold many byte tokens (half characters, invalid bytes): the bytes and offsets get exercised."""

import json

import openai
import pytest
import torch
from serving import client_for, raw_request, tiny_server
from tokenizers import SentencePieceBPETokenizer
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from alignlab.icl.base import derived_seed
from alignlab.models.generation import generate
from alignlab.serve.logprobs import TokenTable
from alignlab.serve.scheduler import fast_decoder

CHAT = [{"role": "user", "content": "What is 2 plus 3?"}]
URIAL = [{"strategy": "urial", "k": 1}]
FLOAT32_UNIT = 2.0**-24
"""u, the unit roundoff of float32: a rounded result is within a factor (1 ± u) of exact."""


def offline(tiny_lm, prompt, max_tokens, temperature=1.0, top_p=1.0, seed=0):
    model, tokenizer = tiny_lm
    return generate(
        model, tokenizer, [prompt], max_new_tokens=max_tokens, temperature=temperature,
        top_p=top_p, seeds=[seed],
    )[0]  # fmt: skip


def answer_ids(generation):
    """The answer's tokens as the reply shows them: without the stop token."""
    return generation.response_ids[:-1] if generation.finished else generation.response_ids


def reference_bytes(tokenizer, token_id):
    """A token's bytes read off GPT-2's byte alphabet (transformers' table, not the server's)."""
    if token_id in tokenizer.added_tokens_decoder:
        return tokenizer.added_tokens_decoder[token_id].content.encode()
    alphabet = {char: byte for byte, char in bytes_to_unicode().items()}
    return bytes(alphabet[char] for char in tokenizer.convert_ids_to_tokens(token_id))


def reference_token(raw):
    """OpenAI's token string of `raw`: its text, or `bytes:\\x..` for a piece of a character."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def lossy(raw_pieces):
    """The text of concatenated token bytes as the byte-level decoder makes it."""
    return b"".join(raw_pieces).decode("utf-8", "replace")


def _broken(raw):
    """Whether `raw` is not whole, valid UTF-8 (an invalid byte or a character cut short)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def ids_by_bytes(tokenizer):
    table = {reference_bytes(tokenizer, i): i for i in range(len(tokenizer))}
    assert len(table) == len(tokenizer)  # every token has its own bytes
    return table


def tolerance(model, length, logits):
    """(A,) how far a log-prob from the server may be from the offline one at each position.

    Both compute the same float32 operations, the server one token at a time with a KV cache,
    offline in one pass over the sequence: the sums run in other orders. A float32 sum of n
    terms is within n·u·Σ|terms| of exact whatever its order (Higham's γ_n), so two orders
    differ by at most 2·n·u·Σ|terms|. A logit ends a chain of R such reductions, each of at
    most n terms, n the longest of the hidden size, the MLP width and the sequence (attention
    weights the values of every position): per layer the norm, the attention scores, the
    weighted values, the output projection and the MLP's two matrices (6), then the final
    norm and the head (2). To first order its error is then at most 2·R·n·u times the scale
    of the activations, taken as max(1, max_j |z_j|). A log-prob z_i - logsumexp(z) carries
    the error of z_i and of the sum's largest terms, twice that; the log-softmax rounds a sum
    of V terms under a log, V·u more. So tol = u·(4·R·n·max(1, max|z|) + V)."""
    config = model.config
    reductions = 6 * config.num_hidden_layers + 2
    longest = max(config.hidden_size, config.intermediate_size, length)
    scale = logits.abs().amax(-1).clamp(min=1.0)
    return FLOAT32_UNIT * (4 * reductions * longest * scale + logits.shape[-1])


def offline_logprobs(tiny_lm, prompt_ids, answer):
    """(A, V) log-softmax of the logits that predicted each answer token, from one forward
    over prompt + answer (no cache, no padding), their (A, V) logits, and the tolerance."""
    model, _ = tiny_lm
    ids = torch.tensor([prompt_ids + answer])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return logits.log_softmax(-1), logits, tolerance(model, ids.shape[1], logits)


def check_against_offline(tiny_lm, content, generation, k):
    """The chat `logprobs.content` of one choice against the model's numbers."""
    _, tokenizer = tiny_lm
    answer = answer_ids(generation)
    assert [bytes(e.bytes) for e in content] == [reference_bytes(tokenizer, t) for t in answer]
    logps, logits, tol = offline_logprobs(tiny_lm, generation.prompt_ids, answer)
    by_bytes = ids_by_bytes(tokenizer)
    for position, (entry, token) in enumerate(zip(content, answer, strict=True)):
        row, slack = logps[position], float(tol[position])
        assert abs(entry.logprob - float(row[token])) <= slack
        top = entry.top_logprobs
        values = [t.logprob for t in top]
        assert len(top) == k and values == sorted(values, reverse=True)
        for alternative in top:
            assert (
                abs(alternative.logprob - float(row[by_bytes[bytes(alternative.bytes)]])) <= slack
            )
        kth = float(row.topk(k).values[-1])
        assert values[-1] >= kth - slack  # no token clearly more likely is left out
        if float(row[token]) > kth + slack:  # the sampled token is in the top k
            assert entry.token in [t.token for t in top]
    return logits, answer, tol


@pytest.mark.parametrize(("temperature", "top_p", "n"), [(0.7, 1.0, 1), (1.3, 0.8, 2)])
def test_chat_logprobs_are_the_models_log_softmax_at_each_answer_token(
    client, tiny_lm, temperature, top_p, n
):
    reply = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=16, temperature=temperature, top_p=top_p,
        seed=4, n=n, logprobs=True, top_logprobs=5,
    )  # fmt: skip
    for choice, seed in zip(reply.choices, [4, derived_seed(4, 1)][:n], strict=True):
        content = choice.logprobs.content
        assert content and all(isinstance(e.token, str) and e.logprob <= 0 for e in content)
        joined = b"".join(bytes(e.bytes) for e in content)
        assert joined.decode("utf-8", "replace") == choice.message.content
        generation = offline(tiny_lm, CHAT, 16, temperature, top_p, seed)
        logits, answer, tol = check_against_offline(tiny_lm, content, generation, k=5)
        # the raw logits' log-softmax, not the tempered distribution the tokens came from
        tempered = (logits / temperature).log_softmax(-1)
        # (each number is within tol of the raw one, so a gap over 2·tol tells them apart)
        assert any(
            abs(e.logprob - float(tempered[p, t])) > 2 * float(tol[p])
            for p, (e, t) in enumerate(zip(content, answer))
        )


def test_token_strings_and_bytes_follow_openai(client, tiny_lm):
    """A token of whole characters is its text; a piece of a character is `bytes:\\x..`."""
    _, tokenizer = tiny_lm
    seen = []
    for seed in range(3):
        reply = client.chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=24, seed=seed, logprobs=True, top_logprobs=20
        )
        for entry in reply.choices[0].logprobs.content:
            seen += [(entry.token, bytes(entry.bytes))]
            seen += [(t.token, bytes(t.bytes)) for t in entry.top_logprobs]
    assert any(token.startswith("bytes:") for token, _ in seen)  # the tiny model samples bytes
    assert all(token == reference_token(raw) for token, raw in seen)
    assert {raw for _, raw in seen} <= set(ids_by_bytes(tokenizer))


def test_a_greedy_answers_tokens_are_first_in_their_top_logprobs(client):
    reply = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=16, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens - (
        reply.choices[0].finish_reason == "stop"
    )
    for entry in content:
        first = entry.top_logprobs[0]
        assert (first.token, first.bytes, first.logprob) == (
            entry.token,
            entry.bytes,
            entry.logprob,
        )


def test_streamed_logprobs_add_up_to_the_whole_replys(client):
    ask = dict(model="tiny", messages=CHAT, max_tokens=24, seed=9, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**ask)
    streamed = []
    for chunk in client.chat.completions.create(**ask, stream=True):
        if not chunk.choices or chunk.choices[0].logprobs is None:
            continue
        entries = chunk.choices[0].logprobs.content
        # each chunk carries the tokens whose text it shows (no stop strings: exactly its text)
        joined = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace")
        assert joined == (chunk.choices[0].delta.content or "")
        streamed.extend(entries)
    assert streamed == whole.choices[0].logprobs.content


def test_legacy_completion_logprobs(client, tiny_lm):
    _, tokenizer = tiny_lm
    prompt = "What is the capital of"
    reply = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=16, seed=3, logprobs=3
    )
    choice = reply.choices[0]
    generation = offline(tiny_lm, prompt, 16, seed=3)
    answer = answer_ids(generation)
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(answer)
    assert len(logprobs.top_logprobs) == len(logprobs.text_offset) == len(answer)
    logps, _, tol = offline_logprobs(tiny_lm, generation.prompt_ids, answer)
    for position, token in enumerate(answer):
        assert (
            abs(logprobs.token_logprobs[position] - float(logps[position, token])) <= tol[position]
        )
        top = logprobs.top_logprobs[position]
        # the 3 most likely, most likely first, and the sampled token: up to logprobs + 1
        assert (
            len(top) in (3, 4)
            and top[logprobs.tokens[position]] == logprobs.token_logprobs[position]
        )
        values = list(top.values())[:3]
        assert values == sorted(values, reverse=True)
    # text_offset: where each token starts in the choice's text (a piece of a character at it)
    offsets, text = logprobs.text_offset, choice.text
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < max(len(text), 1)
    raw = [reference_bytes(tokenizer, t) for t in answer]
    assert logprobs.tokens == [reference_token(r) for r in raw]
    for position, (token, offset) in enumerate(zip(logprobs.tokens, offsets)):
        before = b"".join(raw[:position])
        if not _broken(before) and not token.startswith("bytes:"):  # whole characters
            assert len(before.decode()) == offset and text[offset : offset + len(token)] == token


def test_legacy_logprobs_0_give_the_sampled_tokens_only_and_stream_as_whole(client):
    ask = dict(model="tiny", prompt="alpha beta", max_tokens=12, seed=5, logprobs=0)
    whole = client.completions.create(**ask).choices[0].logprobs
    assert whole.top_logprobs == [{t: lp} for t, lp in zip(whole.tokens, whole.token_logprobs)]
    streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in client.completions.create(**ask, stream=True):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            for key, values in streamed.items():
                values.extend(getattr(chunk.choices[0].logprobs, key))
    assert streamed == whole.model_dump(include=set(streamed))


def test_tokens_past_a_stop_string_are_not_reported(client, tiny_lm):
    """The reported tokens are those that start inside the answer cut at the stop string: the
    last one may run into the stop string, none starts in it."""
    _, tokenizer = tiny_lm
    greedy = offline(tiny_lm, "alpha beta", 30, temperature=0.0)
    full = greedy.text
    stop = full[3:6]  # a piece from the middle of the greedy answer
    cut = full[: full.find(stop)]
    ask = dict(
        model="tiny", prompt="alpha beta", max_tokens=30, temperature=0, stop=stop, logprobs=1
    )
    reply = client.completions.create(**ask).choices[0]
    assert (reply.text, reply.finish_reason) == (cut, "stop")
    tokens = reply.logprobs.tokens
    raw = [reference_bytes(tokenizer, t) for t in greedy.response_ids]
    count = len(tokens)
    assert 0 < count < len(raw)
    assert tokens == [reference_token(r) for r in raw[:count]]
    assert all(offset < len(cut) for offset in reply.logprobs.text_offset)
    assert len(lossy(raw[: count - 1])) < len(cut) <= len(lossy(raw[:count]))
    streamed = []
    for chunk in client.completions.create(**ask, stream=True):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed.extend(chunk.choices[0].logprobs.tokens)
    assert streamed == tokens


def test_replies_without_logprobs_say_null(server):
    url = server[0]
    for path, body in [
        ("/v1/chat/completions", {"messages": CHAT}),
        ("/v1/completions", {"prompt": "alpha"}),
        ("/v1/completions", {"prompt": "alpha", "logprobs": False}),  # legacy "none"
    ]:
        status, _, data = raw_request(url, "POST", path, {"model": "tiny", "max_tokens": 3} | body)
        assert status == 200 and json.loads(data)["choices"][0]["logprobs"] is None
        stream = {"model": "tiny", "max_tokens": 3, "stream": True} | body
        status, _, data = raw_request(url, "POST", path, stream)
        chunks = [json.loads(e[6:]) for e in data.decode().split("\n\n") if e.startswith("data: {")]
        assert status == 200 and all(c["choices"][0]["logprobs"] is None for c in chunks)


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),  # without logprobs
        ("/v1/chat/completions", {"logprobs": False, "top_logprobs": 0}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": "3"}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": 1}, "logprobs"),
        ("/v1/completions", {"logprobs": 6}, "logprobs"),
        ("/v1/completions", {"logprobs": -1}, "logprobs"),
        ("/v1/completions", {"logprobs": True}, "logprobs"),
        ("/v1/completions", {"logprobs": 2, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "alignlab": {"strategy": URIAL}}, "logprobs"),
        ("/v1/completions", {"logprobs": 1, "alignlab": {"strategy": URIAL}}, "logprobs"),
    ],
)
def test_wrong_logprobs_fields_are_400_naming_them(server, path, fields, param):
    body = {"model": "tiny", "max_tokens": 2} | (
        {"messages": CHAT} if "chat" in path else {"prompt": "alpha"}
    )
    status, _, data = raw_request(server[0], "POST", path, body | fields)
    error = json.loads(data)["error"]
    assert status == 400 and error["param"] == param and param in error["message"]
    assert error["type"] == "invalid_request_error"
    if "alignlab" in fields:
        assert "not available with a strategy" in error["message"]


def test_a_server_strategy_refuses_logprobs_unless_the_request_turns_it_off(tiny_lm):
    with tiny_server(tiny_lm, default_strategy=URIAL) as (url, _):
        client = client_for(url)
        ask = dict(model="tiny", messages=CHAT, max_tokens=4, seed=1, logprobs=True)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**ask)
        assert caught.value.body["param"] == "logprobs"
        reply = client.chat.completions.create(**ask, extra_body={"alignlab": {"strategy": None}})
        assert len(reply.choices[0].logprobs.content) > 0


def test_the_token_table_gives_each_tokens_bytes(tiny_lm):
    """Byte-level: every id's bytes are GPT-2's alphabet read back. SentencePiece (no byte
    alphabet): a sentence's tokens add up to its text, with the leading space its decoder
    strips from a string's start."""
    _, tokenizer = tiny_lm
    table = TokenTable(tokenizer, fast_decoder(tokenizer), tokenizer.pad_token_id)
    for token_id in range(len(tokenizer)):
        raw = reference_bytes(tokenizer, token_id)
        assert table(token_id) == (reference_token(raw), raw)
    sentence = "the café is naïve: alpha beta gamma"
    core = SentencePieceBPETokenizer()
    core.train_from_iterator([sentence] * 4, vocab_size=120, special_tokens=["<unk>", "</s>"])
    metaspace = PreTrainedTokenizerFast(tokenizer_object=core._tokenizer, eos_token="</s>")
    table = TokenTable(metaspace, fast_decoder(metaspace), metaspace.eos_token_id)
    ids = metaspace.encode(sentence, add_special_tokens=False)
    assert metaspace.decode(ids) == sentence
    assert "".join(table(t)[0] for t in ids) == " " + sentence
