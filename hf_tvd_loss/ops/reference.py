"""Readable float64 reference implementations, shared by the tests and the benchmarks.

These follow the formulas literally (a full log-softmax, a gather, a mean over the vocabulary) and are
meant to be obviously right, not fast. Do not use them for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gamma_cross_entropy_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float,
    min_weight: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
    num_items_in_batch: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """γ-CE in float64: ``(1-ε)·sg(w)·(-log p_y) + (ε/V)·Σ_v(-log p_v)``, ``w = clamp(p/(γ+(1-γ)p), b, 1)``.

    Same arguments and output layout as :func:`hf_tvd_loss.gamma_cross_entropy`; the result is float64.
    """
    logits = logits.double()
    labels = labels.long()
    if shift_labels:
        logits = logits[..., :-1, :]
        labels = labels[..., 1:]
    vocab_size = logits.shape[-1]
    log_probs = F.log_softmax(logits, dim=-1)
    mask = labels != ignore_index
    safe = labels.masked_fill(~mask, 0)
    log_p = log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    p = log_p.detach().exp()
    weight = (p / (gamma + (1.0 - gamma) * p)).clamp(min=min_weight, max=1.0)
    smooth = -log_probs.sum(dim=-1)
    per_token = (1.0 - label_smoothing) * weight * (-log_p) + (label_smoothing / vocab_size) * smooth
    per_token = per_token * mask
    if reduction == "none":
        if shift_labels:
            per_token = F.pad(per_token, (1, 0), value=0.0)
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    denominator = float(num_items_in_batch) if num_items_in_batch is not None else float(mask.sum())
    return total / max(denominator, 1.0)


def gamma_closed_form_reference(
    logits: torch.Tensor, labels: torch.Tensor, *, gamma: float, ignore_index: int = -100
) -> torch.Tensor:
    """Mean over scored tokens of the closed form ``-log(γ + (1-γ)p) / (1-γ)`` (γ < 1), in float64.

    Its gradient equals that of γ-CE with ``min_weight=0`` and no label smoothing.
    """
    logits = logits.double()
    mask = labels != ignore_index
    log_p = F.log_softmax(logits, dim=-1).gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    per_token = -torch.log(gamma + (1.0 - gamma) * log_p.exp()) / (1.0 - gamma)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def dft_reference(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """DFT loss (Dynamic Fine-Tuning, TRL's ``loss_type="dft"``): mean of ``-sg(p)·log p``, float64."""
    logits = logits.double()
    mask = labels != ignore_index
    log_p = F.log_softmax(logits, dim=-1).gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    per_token = -log_p.detach().exp() * log_p
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def focal_cross_entropy_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    focal_gamma: float,
    focal_alpha: float = 1.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
) -> torch.Tensor:
    """Mean token-level focal loss ``(1-ε)·α(1-p)^f·(-log p) + (ε/V)·Σ_v(-log p_v)`` in float64 (gradient
    through the modulating factor)."""
    logits = logits.double()
    labels = labels.long()
    if shift_labels:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    log_probs = F.log_softmax(logits, dim=-1)
    mask = labels != ignore_index
    log_p = log_probs.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    focal = focal_alpha * (1.0 - log_p.exp()) ** focal_gamma * (-log_p)
    smooth = -log_probs.sum(dim=-1) / logits.shape[-1]
    per_token = (1.0 - label_smoothing) * focal + label_smoothing * smooth
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def gce_cross_entropy_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    q: float,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
) -> torch.Tensor:
    """Mean generalized cross-entropy ``(1-ε)·(1 - p^q)/q + (ε/V)·Σ_v(-log p_v)`` in float64, the closed form
    itself (its autograd gradient is GCE's: ``p^q · ∇(-log p)`` for the first term)."""
    logits = logits.double()
    labels = labels.long()
    if shift_labels:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    log_probs = F.log_softmax(logits, dim=-1)
    mask = labels != ignore_index
    log_p = log_probs.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    gce = (1.0 - torch.exp(q * log_p)) / q
    smooth = -log_probs.sum(dim=-1) / logits.shape[-1]
    per_token = (1.0 - label_smoothing) * gce + label_smoothing * smooth
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def prediction_metrics_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float = 0.0,
    min_weight: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
    num_bins: int = 15,
) -> dict[str, torch.Tensor]:
    """Float64 sums over the scored tokens: ``num_tokens``, ``correct_sum`` (argmax = target), ``entropy_sum``
    (``-Σ_v p_v log p_v``), ``floor_count`` (weight ``p/(γ+(1-γ)p)`` at or below b, i.e. clamped to b) and
    ``calibration`` ``[3, num_bins]`` (count, Σ max_v p_v, Σ correct per equal-width bin of max_v p_v)."""
    logits = logits.double()
    labels = labels.long()
    if shift_labels:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    mask = labels != ignore_index
    log_probs = F.log_softmax(logits[mask], dim=-1)
    targets = labels[mask]
    probs = log_probs.exp()
    confidence, prediction = probs.max(dim=-1)
    correct = (prediction == targets).double()
    p = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    raw_weight = p / (gamma + (1.0 - gamma) * p)
    # The bin sums are written out here rather than taken from the library (PredictionStats.sums) on purpose: this
    # is the judge of that code. It reaches them by another route (float64 log-softmax of the scored rows only,
    # confidence = max_v p_v, not the chunk-wise fp32 1 / Σ_v exp(z_v - max)), and sharing the binning would let a
    # binning bug (the bin of confidence 1.0, ignored rows) pass unseen.
    bins = (confidence * num_bins).long().clamp(max=num_bins - 1)
    calibration = torch.zeros(3, num_bins, dtype=torch.float64)
    calibration[0].index_add_(0, bins, torch.ones_like(correct))
    calibration[1].index_add_(0, bins, confidence)
    calibration[2].index_add_(0, bins, correct)
    return {
        "num_tokens": mask.sum().double(),
        "correct_sum": correct.sum(),
        "entropy_sum": -(probs * log_probs).sum(),
        "floor_count": (raw_weight <= min_weight).sum().double(),
        "calibration": calibration,
    }


def linear_gamma_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float,
    min_weight: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    chunk_rows: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 mean γ-CE of ``logits = hidden @ weight.T`` and its gradients, for shapes too large for autograd.

    ``hidden`` ``[N, d]``, ``weight`` ``[V, d]``, ``labels`` ``[N]`` (any dtypes: upcast to float64, i.e. the exact
    loss of these low-precision values). Processes ``chunk_rows`` rows at a time with the closed-form logits
    gradient ``((1-ε) w + ε) p - (1-ε) w [v = y] - ε/V`` (w held constant, as in :func:`gamma_cross_entropy_reference`,
    which it equals; see tests/test_precision.py). Returns ``(loss, d loss / d hidden, d loss / d weight)``.
    """
    h64, w64 = hidden.detach().double(), weight.detach().double()
    labels = labels.reshape(-1).long()
    vocab_size = w64.shape[0]
    mask = labels != ignore_index
    count = max(float(mask.sum()), 1.0)
    eps = label_smoothing
    total = torch.zeros((), dtype=torch.float64)
    grad_h = torch.zeros_like(h64)
    grad_w = torch.zeros_like(w64)
    for start in range(0, h64.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        m = mask[rows]
        y = labels[rows].masked_fill(~m, 0)
        log_probs = torch.log_softmax(h64[rows] @ w64.T, dim=-1)
        log_p = log_probs.gather(1, y.unsqueeze(1)).squeeze(1)
        p = log_p.exp()
        w = (p / (gamma + (1.0 - gamma) * p)).clamp(min=min_weight, max=1.0)
        smooth = -log_probs.sum(dim=-1)
        per_token = ((1.0 - eps) * w * (-log_p) + (eps / vocab_size) * smooth) * m
        total += per_token.sum()
        probs = log_probs.exp_()
        coef = ((1.0 - eps) * w + eps) * m
        probs.mul_(coef.unsqueeze(1))
        probs.scatter_add_(1, y.unsqueeze(1), (-(1.0 - eps) * w * m).unsqueeze(1))
        probs.sub_((eps / vocab_size) * m.double().unsqueeze(1))
        probs.div_(count)
        grad_h[rows] = probs @ w64
        grad_w.addmm_(probs.T, h64[rows])
    return total / count, grad_h, grad_w
