"""Token-level γ-cross-entropy (the TaiLr loss), in pure PyTorch.

This module imports nothing from transformers, so the loss can be used in any training loop.

For one target token ``y`` with model probability ``p = softmax(logits)[y]``::

    w    = clamp(p / (γ + (1 - γ) p), min=b, max=1)           # no gradient flows through w
    loss = (1 - ε) · w · (-log p)  +  (ε / V) · Σ_v (-log p_v)

``γ`` (``gamma``) interpolates between cross-entropy (γ = 0, w = 1) and DFT (γ = 1, w = p); ``b``
(``min_weight``) is TaiLr's lower bound on the weight; ``ε`` (``label_smoothing``) is mixed in unweighted,
as in the official fairseq criterion. With b = 0 the gradient equals the gradient of the closed form
``-log(γ + (1 - γ) p) / (1 - γ)``.

Why a custom autograd function: ``F.cross_entropy`` on fp32 logits keeps a full ``[N, V]`` log-softmax for
the backward pass and builds two more ``[N, V]`` buffers there. The per-token weight only needs ``log p``,
which is ``logit_y - logsumexp(logits)``, so the forward pass here keeps one number per token and the
backward pass writes ``softmax(logits) · coef - onehot · coef'`` straight into the gradient buffer, a
chunk of rows at a time. The result is the same loss and gradient as the log-softmax formulation, at the
cost of one cross-entropy call, with less peak memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "GammaCEStats",
    "focal_cross_entropy_with_stats",
    "Reduction",
    "gamma_cross_entropy",
    "gamma_cross_entropy_with_stats",
    "tvd_weight",
    "validate_loss_hyperparameters",
]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")

# Rows of logits processed at once: bounds the fp32 scratch memory to about this many elements,
# independently of the number of tokens (64 MiB of fp32 at 2**24).
_CHUNK_ELEMENTS = 1 << 24


def validate_loss_hyperparameters(
    gamma: float, min_weight: float = 0.0, label_smoothing: float = 0.0, *, prefix: str = ""
) -> None:
    """Raise ``ValueError`` naming the first hyperparameter that is out of range.

    ``gamma`` and ``min_weight`` must lie in [0, 1]; ``label_smoothing`` in [0, 1). NaN is refused.
    ``prefix`` is put before the field names in messages (e.g. ``"TVDArguments."``).
    """
    checks = (
        ("gamma", gamma, 1.0, True),
        ("min_weight", min_weight, 1.0, True),
        ("label_smoothing", label_smoothing, 1.0, False),
    )
    for name, value, upper, upper_closed in checks:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{prefix}{name} must be a number, got {value!r} ({type(value).__name__})")
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"{prefix}{name} must be a number in [0, 1], got NaN")
        in_range = 0.0 <= value <= upper if upper_closed else 0.0 <= value < upper
        if not in_range:
            interval = "[0, 1]" if upper_closed else "[0, 1)"
            raise ValueError(f"{prefix}{name} must be in {interval}, got {value!r}")


def tvd_weight(log_p: torch.Tensor, gamma: float, min_weight: float = 0.0) -> torch.Tensor:
    """TaiLr's per-token weight ``clamp(p / (γ + (1-γ) p), b, 1)`` from ``log p``, computed in log space.

    Args:
        log_p: ``[...]`` log-probabilities of the target tokens (≤ 0), any float dtype; math in fp32 or wider.
        gamma: γ in [0, 1].
        min_weight: the floor b in [0, 1].

    Returns:
        ``[...]`` weights in [b, 1], detached from the graph.
    """
    with torch.no_grad():
        log_p = log_p.float() if log_p.dtype in (torch.float16, torch.bfloat16) else log_p
        if gamma == 0.0:
            weight = torch.ones_like(log_p)
        elif gamma == 1.0:
            weight = log_p.exp()
        else:
            # log(γ + (1-γ)p) = logaddexp(log γ, log(1-γ) + log p): no cancellation, no overflow, even at γ=1e-7.
            log_denominator = torch.logaddexp(torch.full_like(log_p, math.log(gamma)), log_p + math.log1p(-gamma))
            weight = (log_p - log_denominator).exp()
        return weight.clamp(min=min_weight, max=1.0)


@dataclass
class GammaCEStats:
    """Detached sums over the scored (non-ignored) tokens of one call, for logging.

    All fields are 0-dim fp32 tensors on the logits' device (no host synchronisation is needed to build them).
    """

    objective_sum: torch.Tensor  # Σ loss_i
    nll_sum: torch.Tensor  # Σ -log p_y  (plain cross-entropy, comparable across losses)
    weight_sum: torch.Tensor  # Σ w_i
    num_tokens: torch.Tensor  # number of scored tokens


def _row_chunks(num_rows: int, vocab_size: int) -> list[tuple[int, int]]:
    rows = max(1, _CHUNK_ELEMENTS // max(1, vocab_size))
    return [(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)] or [(0, 0)]


def _logit_grad_coefficients(
    grad_loss: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, eps: float, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(softmax_coef, onehot_coef, constant)``, each ``[N]`` fp32 (constant None without smoothing), such that

    ``d loss_i / d logit_iv · g_i = softmax_coef_i · softmax_iv - onehot_coef_i · [v = y_i] - constant_i``, i.e.
    ``((1-ε) w_i + ε) · softmax_iv  -  (1-ε) w_i · [v = y_i]  -  ε / V``, times the upstream gradient ``g_i``.
    Ignored rows get exactly zero: weight is 0 there and the smoothing terms are masked.
    """
    grad_loss = grad_loss.float()
    onehot_coef = grad_loss * (1.0 - eps) * weight
    if eps > 0:
        smooth_coef = grad_loss.masked_fill(~mask, 0.0) * eps
        return onehot_coef + smooth_coef, onehot_coef, smooth_coef / vocab_size
    return onehot_coef, onehot_coef, None


def _probs_to_logit_grad_(
    probs: torch.Tensor,
    targets: torch.Tensor,
    softmax_coef: torch.Tensor,
    onehot_coef: torch.Tensor,
    constant: torch.Tensor | None,
    rows: slice,
) -> torch.Tensor:
    """Turn a chunk of softmax rows ``probs`` ``[n, V]`` (fp32) into the logits' gradient, in place.

    ``targets`` ``[n]`` are this chunk's (safe) targets; the ``[N]`` coefficients are indexed with ``rows``.
    """
    probs.mul_(softmax_coef[rows].unsqueeze(1))
    probs.scatter_add_(1, targets.unsqueeze(1), -onehot_coef[rows].unsqueeze(1))
    if constant is not None:
        probs.sub_(constant[rows].unsqueeze(1))
    return probs


TokenTerms = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _gamma_terms(gamma: float, min_weight: float) -> TokenTerms:
    def terms(log_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = tvd_weight(log_p, gamma, min_weight)
        return weight, weight  # the weight is held constant (stop-gradient): gradient factor = weight

    return terms


def _focal_terms(focusing: float, alpha: float) -> TokenTerms:
    def terms(log_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # loss = -α (1-p)^f log p;  d loss / d log p = -α [(1-p)^f + f p (1-p)^(f-1) (-log p)]
        one_minus_p = (-torch.expm1(log_p)).clamp(min=1e-30)
        factor = alpha * one_minus_p.pow(focusing)
        grad_factor = factor + alpha * focusing * log_p.exp() * one_minus_p.pow(focusing - 1.0) * (-log_p)
        return factor, grad_factor

    return terms


def _per_token_values(
    target_logit: torch.Tensor,
    lse: torch.Tensor,
    logit_sum: torch.Tensor | None,
    mask: torch.Tensor,
    vocab_size: int,
    token_terms: TokenTerms,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token ``(loss, nll, a, c)`` (fp32 ``[N]``, 0 where ``mask`` is False) from fp32 ``[N]`` row statistics.

    ``target_logit`` is ``logit_y``, ``lse`` is ``logsumexp_v logit_v``, ``logit_sum`` is ``Σ_v logit_v`` (only
    needed when ``label_smoothing > 0``: Σ_v -log p_v = V · lse - Σ_v logit_v); ``(a, c) = token_terms(log p)``.
    """
    log_p = target_logit - lse
    nll = (-log_p).masked_fill(~mask, 0.0)
    weight, grad_factor = token_terms(log_p)
    weight = weight.masked_fill(~mask, 0.0)
    grad_factor = grad_factor.masked_fill(~mask, 0.0)
    loss = (1.0 - label_smoothing) * weight * nll
    if label_smoothing > 0:
        smooth = vocab_size * lse - logit_sum
        loss = loss + (label_smoothing / vocab_size) * smooth.masked_fill(~mask, 0.0)
    return loss, nll, weight, grad_factor


def _token_terms(
    target_logit: torch.Tensor,
    lse: torch.Tensor,
    logit_sum: torch.Tensor | None,
    mask: torch.Tensor,
    vocab_size: int,
    gamma: float,
    min_weight: float,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """γ-CE per-token ``(loss, nll, weight)`` from row statistics (see :func:`_per_token_values`)."""
    loss, nll, weight, _ = _per_token_values(
        target_logit, lse, logit_sum, mask, vocab_size, _gamma_terms(gamma, min_weight), label_smoothing
    )
    return loss, nll, weight


class _TokenWeightedCrossEntropy(torch.autograd.Function):
    """Per-token ``(1-ε)·a(p)·(-log p) + (ε/V)·Σ_v(-log p_v)`` on ``[N, V]`` logits, for a loss that depends on
    the logits only through ``log p`` of the target (γ-CE, focal, cross-entropy).

    ``token_terms(log_p) -> (a, c)``: ``a`` multiplies the NLL in the loss value, ``c`` is ``-d(a·nll)/d log p``
    (``c = a`` when ``a`` is held constant, as TaiLr's weight is). Returns ``(loss [N], nll [N], a [N])``;
    only ``loss`` has a gradient.

    Forward keeps ``logsumexp`` per row (``[N]``); backward writes the gradient into one ``[N, V]`` buffer of the
    logits' dtype. Scratch memory is one fp32 chunk of rows, reused (fresh allocations cost page faults on CPU).
    """

    @staticmethod
    def forward(ctx, logits, targets, mask, token_terms, label_smoothing):  # type: ignore[override]
        num_rows, vocab_size = logits.shape
        chunks = _row_chunks(num_rows, vocab_size)
        scratch = logits.new_empty((chunks[0][1] - chunks[0][0], vocab_size), dtype=torch.float32)
        lse = torch.empty(num_rows, dtype=torch.float32, device=logits.device)
        smooth = torch.empty_like(lse) if label_smoothing > 0 else None
        for start, end in chunks:
            rows = logits[start:end]
            buf = scratch[: end - start]
            if rows.dtype != torch.float32:
                rows = buf.copy_(rows)
            if smooth is not None:
                smooth[start:end] = rows.sum(dim=-1)  # Σ_v logit_v
            row_max = rows.amax(dim=-1, keepdim=True)
            torch.sub(rows, row_max, out=buf).exp_()
            lse[start:end] = buf.sum(dim=-1).log_() + row_max.squeeze(1)
        del scratch
        target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1).float()
        loss, nll, weight, grad_factor = _per_token_values(
            target_logit, lse, smooth, mask, vocab_size, token_terms, label_smoothing
        )
        ctx.save_for_backward(logits, targets, mask, lse, grad_factor)
        ctx.label_smoothing = label_smoothing
        ctx.mark_non_differentiable(nll, weight)
        return loss, nll, weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_nll, _grad_weight):  # type: ignore[override]
        logits, targets, mask, lse, grad_factor = ctx.saved_tensors
        eps = ctx.label_smoothing
        num_rows, vocab_size = logits.shape
        # c_i (grad_factor) plays the role of the weight in the γ-CE gradient
        softmax_coef, onehot_coef, constant = _logit_grad_coefficients(grad_loss, grad_factor, mask, eps, vocab_size)
        grad = torch.empty_like(logits)
        chunks = _row_chunks(num_rows, vocab_size)
        scratch = None
        if logits.dtype != torch.float32:
            scratch = logits.new_empty((chunks[0][1] - chunks[0][0], vocab_size), dtype=torch.float32)
        for start, end in chunks:
            rows = logits[start:end]
            if scratch is None:
                out = grad[start:end]
            else:
                out = scratch[: end - start]
                rows = out.copy_(rows)
            torch.sub(rows, lse[start:end].unsqueeze(1), out=out)
            _probs_to_logit_grad_(
                out.exp_(), targets[start:end], softmax_coef, onehot_coef, constant, slice(start, end)
            )
            if scratch is not None:
                grad[start:end].copy_(out)
        return grad, None, None, None, None


def _check_inputs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    shift_labels: bool,
    *,
    name: str = "logits",
    last_dim: str = "vocab_size",
) -> None:
    """Validate a ``[..., last_dim]`` float tensor (``name``) against integer ``labels`` ``[...]``.

    Shared with :mod:`hf_tvd_loss.linear_loss`, which checks its hidden states (``name="hidden"``) the same way.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} and labels must be tensors, got {type(logits).__name__} and {type(labels).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    if logits.dim() < 2:
        raise ValueError(f"{name} must have shape [..., {last_dim}], got shape {tuple(logits.shape)}")
    if tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(
            f"{name} shape {tuple(logits.shape)} does not match labels shape {tuple(labels.shape)}: "
            f"expected {name} of shape labels.shape + ({last_dim},)"
        )
    if shift_labels and labels.dim() < 1:
        raise ValueError("shift_labels=True needs labels with a sequence dimension")
    if logits.shape[-1] == 0:
        if name == "logits":
            raise ValueError("logits have an empty vocabulary dimension (vocab_size = 0)")
        raise ValueError(f"{name} has an empty last dimension ({last_dim} = 0)")


def _check_options(gamma: float, min_weight: float, label_smoothing: float, reduction: str) -> None:
    validate_loss_hyperparameters(gamma, min_weight, label_smoothing)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _flat_targets(
    labels: torch.Tensor, vocab_size: int, device: torch.device, ignore_index: int, shift_labels: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(safe_targets [N], mask [N])`` of :func:`prepare_targets` (used by the fused linear path)."""
    _, safe_targets, mask = prepare_targets(
        labels, vocab_size, ignore_index=ignore_index, shift_labels=shift_labels, device=device
    )
    return safe_targets, mask


def _per_token_output(per_token: torch.Tensor, labels_shape: torch.Size, shift_labels: bool) -> torch.Tensor:
    """``[N]`` per-token values reshaped like the labels (``reduction="none"``)."""
    per_token = per_token.view(labels_shape)
    if shift_labels:
        # Align each value with the label it scores: position t holds the loss of predicting labels[..., t].
        per_token = F.pad(per_token[..., :-1], (1, 0), value=0.0)
    return per_token


def _mean(
    total: torch.Tensor, num_tokens: torch.Tensor, num_items_in_batch: torch.Tensor | int | float | None
) -> torch.Tensor:
    """``total / num_items_in_batch`` (default: the scored-token count), never dividing by less than 1."""
    if num_items_in_batch is None:
        denominator = num_tokens
    elif torch.is_tensor(num_items_in_batch):
        denominator = num_items_in_batch.to(device=total.device, dtype=total.dtype)
    else:
        denominator = torch.tensor(float(num_items_in_batch), device=total.device)
    # A batch with nothing to score gives 0 (and zero gradients), not 0/0.
    return total / denominator.clamp(min=1.0)


def prepare_targets(
    labels: torch.Tensor, vocab_size: int, *, ignore_index: int, shift_labels: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten (and, for causal LMs, shift) the labels; check their range.

    Returns ``(targets [N], safe_targets [N], mask [N])``: ``targets`` aligned with the flattened logits rows,
    ``safe_targets`` with ignored positions replaced by 0 (safe to gather), ``mask`` true where scored.
    """
    labels = labels.to(device=device, dtype=torch.long)
    if shift_labels:
        # Score logits[..., t, :] against labels[..., t+1] by padding the labels instead of slicing the
        # logits: slicing would force a copy of the whole [N, V] tensor.
        targets = F.pad(labels[..., 1:], (0, 1), value=ignore_index)
    else:
        targets = labels
    targets = targets.reshape(-1)
    mask = targets != ignore_index
    bad = mask & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):  # one host sync; a CUDA gather with a bad index would be a device-side assert instead
        offending = targets[bad][:5].tolist()
        raise ValueError(
            f"labels must be in [0, {vocab_size}) (the vocabulary size of logits) or equal ignore_index="
            f"{ignore_index}; found {offending}"
        )
    return targets, targets.masked_fill(~mask, 0), mask


def reduce_token_losses(
    per_token: torch.Tensor,
    nll: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    *,
    labels_shape: torch.Size,
    shift_labels: bool,
    num_items_in_batch: torch.Tensor | int | float | None,
    reduction: str,
    total: torch.Tensor | None = None,
) -> tuple[torch.Tensor, GammaCEStats]:
    """Apply ``reduction`` to flat per-token losses ``[N]`` and build the logging sums.

    ``total`` is the differentiable ``Σ per_token`` when the caller already has it (the fused linear path, whose
    gradient flows through the total, not through ``per_token``).
    """
    num_tokens = mask.sum().float()
    stats = GammaCEStats(
        objective_sum=per_token.detach().sum(),
        nll_sum=nll.detach().sum(),
        weight_sum=weight.detach().sum(),
        num_tokens=num_tokens,
    )
    if reduction == "none":
        return _per_token_output(per_token, labels_shape, shift_labels), stats
    if total is None:
        total = per_token.sum()
    if reduction == "sum":
        return total, stats
    return _mean(total, num_tokens, num_items_in_batch), stats


def _token_weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_terms: TokenTerms,
    *,
    label_smoothing: float,
    ignore_index: int,
    shift_labels: bool,
    num_items_in_batch: torch.Tensor | int | float | None,
    reduction: str,
) -> tuple[torch.Tensor, GammaCEStats]:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    _check_inputs(logits, labels, ignore_index, shift_labels)
    vocab_size = logits.shape[-1]
    _, safe_targets, mask = prepare_targets(
        labels, vocab_size, ignore_index=ignore_index, shift_labels=shift_labels, device=logits.device
    )
    per_token, nll, weight = _TokenWeightedCrossEntropy.apply(
        logits.reshape(-1, vocab_size), safe_targets, mask, token_terms, float(label_smoothing)
    )
    return reduce_token_losses(
        per_token,
        nll,
        weight,
        mask,
        labels_shape=labels.shape,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
    )


def gamma_cross_entropy_with_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float,
    min_weight: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    reduction: Reduction = "mean",
) -> tuple[torch.Tensor, GammaCEStats]:
    """:func:`gamma_cross_entropy` that also returns detached sums for logging (:class:`GammaCEStats`)."""
    validate_loss_hyperparameters(gamma, min_weight, label_smoothing)
    return _token_weighted_cross_entropy(
        logits,
        labels,
        _gamma_terms(float(gamma), float(min_weight)),
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
    )


def validate_focal_hyperparameters(focusing: float, alpha: float, label_smoothing: float, *, prefix: str = "") -> None:
    """Raise ``ValueError`` naming the field: focusing ≥ 0, alpha > 0, label_smoothing in [0, 1)."""
    validate_loss_hyperparameters(0.0, 0.0, label_smoothing, prefix=prefix)
    for name, value, ok, rule in (
        ("focal_gamma", focusing, lambda v: v >= 0, ">= 0"),
        ("focal_alpha", alpha, lambda v: v > 0, "> 0"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok(value):
            raise ValueError(f"{prefix}{name} must be a number {rule}, got {value!r}")


def focal_cross_entropy_with_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    focal_gamma: float = 2.0,
    focal_alpha: float = 1.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    reduction: Reduction = "mean",
) -> tuple[torch.Tensor, GammaCEStats]:
    """Token-level focal loss (Lin et al., 2017), a baseline for γ-CE, with the same layout and reductions.

    Per scored token: ``(1-ε) · α (1-p_y)^f · (-log p_y) + (ε/V) · Σ_v(-log p_v)``, with the gradient flowing
    through the modulating factor (standard focal loss). ``focal_gamma`` = f ≥ 0 (0 is cross-entropy),
    ``focal_alpha`` = α > 0 a scalar scale. The stats' ``weight_sum`` sums ``α (1-p_y)^f``.
    """
    validate_focal_hyperparameters(focal_gamma, focal_alpha, label_smoothing)
    return _token_weighted_cross_entropy(
        logits,
        labels,
        _focal_terms(float(focal_gamma), float(focal_alpha)),
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
    )


def gamma_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float,
    min_weight: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Token-level γ-cross-entropy (TaiLr, Ji et al., ICLR 2023).

    Per scored token (label ≠ ``ignore_index``) with ``p_v = softmax(logits)_v`` and target ``y``::

        w    = clamp(p_y / (γ + (1-γ) p_y), min_weight, 1)     # computed in log space, no gradient
        loss = (1-ε) · w · (-log p_y) + (ε/V) · Σ_v (-log p_v)

    γ = 0, b = 0, ε = 0 is ``F.cross_entropy``; γ = 1 is DFT (``-sg(p) · log p``); with b = 0 the gradient is
    that of ``-log(γ + (1-γ) p) / (1-γ)``. The math runs in fp32 for fp16/bf16 logits.

    Args:
        logits: ``[..., V]`` unnormalised scores (e.g. ``[batch, seq_len, vocab]``), any float dtype.
        labels: ``[...]`` integer targets in ``[0, V)`` or ``ignore_index`` (padding, prompt tokens).
        gamma: γ in [0, 1].
        min_weight: floor b in [0, 1] of the per-token weight (TaiLr uses 0.2-0.3).
        label_smoothing: ε in [0, 1), combined unweighted as in the official criterion.
        ignore_index: label value that is not scored.
        shift_labels: score ``logits[..., t, :]`` against ``labels[..., t+1]`` (causal LMs whose labels
            equal their input ids). The logits are not copied.
        num_items_in_batch: denominator for ``reduction="mean"`` (e.g. the token count of a whole
            gradient-accumulation step); defaults to the number of scored tokens here.
        reduction: ``"mean"`` (sum / ``num_items_in_batch`` or the token count), ``"sum"``, or ``"none"``
            (per-token values shaped like ``labels``, 0 where ignored; with ``shift_labels`` the value at
            position t is the loss of predicting ``labels[..., t]``).

    Returns:
        A 0-dim tensor, or a ``labels``-shaped one for ``reduction="none"``; fp32.

    Raises:
        ValueError: γ or b outside [0, 1] or NaN, ε outside [0, 1), mismatched shapes, non-integer labels,
            or a label outside ``[0, V)`` that is not ``ignore_index``.
    """
    loss, _ = gamma_cross_entropy_with_stats(
        logits,
        labels,
        gamma=gamma,
        min_weight=min_weight,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
    )
    return loss
