import math

import pytest
import torch

from alignlab.rl.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3

D = torch.float64
N = 200_000


def _sample_estimates(p, q, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.multinomial(p, N, replacement=True, generator=g)
    logp, logq = p.log()[x], q.log()[x]
    exact = float((p * (p.log() - q.log())).sum())
    return exact, {
        "k1": kl_k1(logp, logq),
        "k2": kl_k2(logp, logq),
        "k3": kl_k3(logp, logq),
    }


def test_estimator_formulas():
    lp = torch.tensor([-1.0, -2.0, -0.1], dtype=D)
    lq = torch.tensor([-1.5, -1.0, -0.1], dtype=D)
    torch.testing.assert_close(kl_k1(lp, lq), torch.tensor([0.5, -1.0, 0.0], dtype=D))
    torch.testing.assert_close(kl_k2(lp, lq), torch.tensor([0.125, 0.5, 0.0], dtype=D))
    k3 = [math.exp(b - a) - 1 - (b - a) for a, b in zip(lp.tolist(), lq.tolist())]
    torch.testing.assert_close(kl_k3(lp, lq), torch.tensor(k3, dtype=D))
    assert (kl_k3(lp, lq) >= 0).all()


@pytest.mark.parametrize(
    "p,q",
    [
        ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5]),
        ([0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]),
        ([0.4, 0.35, 0.25], [0.38, 0.36, 0.26]),
    ],
)
def test_k1_k3_unbiased_and_k3_lower_variance(p, q):
    p, q = torch.tensor(p, dtype=D), torch.tensor(q, dtype=D)
    exact, est = _sample_estimates(p, q)
    for name in ("k1", "k3"):
        mean = est[name].mean().item()
        stderr = est[name].std().item() / math.sqrt(N)
        assert abs(mean - exact) < 4 * stderr + 1e-12, name
    assert est["k3"].var() < est["k1"].var()
    # exact expectations (not just sampled): E_p[k1] = E_p[k3] = KL(p||q)
    e_k1 = float((p * kl_k1(p.log(), q.log())).sum())
    e_k3 = float((p * kl_k3(p.log(), q.log())).sum())
    assert abs(e_k1 - exact) < 1e-12 and abs(e_k3 - exact) < 1e-12


def test_k2_biased_when_far_but_accurate_low_variance_when_close():
    far_p = torch.tensor([0.9, 0.05, 0.05], dtype=D)
    far_q = torch.tensor([0.1, 0.45, 0.45], dtype=D)
    exact, est = _sample_estimates(far_p, far_q, seed=1)
    e_k2 = float((far_p * kl_k2(far_p.log(), far_q.log())).sum())
    assert abs(e_k2 - exact) > 0.1 * exact  # clearly biased
    stderr = est["k2"].std().item() / math.sqrt(N)
    assert abs(est["k2"].mean().item() - exact) > 10 * stderr

    near_p = torch.tensor([0.4, 0.35, 0.25], dtype=D)
    near_q = torch.tensor([0.38, 0.36, 0.26], dtype=D)
    exact, est = _sample_estimates(near_p, near_q, seed=2)
    e_k2 = float((near_p * kl_k2(near_p.log(), near_q.log())).sum())
    assert abs(e_k2 - exact) < 0.05 * exact  # bias is third order in log(p/q)
    assert est["k2"].var() < 0.01 * est["k1"].var()


def test_adaptive_controller_follows_ziegler_rule():
    c = AdaptiveKLController(kl_coef=0.2, target=6.0, horizon=10000)
    assert c.kl_coef == 0.2
    # KL above target: error clipped at +0.2
    v = c.update(current_kl=12.0, n_steps=256)
    assert v == c.kl_coef
    assert math.isclose(c.kl_coef, 0.2 * (1 + 0.2 * 256 / 10000))
    # below target, inside the clip range: e = 5/6 - 1
    before = c.kl_coef
    c.update(torch.tensor(5.0), 512)
    assert math.isclose(c.kl_coef, before * (1 + (5 / 6 - 1) * 512 / 10000))
    # far below target: clipped at -0.2
    before = c.kl_coef
    c.update(0.0, 100)
    assert math.isclose(c.kl_coef, before * (1 - 0.2 * 100 / 10000))
    # at target: unchanged
    before = c.kl_coef
    c.update(6.0, 100)
    assert c.kl_coef == before


def test_controllers_state_dict_roundtrip():
    c = AdaptiveKLController(0.1, 3.0, 5000)
    for kl in (1.0, 4.0, 10.0):
        c.update(kl, 64)
    resumed = AdaptiveKLController(0.5, 1.0, 1.0)
    resumed.load_state_dict(c.state_dict())
    assert resumed.state_dict() == c.state_dict()
    c.update(2.0, 64)
    resumed.update(2.0, 64)
    assert resumed.kl_coef == c.kl_coef

    f = FixedKLController(0.05)
    assert f.update(100.0, 64) == 0.05 and f.kl_coef == 0.05
    g = FixedKLController(1.0)
    g.load_state_dict(f.state_dict())
    assert g.kl_coef == 0.05


def test_controllers_read_checkpoints_from_before_the_rename():
    adaptive = AdaptiveKLController(0.5, 1.0, 1.0)
    adaptive.load_state_dict({"value": 0.125, "target": 2.0, "horizon": 3.0})
    fixed = FixedKLController(0.5)
    fixed.load_state_dict({"value": 0.25})
    assert (adaptive.kl_coef, adaptive.target, fixed.kl_coef) == (0.125, 2.0, 0.25)
