"""The Monte Carlo KL from generate + sequence_logps against the exact KL by enumeration.

Seven tokens, responses of at most three: 187 possible responses, each one's probability
computed with a plain full-logits forward.
"""

import math

import torch

from alignlab.eval.harness import load_for_eval
from alignlab.eval.stats import kl_estimate, mean_ci
from alignlab.models.generation import generate
from alignlab.models.logprobs import sequence_logps

MAX_NEW = 3


def _exact_logp(model, prompt_ids, response):
    ids = torch.tensor([prompt_ids + response])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0].double(), -1)
    start = len(prompt_ids) - 1
    return sum(logps[start + t, token].item() for t, token in enumerate(response))


def _all_responses(vocab_size, stops):
    out = []

    def extend(prefix):
        for token in range(vocab_size):
            seq = prefix + [token]
            if token in stops or len(seq) == MAX_NEW:
                out.append(seq)
            else:
                extend(seq)

    extend([])
    return out


def test_kl_estimate_matches_exact_enumeration(small_model_dirs):
    policy, ref = (load_for_eval(d, "cpu") for d in small_model_dirs)
    gens = generate(
        policy.model, policy.tokenizer, ["a b"] * 4000, max_new_tokens=MAX_NEW, batch_size=1000
    )
    logps = sequence_logps(policy.model, policy.tokenizer, gens, batch_size=1000)
    ref_logps = sequence_logps(ref.model, ref.tokenizer, gens, batch_size=1000)
    est = kl_estimate(logps, ref_logps)

    prompt_ids = gens[0].prompt_ids
    responses = _all_responses(len(policy.tokenizer), stops={0, 1})
    assert len(responses) == 187
    p = [_exact_logp(policy.model, prompt_ids, r) for r in responses]
    q = [_exact_logp(ref.model, prompt_ids, r) for r in responses]
    assert math.fsum(math.exp(x) for x in p) == pytest_approx_one()
    exact_kl = math.fsum(math.exp(x) * (x - y) for x, y in zip(p, q))
    exact_entropy = -math.fsum(math.exp(x) * x for x in p)

    assert exact_kl > 0.5  # far from trivial
    assert est.se < 0.05 * exact_kl
    assert abs(est.mean - exact_kl) < 3 * est.se, (est, exact_kl)
    assert est.lower < exact_kl < est.upper or abs(est.mean - exact_kl) < 3 * est.se
    # the samples follow the policy's own distribution: entropy matches too
    entropy = mean_ci(-logps)
    assert abs(entropy.mean - exact_entropy) < 3 * entropy.se


def pytest_approx_one():
    import pytest

    return pytest.approx(1.0, abs=1e-6)
