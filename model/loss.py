"""The output layer's cross-entropy, computed a chunk of positions at a time.

    output_cross_entropy(hidden, weight, targets) == F.cross_entropy(hidden @ weight.T, targets, ignore_index=-1)

Why not the plain expression: its (positions, vocab_size) logits are the largest tensors of training (at
batch 32 x 512 tokens, 3.3 GB in fp32, plus as much again for their gradient). Here the logits of at most
one chunk of positions exist at a time, and the gradients with respect to `hidden` and `weight` are
computed in the forward pass, while each chunk's probabilities are at hand, so backward only scales them.

Speed: the product runs against the weight padded with zero rows to a multiple of 64 (50257 -> 50304
columns), which matrix units handle faster; the padding columns get probability 0 and never leave this
module, so parameters, logits, checkpoints and exports keep vocab_size rows. On the CPU, the chunk's
buffers are reused from call to call and (log-)softmax runs in place: a fresh tensor of hundreds of MB
costs as much in page faults as the arithmetic done in it (so one process computes one such loss at a
time). GPU allocators reuse memory themselves, and torch.compile fuses the steps, so there the code
allocates plainly.
"""
from __future__ import annotations

import math

import torch

VOCAB_MULTIPLE = 64
IGNORE_INDEX = -1

_cpu_buffers: dict[str, torch.Tensor] = {}


def logits_chunk_bytes(device: torch.device) -> int:
    """Bytes of fp32 logits per chunk: about 200 MB on the CPU (products of fewer rows run slower there),
    1 GB on GPUs."""
    return (200 << 20) if device.type == "cpu" else (1 << 30)


def _chunk_rows(device: torch.device, vocab_size: int) -> int:
    return max(1, logits_chunk_bytes(device) // (4 * vocab_size))


def _reuses_memory(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def _buffer(name: str, shape: tuple[int, int], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor of `shape`; on the CPU, memory reused from the previous call."""
    if not _reuses_memory(like):
        return torch.empty(shape, device=like.device, dtype=dtype)
    buffer = _cpu_buffers.get(name)
    if buffer is None or buffer.numel() < math.prod(shape) or buffer.dtype != dtype:
        with torch.inference_mode(False):  # usable both inside and outside inference mode
            buffer = _cpu_buffers[name] = torch.empty(math.prod(shape), dtype=dtype)
    return buffer[:math.prod(shape)].view(shape)


def _softmax_rows(logits: torch.Tensor, log: bool) -> torch.Tensor:
    function = torch.log_softmax if log else torch.softmax
    return function(logits, 1, out=logits) if _reuses_memory(logits) else function(logits, 1)


class _OutputProduct:
    """hidden (N, C) and the padded weight in the product's dtype (autocast's when it is on), by chunk."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor) -> None:
        device_type = hidden.device.type
        self.dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        self.vocab_size, width = weight.shape
        padded_size = self.vocab_size + -self.vocab_size % VOCAB_MULTIPLE
        self.padded = _buffer("weight", (padded_size, width), weight, self.dtype)
        self.padded[:self.vocab_size].copy_(weight)
        self.padded[self.vocab_size:].zero_()
        self.hidden = hidden.to(self.dtype)
        rows = _chunk_rows(hidden.device, self.vocab_size)
        self.chunks = [slice(start, start + rows) for start in range(0, hidden.shape[0], rows)]

    def logits(self, rows: slice) -> torch.Tensor:
        """fp32 logits (n, padded vocab) of a chunk; the padding columns are -inf."""
        hidden = self.hidden[rows]
        logits = _buffer("logits", (hidden.shape[0], self.padded.shape[0]), hidden, torch.float32)
        if self.dtype == torch.float32:
            torch.mm(hidden, self.padded.t(), out=logits)
        else:
            logits.copy_(torch.mm(hidden, self.padded.t()))
        logits[:, self.vocab_size:] = float("-inf")
        return logits


def _kept_and_safe(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which targets count, and the targets with ignored ones replaced by a valid index (0)."""
    kept = targets != IGNORE_INDEX
    return kept, targets * kept


class _ChunkedOutputLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        product = _OutputProduct(hidden, weight)
        kept, safe_targets = _kept_and_safe(targets)
        scale = 1.0 / kept.sum()
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(product.padded.shape, device=weight.device, dtype=torch.float32)
        for rows in product.chunks:
            logits = product.logits(rows)
            chunk_targets = safe_targets[rows][:, None]
            picked = logits.gather(1, chunk_targets).squeeze(1)
            maxima = logits.amax(1)
            probabilities = _softmax_rows(logits, log=False)
            # The largest probability is at least 1/vocab, so its log is exact where a target's may underflow.
            log_normaliser = maxima - probabilities.amax(1).log()
            total += ((log_normaliser - picked) * kept[rows]).sum()
            # d loss / d logits = (softmax - one_hot(target)) * scale, zero for ignored targets; the scaling and
            # zeroing are applied to the small (n, C) factors of the products, not to the (n, vocab) matrix.
            probabilities.scatter_add_(1, chunk_targets, torch.full_like(picked[:, None], -1.0))
            grad_logits = probabilities.to(product.dtype)
            row_weights = (kept[rows] * scale)[:, None]
            grad_hidden[rows] = torch.mm(grad_logits, product.padded) * row_weights
            weighted_hidden = (product.hidden[rows] * row_weights).to(product.dtype)
            if product.dtype == torch.float32:
                grad_weight.addmm_(grad_logits.t(), weighted_hidden)
            else:
                grad_weight += torch.mm(grad_logits.t(), weighted_hidden)
        ctx.save_for_backward(grad_hidden, grad_weight[:product.vocab_size].to(weight.dtype))
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None


def output_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the logits hidden @ weight.T (hidden (..., C), weight (vocab, C)) against targets
    (...), ignoring targets of -1.

    reduction "mean": the mean over kept targets, differentiable. "none": fp32 per-position losses (0 for
    ignored targets), without gradient.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    hidden = hidden.reshape(-1, hidden.shape[-1])  # (N, C)
    targets = targets.reshape(-1)
    if reduction == "mean" and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedOutputLoss.apply(hidden, weight, targets)
    kept, safe_targets = _kept_and_safe(targets)
    with torch.no_grad():
        product = _OutputProduct(hidden, weight)
        losses = torch.cat([-_softmax_rows(product.logits(rows), log=True).gather(1, safe_targets[rows][:, None])
                            .squeeze(1) * kept[rows] for rows in product.chunks])
    return losses if reduction == "none" else losses.sum() / kept.sum()
