"""The endpoint judge against a scripted stub server on 127.0.0.1: log-probs and text
verdicts, the fallback remembered, the cache, retries and backoff, timeouts, malformed
replies, the API key."""

import json
import time

import pytest
from judging import chat_reply

from alignlab.judges import EndpointJudge, JudgeError
from alignlab.judges import endpoint as endpoint_module

PROMPTS = ["What is 1 plus 2?", [{"role": "user", "content": "Say hi."}], "alpha"]
GOOD = ["3", "hi", "beta"]
BAD = ["4", "no", "gamma"]
REFUSAL = {
    "error": {
        "message": "log-probs are not returned by this server",
        "type": "invalid_request_error",
        "param": "logprobs",
        "code": "unsupported_parameter",
    }
}


def first_shown(body):
    """The response the judge showed as A."""
    question = body["messages"][-1]["content"]
    return question.split("[Response A]\n", 1)[1].split("\n\n[Response B]", 1)[0]


def logprob_script(index, body):
    """P("A") 0.8 when the good response is shown first, 0.3 when it is second; spread over
    "A" / " A" and with a token that is no verdict, as a real top-k list is."""
    if first_shown(body) in GOOD:
        top = {"A": 0.6, " A": 0.2, "B": 0.15, "x": 0.05}  # P_A = 0.8 / 0.95
    else:
        top = {"B": 0.63, "A": 0.27, "\n": 0.1}  # P_A = 0.27 / 0.9 = 0.3
    return 200, chat_reply(max(top, key=top.get), top)


def text_script(index, body):
    """Refuses logprobs as alignlab serve did; else the text verdict: the good response."""
    if body.get("logprobs"):
        return 400, REFUSAL
    return 200, chat_reply("A" if first_shown(body) in GOOD else "B")


@pytest.fixture(autouse=True)
def no_backoff_sleep(monkeypatch):
    """Record the backoff delays instead of sleeping them."""
    delays = []
    monkeypatch.setattr(endpoint_module, "_sleep", delays.append)
    return delays


def test_logprobs_verdicts_renormalised_and_both_orders_averaged(stub, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    stub.respond = logprob_script
    judge = EndpointJudge(stub.url, "judge-model", api_key_env="JUDGE_TEST_KEY", concurrency=3)
    p = judge.compare(PROMPTS, GOOD, BAD)
    forward, swapped = 0.8 / 0.95, 0.3
    assert p == pytest.approx([(forward + 1 - swapped) / 2] * 3, abs=1e-12)
    assert judge.last_stats.position_bias == pytest.approx((forward + swapped) / 2 - 0.5)
    assert judge.use_logprobs and judge.requests_sent == 6 == len(stub.requests)
    body, headers = stub.requests[0]
    assert body["model"] == "judge-model" and body["max_tokens"] == 1
    assert body["temperature"] == 0 and body["logprobs"] is True and body["top_logprobs"] == 5
    assert headers["Authorization"] == "Bearer sk-secret-123"


def test_a_refusal_of_logprobs_falls_back_to_text_once_per_judge(stub):
    stub.respond = text_script
    judge = EndpointJudge(stub.url, "m", concurrency=1)
    assert judge.compare(PROMPTS, GOOD, BAD) == [1.0, 1.0, 1.0]
    assert judge.compare(PROMPTS, BAD, GOOD) == [0.0, 0.0, 0.0]
    assert not judge.use_logprobs
    asked = [body.get("logprobs") for body, _ in stub.requests]
    assert asked.count(True) == 1 and len(asked) == 1 + 12  # refused once, then never asked
    assert judge.last_stats.position_bias == 0.0 and judge.last_stats.consistency == 1.0


def test_a_reply_without_logprobs_is_read_as_text_and_remembered(stub):
    stub.respond = lambda index, body: (
        200,
        chat_reply("A" if first_shown(body) in GOOD else "B", logprobs_field=index % 2 == 0),
    )
    judge = EndpointJudge(stub.url, "m", concurrency=1)
    assert judge.compare(PROMPTS, GOOD, BAD) == [1.0, 1.0, 1.0]
    assert len(stub.requests) == 6  # the first reply's text was used: nothing asked twice
    assert [body.get("logprobs") for body, _ in stub.requests] == [True] + [None] * 5


def test_pointwise_scores_from_logprobs(stub):
    top = {"4": 0.5, " 5": 0.25, "3": 0.15, "ok": 0.1}
    stub.respond = lambda index, body: (200, chat_reply("4", top))
    judge = EndpointJudge(stub.url, "m")
    expected = (4 * 0.5 + 5 * 0.25 + 3 * 0.15) / 0.9
    assert judge.score(["q", "r"], ["a", "b"]) == pytest.approx([expected] * 2, abs=1e-12)


def test_a_rerun_with_the_cache_sends_no_request(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    stub.respond = text_script  # the fallback too is found again on a rerun
    cache = tmp_path / "cache"
    first = EndpointJudge(stub.url, "m", cache_dir=cache, api_key_env="JUDGE_TEST_KEY")
    p = first.compare(PROMPTS, GOOD, BAD)
    sent = len(stub.requests)
    assert sent >= 6 and first.cache_hits == 0
    files = sorted(cache.rglob("*.json"))
    assert len(files) == 6 and not [f for f in cache.rglob("*") if ".tmp-" in f.name]
    for path in files:  # the key is never stored, nor part of what a file is named by
        assert "sk-secret" not in path.read_text() and "sk-secret" not in str(path)
        assert json.loads(path.read_text())["source"] == "text"

    again = EndpointJudge(stub.url, "m", cache_dir=cache, api_key_env="JUDGE_TEST_KEY")
    assert again.compare(PROMPTS, GOOD, BAD) == p
    assert len(stub.requests) == sent and again.requests_sent == 0 and again.cache_hits == 6

    files[0].write_text('{"probs": [0.5')  # a torn entry: asked again and rewritten
    third = EndpointJudge(stub.url, "m", cache_dir=cache, concurrency=1)
    assert third.compare(PROMPTS, GOOD, BAD) == p
    assert third.cache_hits == 5 and third.requests_sent == 2  # refused, then the text verdict
    assert json.loads(files[0].read_text())["probs"] in ([1.0, 0.0], [0.0, 1.0])

    other = EndpointJudge(stub.url, "another-model", cache_dir=cache)
    other.compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    assert other.cache_hits == 0  # the model is part of the key


def test_retries_with_backoff_on_5xx_and_429_honouring_retry_after(stub, no_backoff_sleep):
    script = [
        (500, {"error": "boom"}),
        (502, b"bad gateway"),
        (429, {"error": "slow down"}, {"Retry-After": "0.25"}),
    ]
    stub.respond = lambda index, body: script[index] if index < 3 else logprob_script(index, body)
    judge = EndpointJudge(stub.url, "m", max_retries=3, backoff=0.1, max_backoff=5, concurrency=1)
    assert judge.compare(["q"], [GOOD[0]], [BAD[0]]) == pytest.approx([(0.8 / 0.95 + 0.7) / 2])
    assert len(stub.requests) == 5 and judge.requests_sent == 5  # 4 for the first order
    first, second, third = no_backoff_sleep
    assert 0.05 <= first <= 0.1 and 0.1 <= second <= 0.2  # backoff * 2^attempt, half jitter
    assert third == 0.25  # what Retry-After asked


def test_retries_exhausted_is_an_error_naming_url_model_and_reply(stub, no_backoff_sleep):
    stub.respond = lambda index, body: (503, {"error": {"message": "overloaded"}})
    judge = EndpointJudge(stub.url, "judge-x", max_retries=2, backoff=0.01)
    with pytest.raises(JudgeError) as caught:
        judge.score(["q"], ["a"])
    message = str(caught.value)
    assert f"{stub.url}/chat/completions" in message and "'judge-x'" in message
    assert "HTTP 503" in message and "overloaded" in message and "after 3 attempts" in message
    assert len(stub.requests) == 3 and len(no_backoff_sleep) == 2


def test_an_unretryable_http_error_fails_at_once(stub):
    stub.respond = lambda index, body: (401, {"error": {"message": "bad key"}})
    with pytest.raises(JudgeError, match="HTTP 401: .*bad key"):
        EndpointJudge(stub.url, "m").score(["q"], ["a"])
    assert len(stub.requests) == 1


def test_a_server_slower_than_the_timeout_is_an_error_after_retries(stub):
    stub.respond = lambda index, body: (200, chat_reply("A"), {}, 1.0)
    judge = EndpointJudge(stub.url, "m", timeout=0.2, max_retries=1)
    start = time.perf_counter()
    with pytest.raises(JudgeError, match=r"no answer .*after 2 attempts, timeout 0.2 s"):
        judge.score(["q"], ["a"])
    assert time.perf_counter() - start < 1.5
    assert len(stub.requests) == 2


@pytest.mark.parametrize(
    ("reply", "named"),
    [
        ({"choices": []}, "no choices in the reply"),
        ({"object": "error"}, "no choices in the reply"),
        (chat_reply(""), "empty content in the reply"),
        (chat_reply("Z"), "verdict 'Z' is not one of A, B"),
        (b"<html>oops</html>", "a reply that is not JSON: '<html>oops</html>'"),
    ],
)
def test_a_malformed_reply_is_an_error_naming_what_came_back(stub, reply, named):
    stub.respond = lambda index, body: (200, reply)
    judge = EndpointJudge(stub.url, "m", max_retries=1)
    with pytest.raises(JudgeError) as caught:
        judge.compare(["q"], ["a"], ["b"])
    message = str(caught.value)
    assert named in message and stub.url in message and "'m'" in message
    assert "after 2 attempts" in message


def test_a_verdict_outside_the_top_logprobs_falls_to_the_text(stub):
    stub.respond = lambda index, body: (200, chat_reply("Sure", {"Sure": 0.9, "I": 0.1}))
    with pytest.raises(JudgeError, match="verdict 'Sure' is not one of A, B"):
        EndpointJudge(stub.url, "m", max_retries=0).compare(["q"], ["a"], ["b"])


def test_no_key_in_the_environment_sends_no_authorization(stub, monkeypatch):
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    stub.respond = lambda index, body: (200, chat_reply("3"))
    judge = EndpointJudge(stub.url, "m", api_key_env="JUDGE_TEST_KEY")
    assert judge.score(["q"], ["a"]) == [3.0]
    assert "Authorization" not in stub.requests[0][1]


def test_concurrency_bounds_the_requests_in_flight(stub):
    in_flight = {"now": 0, "most": 0}

    def slow(index, body):
        with stub.lock:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
        time.sleep(0.2)
        with stub.lock:
            in_flight["now"] -= 1
        return logprob_script(index, body)

    stub.respond = slow
    judge = EndpointJudge(stub.url, "m", concurrency=3)
    p = judge.compare(PROMPTS * 2, GOOD * 2, BAD * 2)  # 12 requests
    assert 1 < in_flight["most"] <= 3
    assert p == pytest.approx([(0.8 / 0.95 + 1 - 0.3) / 2] * 6, abs=1e-12)  # in order


def test_settings_are_checked():
    from alignlab.config import ConfigError

    with pytest.raises(ConfigError, match="not an http"):
        EndpointJudge("localhost:8000/v1", "m")
    with pytest.raises(ConfigError, match="concurrency >= 1"):
        EndpointJudge("http://127.0.0.1:1/v1", "m", concurrency=0)
