"""Token-level γ-cross-entropy (the TaiLr loss) on materialised logits, in pure PyTorch.

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

import torch

from .common import (
    GammaCEStats,
    PredictionStats,
    Reduction,
    TokenTerms,
    TokenWeightRule,
    as_token_weight_rule,
    check_inputs,
    check_reduction,
    focal_terms,
    gamma_terms,
    logit_grad_coefficients,
    per_token_values,
    prepare_targets,
    prepare_token_scale,
    probs_to_logit_grad_,
    reduce_token_losses,
    rows_per_chunk,
    validate_focal_hyperparameters,
    validate_loss_hyperparameters,
)

__all__ = [
    "focal_cross_entropy_with_stats",
    "gamma_cross_entropy",
    "gamma_cross_entropy_with_stats",
    "token_weighted_cross_entropy",
]


def _row_chunks(num_rows: int, vocab_size: int) -> list[tuple[int, int]]:
    rows = rows_per_chunk(vocab_size)
    return [(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)] or [(0, 0)]


class _TokenWeightedCrossEntropy(torch.autograd.Function):
    """Per-token ``(1-ε)·a(p)·(-log p) + (ε/V)·Σ_v(-log p_v)`` on ``[N, V]`` logits, for a loss that depends on
    the logits only through ``log p`` of the target (γ-CE, focal, cross-entropy).

    ``rule(log_p, entropy) -> (a, c)`` (a :class:`~.common.TokenWeightRule`; the entropy comes from
    ``prediction``, given when the rule reads it). Returns ``(loss [N], nll [N], a [N])``; only
    ``loss`` has a gradient.

    Forward keeps ``logsumexp`` per row (``[N]``); backward writes the gradient into one ``[N, V]`` buffer of the
    logits' dtype. Scratch memory is one fp32 chunk of rows, reused (fresh allocations cost page faults on CPU).
    """

    @staticmethod
    def forward(ctx, logits, targets, mask, rule, label_smoothing, prediction):  # type: ignore[override]
        num_rows, vocab_size = logits.shape
        chunks = _row_chunks(num_rows, vocab_size)
        scratch = logits.new_empty((chunks[0][1] - chunks[0][0], vocab_size), dtype=torch.float32)
        # prediction metrics (PredictionStats, or None): one more fp32 chunk for exp(logits - max)
        exp_scratch = torch.empty_like(scratch) if prediction is not None else None
        lse = torch.empty(num_rows, dtype=torch.float32, device=logits.device)
        smooth = torch.empty_like(lse) if label_smoothing > 0 else None
        for start, end in chunks:
            rows = logits[start:end]
            buf = scratch[: end - start]
            if rows.dtype != torch.float32:
                rows = buf.copy_(rows)
            if smooth is not None:
                smooth[start:end] = rows.sum(dim=-1)  # Σ_v logit_v
            if prediction is not None:
                row_max, _, sumexp = prediction.exp_rows(rows, buf, exp_scratch[: end - start])
                prediction.store(start, end)
                lse[start:end] = sumexp.log_().squeeze(1) + row_max.squeeze(1)
                continue
            row_max = rows.amax(dim=-1, keepdim=True)
            torch.sub(rows, row_max, out=buf).exp_()
            lse[start:end] = buf.sum(dim=-1).log_() + row_max.squeeze(1)
        del scratch, exp_scratch
        target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1).float()
        loss, nll, weight, grad_factor = per_token_values(
            target_logit,
            lse,
            smooth,
            mask,
            vocab_size,
            rule,
            label_smoothing,
            None if prediction is None else prediction.entropy,
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
        softmax_coef, onehot_coef, constant = logit_grad_coefficients(grad_loss, grad_factor, mask, eps, vocab_size)
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
            probs_to_logit_grad_(
                out.exp_(), targets[start:end], softmax_coef, onehot_coef, constant, slice(start, end)
            )
            if scratch is not None:
                grad[start:end].copy_(out)
        return grad, None, None, None, None, None


def token_weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    terms: TokenWeightRule | TokenTerms,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    reduction: Reduction = "mean",
    token_scale: torch.Tensor | None = None,
    extra_metrics: bool = False,
) -> tuple[torch.Tensor, GammaCEStats]:
    """The loss given by the weight rule ``terms`` (a :class:`~.common.TokenWeightRule` from
    :func:`~.common.gamma_terms` or :func:`~.common.focal_terms`; a bare :data:`~.common.TokenTerms` function is a
    rule without a floor) on ``[..., V]`` logits, with the layout, validation and reductions of
    :func:`gamma_cross_entropy`, plus logging sums.

    ``token_scale`` (shaped like ``labels``, or ``[batch]``) multiplies each token's loss (value and gradient);
    the denominator of ``reduction="mean"`` is unchanged.
    ``extra_metrics=True`` adds the prediction metrics to the sums (argmax accuracy, predictive entropy and
    the calibration bins of :class:`~.common.GammaCEStats`), computed in the same pass over each chunk of rows
    (one more ``[chunk, V]`` fp32 buffer and one more multiply-add pass over it)."""
    check_reduction(reduction)
    check_inputs(logits, labels, ignore_index, shift_labels)
    rule = as_token_weight_rule(terms)
    vocab_size = logits.shape[-1]
    safe_targets, mask = prepare_targets(
        labels, vocab_size, ignore_index=ignore_index, shift_labels=shift_labels, device=logits.device
    )
    scale = prepare_token_scale(token_scale, labels, shift_labels=shift_labels, device=logits.device)
    flat = logits.reshape(-1, vocab_size)
    # the prediction pass also gives the per-position entropy that an entropy rule reads
    prediction = PredictionStats(flat.shape[0], flat.device) if extra_metrics or rule.uses_entropy else None
    per_token, nll, weight = _TokenWeightedCrossEntropy.apply(
        flat, safe_targets, mask, rule, float(label_smoothing), prediction
    )
    if scale is not None:
        per_token = per_token * scale  # autograd hands each row its factor as the upstream gradient
    return reduce_token_losses(
        per_token,
        nll,
        weight,
        mask,
        labels_shape=labels.shape,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
        floor=rule.floor,
        prediction=prediction.sums(safe_targets, mask) if extra_metrics else None,
    )


# The public losses below spell out their keyword arguments, and each forwards them to the next: users call them
# with keywords, and help(), IDEs and type checkers read the signature. Sharing one keyword list (a **kwargs
# pass-through, a signature-copying decorator, an options object) would hide it from all three. The copies are
# kept equal by tests/test_loss_options.py::test_public_loss_signatures_agree.
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
    extra_metrics: bool = False,
) -> tuple[torch.Tensor, GammaCEStats]:
    """:func:`gamma_cross_entropy` that also returns detached sums for logging (:class:`GammaCEStats`);
    ``extra_metrics=True`` adds accuracy, entropy and calibration sums (see :func:`token_weighted_cross_entropy`)."""
    validate_loss_hyperparameters(gamma, min_weight, label_smoothing)
    return token_weighted_cross_entropy(
        logits,
        labels,
        gamma_terms(float(gamma), float(min_weight)),
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
        extra_metrics=extra_metrics,
    )


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
    extra_metrics: bool = False,
) -> tuple[torch.Tensor, GammaCEStats]:
    """Token-level focal loss (Lin et al., 2017), a baseline for γ-CE, with the same layout and reductions.

    Per scored token: ``(1-ε) · α (1-p_y)^f · (-log p_y) + (ε/V) · Σ_v(-log p_v)``, with the gradient flowing
    through the modulating factor (standard focal loss). ``focal_gamma`` = f ≥ 0 (0 is cross-entropy),
    ``focal_alpha`` = α > 0 a scalar scale. The stats' ``weight_sum`` sums ``α (1-p_y)^f``.
    """
    validate_focal_hyperparameters(focal_gamma, focal_alpha, label_smoothing)
    return token_weighted_cross_entropy(
        logits,
        labels,
        focal_terms(float(focal_gamma), float(focal_alpha)),
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
        extra_metrics=extra_metrics,
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
    that of ``-log(γ + (1-γ) p) / (1-γ)``. The math runs in fp32 for fp16/bf16 logits. A target with
    probability exactly 0 gives ``+inf``, as ``F.cross_entropy`` does.

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
