"""sequence_logps(): teacher-forced log-probs equal the log-probs of the sampled tokens."""

import pytest
import torch

from alignlab.eval.harness import load_for_eval
from alignlab.models.generation import Generation, generate, stop_token_ids
from alignlab.models.logprobs import sequence_logps

PROMPTS = ["What is 1 plus 2?", [{"role": "user", "content": "What is 3 plus 4?"}], "alpha", "a"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_for_eval(tiny_model_dir, "cpu")


def test_match_generation_time_scores(tiny):
    model, tok = tiny.model, tiny.tokenizer
    stops = stop_token_ids(model, tok)
    gens, expected = [], []
    for i, prompt in enumerate(PROMPTS):
        text = (
            prompt
            if isinstance(prompt, str)
            else tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        torch.manual_seed(i)
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=12,
            eos_token_id=stops,
            pad_token_id=tok.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        new = out.sequences[0, len(ids) :].tolist()
        cut = next((t + 1 for t, tok_id in enumerate(new) if tok_id in stops), len(new))
        logp = sum(
            torch.log_softmax(out.scores[t][0].double(), -1)[new[t]].item() for t in range(cut)
        )
        gens.append(Generation(text, ids, new[:cut], "", cut < len(new) or new[-1] in stops))
        expected.append(logp)
    got = sequence_logps(model, tok, gens, batch_size=3)
    assert got.shape == (len(PROMPTS),) and got.dtype == torch.float32
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4)


def test_match_naive_forward_on_batched_samples(tiny):
    model, tok = tiny.model, tiny.tokenizer
    gens = generate(model, tok, PROMPTS * 3, max_new_tokens=10, batch_size=5, seed=3)
    naive = []
    for g in gens:
        ids = torch.tensor([g.prompt_ids + g.response_ids])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0].double(), -1)
        start = len(g.prompt_ids) - 1
        naive.append(
            sum(logps[start + t, tok_id].item() for t, tok_id in enumerate(g.response_ids))
        )
    naive = torch.tensor(naive, dtype=torch.float64)
    for batch_size in (1, 4, 32):
        got = sequence_logps(model, tok, gens, batch_size=batch_size)
        assert torch.allclose(got.double(), naive, atol=1e-4)


def test_empty_inputs(tiny):
    assert sequence_logps(tiny.model, tiny.tokenizer, []).shape == (0,)
    empty = Generation("a", tiny.tokenizer("a")["input_ids"], [], "", False)
    assert sequence_logps(tiny.model, tiny.tokenizer, [empty]).tolist() == [0.0]
