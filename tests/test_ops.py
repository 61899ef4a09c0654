import torch
from allocations import peak_new_bytes

from alignlab import ops
from alignlab.ops import (
    IGNORE_INDEX,
    gather_log_probs,
    linear_log_probs,
    masked_mean,
    masked_whiten,
    shift_labels,
)


def test_masked_mean_ignores_masked_and_handles_empty():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 5.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(values, mask).item() == 1.5
    assert masked_mean(values, mask, dim=1).tolist() == [1.5, 0.0]


def test_masked_whiten_unit_variance_on_mask():
    torch.manual_seed(0)
    values = torch.randn(4, 6) * 3 + 2
    mask = torch.rand(4, 6) > 0.3
    out = masked_whiten(values, mask)
    assert abs(masked_mean(out, mask).item()) < 1e-5
    assert abs(masked_mean(out**2, mask).item() - 1) < 1e-4


def test_shift_labels():
    labels = torch.tensor([[5, 6, 7], [IGNORE_INDEX, 8, 9]])
    assert shift_labels(labels).tolist() == [[6, 7, -100], [8, 9, -100]]


def test_gather_log_probs_matches_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 1] = IGNORE_INDEX
    expected = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    expected[0, 1] = 0
    torch.testing.assert_close(gather_log_probs(logits, labels), expected)


def test_linear_log_probs_values_and_gradients_match_naive():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (37,))
    upstream = torch.randn(37, dtype=torch.float64)  # a non-uniform downstream gradient (DPO-like)
    out = linear_log_probs(hidden, weight, labels, chunk_size=8)
    (out * upstream).sum().backward()
    grad_h, grad_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    naive = torch.log_softmax(hidden @ weight.T, -1).gather(-1, labels[:, None])[:, 0]
    (naive * upstream).sum().backward()
    torch.testing.assert_close(out, naive)
    torch.testing.assert_close(grad_h, hidden.grad)
    torch.testing.assert_close(grad_w, weight.grad)
    assert torch.autograd.gradcheck(
        lambda h, w: linear_log_probs(h, w, labels, chunk_size=5),
        (hidden.detach().requires_grad_(), weight.detach().requires_grad_()),
    )


def test_linear_log_probs_under_bf16_autocast_is_close():
    torch.manual_seed(0)
    hidden = torch.randn(20, 32, requires_grad=True)
    weight = torch.randn(64, 32, requires_grad=True)
    labels = torch.randint(0, 64, (20,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_log_probs(hidden, weight, labels, chunk_size=7)
    out.sum().backward()
    assert out.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    naive = torch.log_softmax(hidden @ weight.T, -1).gather(-1, labels[:, None])[:, 0]
    torch.testing.assert_close(out, naive, atol=0.5, rtol=0.05)


def _projection(rows, hidden_size, vocab):
    torch.manual_seed(0)
    hidden = torch.randn(rows, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, requires_grad=True)
    return hidden, weight, torch.randint(0, vocab, (rows,))


def test_linear_log_probs_holds_one_chunk_of_logits():
    # forward: one (chunk, V) float32 buffer at a time; backward: that plus the (V, H)
    # weight gradient. Everything else is (N, H) or (N,) sized: the slack.
    rows, hidden_size, vocab, chunk = 64, 32, 4000, 16
    hidden, weight, labels = _projection(rows, hidden_size, vocab)
    logits_chunk, weight_grad = chunk * vocab * 4, vocab * hidden_size * 4
    slack = 4 * rows * hidden_size * 4 + 4 * vocab * 4
    forward = peak_new_bytes(
        lambda: linear_log_probs(hidden.detach(), weight.detach(), labels, chunk_size=chunk)
    )
    assert forward <= logits_chunk + slack
    out = linear_log_probs(hidden, weight, labels, chunk_size=chunk)
    backward = peak_new_bytes(lambda: out.sum().backward())
    assert backward <= weight_grad + logits_chunk + slack


def test_linear_log_probs_caps_chunk_rows_by_vocabulary(monkeypatch):
    # a chunk never holds more than CHUNK_LOGITS logits, whatever chunk_size asks for
    monkeypatch.setattr(ops, "CHUNK_LOGITS", 8 * 4000)
    hidden, weight, labels = _projection(64, 32, 4000)
    peak = peak_new_bytes(
        lambda: linear_log_probs(hidden.detach(), weight.detach(), labels, chunk_size=64)
    )
    assert peak <= 8 * 4000 * 4 + 4 * 64 * 32 * 4 + 4 * 4000 * 4
    out = linear_log_probs(hidden, weight, labels, chunk_size=64)
    naive = torch.log_softmax(hidden @ weight.T, -1).gather(-1, labels[:, None])[:, 0]
    torch.testing.assert_close(out, naive)


def test_linear_log_probs_hands_the_weight_gradient_to_a_sink():
    torch.manual_seed(0)
    hidden = torch.randn(7, 5, requires_grad=True)
    weight = torch.randn(11, 5, requires_grad=True)
    labels = torch.randint(0, 11, (7,))
    linear_log_probs(hidden, weight, labels, chunk_size=3).sum().backward()
    sink = []
    detached = weight.detach()
    hidden2 = hidden.detach().requires_grad_()
    linear_log_probs(hidden2, detached, labels, 3, weight_grad_sink=sink).sum().backward()
    assert len(sink) == 1
    torch.testing.assert_close(sink[0], weight.grad)
    torch.testing.assert_close(hidden2.grad, hidden.grad)
