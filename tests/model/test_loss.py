"""model/loss.py: the chunked, vocabulary-padded cross-entropy against F.cross_entropy, with and without
gradients, under bf16 autocast, and through Model.forward(return_logits=False)."""
import pytest
import torch
import torch.nn.functional as F

import model.loss as loss_module
from model.loss import output_cross_entropy
from model.model import Model, preset


def reference_and_chunked(monkeypatch, rows_per_chunk, vocab_size=1000, dtype=None):
    monkeypatch.setattr(loss_module, "_chunk_rows", lambda device, vocab: rows_per_chunk)
    hidden = torch.randn(3, 7, 16)
    weight = torch.randn(vocab_size, 16) * 0.3
    targets = torch.randint(0, vocab_size, (3, 7))
    targets[0, :3] = -1
    results = []
    for loss_function in ("reference", "chunked"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if loss_function == "reference":
            loss = F.cross_entropy((h @ w.t()).view(-1, vocab_size), targets.view(-1), ignore_index=-1)
        else:
            loss = output_cross_entropy(h, w, targets)
        (2.5 * loss).backward()  # a non-unit upstream gradient must scale both gradients
        results.append((loss.detach(), h.grad, w.grad))
    return results, (hidden, weight, targets)


@pytest.mark.parametrize("rows_per_chunk", [1, 5, 100])
def test_chunked_output_loss_and_gradients_equal_cross_entropy(monkeypatch, rows_per_chunk):
    (expected, actual), _ = reference_and_chunked(monkeypatch, rows_per_chunk)
    for want, got in zip(expected, actual):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_output_loss_per_token_without_gradients(monkeypatch):
    _, (hidden, weight, targets) = reference_and_chunked(monkeypatch, 4)
    with torch.inference_mode():
        losses = output_cross_entropy(hidden, weight, targets, reduction="none")
        mean = output_cross_entropy(hidden, weight, targets)
    expected = F.cross_entropy((hidden @ weight.t()).view(-1, 1000), targets.view(-1), ignore_index=-1,
                               reduction="none")
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean, expected.sum() / (targets != -1).sum(), rtol=1e-5, atol=1e-6)


def test_chunked_output_loss_under_bfloat16_autocast_keeps_fp32_gradients(monkeypatch):
    monkeypatch.setattr(loss_module, "_chunk_rows", lambda device, vocab: 8)
    hidden = torch.randn(20, 32, requires_grad=True)
    weight = (torch.randn(300, 32) * 0.2).requires_grad_()
    targets = torch.randint(0, 300, (20,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = output_cross_entropy(hidden, weight, targets)
    loss.backward()
    reference = F.cross_entropy(hidden @ weight.t(), targets)
    reference_hidden, reference_weight = torch.autograd.grad(reference, (hidden, weight))
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    torch.testing.assert_close(loss.float(), reference, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(hidden.grad, reference_hidden, rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(weight.grad, reference_weight, rtol=5e-2, atol=5e-3)


def test_model_without_logits_gives_the_same_loss_and_gradients():
    model = Model(preset("nano", dropout=0.0))
    idx, targets = torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16))
    logits, expected = model(idx, targets)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    no_logits, loss = model(idx, targets, return_logits=False)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert logits.shape == (2, 16, 512) and no_logits is None
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert model.token_embedding.weight.shape == (512, 32)  # padding never reaches parameters or checkpoints
