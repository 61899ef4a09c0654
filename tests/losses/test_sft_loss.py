import torch

from alignlab.losses.sft import sft_nll_loss, token_nll_sum


def _data():
    logps = torch.tensor(
        [[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.25, -9.0, -9.0], [-7.0, -7.0, -7.0, -7.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    return logps, mask


def test_sft_nll_per_example_mean():
    logps, mask = _data()
    loss = sft_nll_loss(logps, mask)
    expected = []
    for row, mrow in zip(logps.tolist(), mask.tolist()):
        picked = [-v for v, m in zip(row, mrow) if m]
        expected.append(sum(picked) / len(picked) if picked else 0.0)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    loss.sum().backward()
    expected_grad = torch.tensor(
        [[0, -1 / 3, -1 / 3, -1 / 3], [-0.5, -0.5, 0, 0], [0, 0, 0, 0]], dtype=torch.float64
    )
    torch.testing.assert_close(logps.grad, expected_grad)


def test_sft_float_mask_matches_bool():
    logps, mask = _data()
    torch.testing.assert_close(sft_nll_loss(logps, mask.double()), sft_nll_loss(logps, mask))


def test_token_nll_sum():
    logps, mask = _data()
    total = token_nll_sum(logps, mask)
    assert total.shape == ()
    assert abs(total.item() - (2 + 3 + 4 + 0.5 + 0.25)) < 1e-12
    total.backward()
    torch.testing.assert_close(logps.grad, -mask.double())
