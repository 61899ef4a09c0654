import torch
from allocations import peak_new_bytes
from torch import nn

from alignlab.config import TrainConfig
from alignlab.training.optim import build_optimizer


def test_adamw_step_allocates_nothing_the_size_of_a_parameter():
    # torch's per-tensor AdamW (its CPU default) allocates two temporaries the size of the
    # largest parameter every step: 1 GB for a 152k x 896 embedding
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(4096, 64), nn.LayerNorm(64))
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    for _ in range(2):  # the first step allocates the moments
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        peak = peak_new_bytes(optimizer.step)
    assert peak < model[0].weight.numel() * 4 // 4


def test_adamw_matches_the_reference_update():
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(8, 4))
    reference = nn.Parameter(weight.detach().clone())
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    ours = build_optimizer(nn.ParameterList([weight]), cfg)
    plain = torch.optim.AdamW(
        [reference], lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay, foreach=False,
    )  # fmt: skip
    for _ in range(3):
        grad = torch.randn(8, 4)
        weight.grad, reference.grad = grad.clone(), grad.clone()
        ours.step()
        plain.step()
    torch.testing.assert_close(weight, reference)
