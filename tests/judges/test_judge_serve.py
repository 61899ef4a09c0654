"""The endpoint judge against `alignlab serve` (tests/serve/serving.py's live server) with a
tiny model built to answer "A" or "B": the text verdicts where the server refuses logprobs,
the log-probs where it returns them, and either way the verdicts of the local judge reading
the same model."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serving import API_KEY, tiny_server  # noqa: E402

from alignlab.config import ModelConfig  # noqa: E402
from alignlab.judges import EndpointJudge, LocalJudge  # noqa: E402
from alignlab.models.loading import load_model, load_tokenizer  # noqa: E402
from alignlab.models.tiny import build_tiny_model, tiny_llama_config  # noqa: E402

PROMPTS = ["What is 1 plus 2?", "alpha beta", [{"role": "user", "content": "gamma?"}], "delta"]
FIRST = ["3", "gamma", "delta", "sorry cannot help"]
SECOND = ["4", "beta", "alpha", "the answer is 2"]


@pytest.fixture(scope="module")
def verdict_lm(tmp_path_factory, tiny_tokenizer):
    """A tiny Llama whose only non-zero logits are those of "A" and "B": +-50 h_0, with h_0
    the first coordinate of the final normed hidden state. Its greedy answer is "A" when
    h_0 > 0, else "B", and depends on the whole input."""
    config = tiny_llama_config(
        len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4, tie_word_embeddings=False
    )
    config.initializer_range = 0.5
    folder = build_tiny_model(tmp_path_factory.mktemp("judges") / "ab", tiny_tokenizer, config)
    cfg = ModelConfig(path=str(folder))
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("A"), 0] = 50.0
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("B"), 0] = -50.0
    model.eval()
    return model, tokenizer


def check_against_local(judge, p, local_first):
    assert all(0.0 <= x <= 1.0 for x in p)
    stats = judge.last_stats
    served_first = stats.first_preferred + stats.first_preferred_swapped
    # the served greedy verdict is "A" exactly where the local judge puts P("A") above 1/2
    assert [x > 0.5 for x in served_first] == [x > 0.5 for x in local_first]
    if judge.use_logprobs:  # the server returned log-probs
        assert all(0.0 <= x <= 1.0 for x in served_first)
    else:  # text verdicts: P("A") is 1 or 0, so every average is 0, 1/2 or 1
        assert served_first == [1.0 if x > 0.5 else 0.0 for x in local_first]
        assert set(p) <= {0.0, 0.5, 1.0}


def test_endpoint_judge_against_alignlab_serve(verdict_lm, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_JUDGE_TEST_KEY", API_KEY)
    local = LocalJudge(*verdict_lm)
    local.compare(PROMPTS, FIRST, SECOND)
    local_first = local.last_stats.first_preferred + local.last_stats.first_preferred_swapped
    assert len({x > 0.5 for x in local_first}) == 2  # both verdicts occur
    with tiny_server(verdict_lm, name="judge") as (url, _):

        def judge():
            return EndpointJudge(
                f"{url}/v1", "judge", api_key_env="ALIGNLAB_JUDGE_TEST_KEY", concurrency=2
            )

        # whichever the server allows: log-probs, or a refusal and then text verdicts
        either = judge()
        p = either.compare(PROMPTS, FIRST, SECOND)
        check_against_local(either, p, local_first)
        sent = either.requests_sent
        assert either.compare(PROMPTS, FIRST, SECOND) == p
        assert either.requests_sent - sent == 2 * len(PROMPTS)  # one request per conversation
        # the text path, as a judge that has fallen back reads it
        text = judge()
        text.use_logprobs = False
        check_against_local(text, text.compare(PROMPTS, FIRST, SECOND), local_first)
        assert not text.use_logprobs
