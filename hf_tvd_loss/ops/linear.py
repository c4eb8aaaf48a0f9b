"""γ-cross-entropy fused with the output projection: the ``[N, V]`` logits are never materialised.

A language model's last step is ``logits = hidden @ weight.T (+ bias)``, ``[N, d] @ [d, V]``. For a 32k-128k
vocabulary those logits (kept in fp32 for the loss, plus their gradient) are usually the largest tensors of
a training step. :func:`linear_gamma_cross_entropy` takes the hidden states and the output-embedding weight
instead and processes the tokens a chunk of rows at a time, so only a ``[chunk, V]`` block of logits exists
at any moment. The loss is exactly :func:`hf_tvd_loss.gamma_cross_entropy` of those logits (same arguments,
validation and errors; see that function for the formula)::

    z      = (logit_scale · hidden) @ weight.T + bias             # [N, V], one chunk of rows at a time
    logits = cap · tanh(z / cap)      if final_logit_softcapping  # Gemma-2 style
    loss   = gamma_cross_entropy(logits, labels, ...)

Usage::

    from hf_tvd_loss.ops import linear_gamma_cross_entropy

    hidden = model.model(input_ids, attention_mask=mask).last_hidden_state      # [B, T, d]
    loss = linear_gamma_cross_entropy(hidden, model.lm_head.weight, labels, gamma=0.1, shift_labels=True)

Inside a Trainer, :mod:`hf_tvd_loss.heads` runs this within the output head's own forward, so sharding engines
(FSDP2, ZeRO-3) have the head's weight gathered. This module is the public entry: it checks the arguments,
prepares the targets, picks the backend (``impl``) and reduces. The backends: ``"torch"`` in :mod:`.linear_torch`,
the fused kernels of cut-cross-entropy / liger-kernel in :mod:`.kernels`. Measured speed and memory are in
``BENCHMARKS.md``.
"""

from __future__ import annotations

import contextlib

import torch

from .common import (
    GammaCEStats,
    PredictionStats,
    Reduction,
    TokenTerms,
    TokenWeightRule,
    as_token_weight_rule,
    check_inputs,
    check_number,
    check_reduction,
    gamma_terms,
    prepare_targets,
    prepare_token_scale,
    reduce_token_losses,
    rows_per_chunk,
    validate_loss_hyperparameters,
)
from .kernels import Impl, kernel_per_token, select_impl
from .linear_torch import ChunkSettings, prediction_pass, torch_linear_loss

__all__ = [
    "Impl",
    "linear_gamma_cross_entropy",
    "linear_gamma_cross_entropy_with_stats",
    "linear_token_weighted_cross_entropy",
]


def _check_linear_inputs(hidden, weight, bias, labels, ignore_index, shift_labels, logit_scale, softcap, chunk_size):
    check_inputs(hidden, labels, ignore_index, shift_labels, name="hidden", last_dim="hidden_size")
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.dim() != 2:
        raise ValueError(
            "weight must be a floating-point [vocab_size, hidden_size] tensor (the output embedding), got "
            f"{type(weight).__name__ if not isinstance(weight, torch.Tensor) else (weight.dtype, tuple(weight.shape))}"
        )
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match hidden size {hidden.shape[-1]}: expected "
            "[vocab_size, hidden_size]"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight has an empty vocabulary dimension (vocab_size = 0)")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have the same dtype")
    if weight.device != hidden.device:
        raise ValueError(f"hidden ({hidden.device}) and weight ({weight.device}) must be on the same device")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise ValueError(f"bias must be a floating-point tensor of shape [vocab_size] or None, got {bias!r}")
        if bias.numel() != weight.shape[0] or bias.dim() not in (1, 2) or bias.shape[-1] != weight.shape[0]:
            raise ValueError(
                f"bias shape {tuple(bias.shape)} does not match vocab_size {weight.shape[0]}: expected "
                "[vocab_size] (or [1, vocab_size], like BART's final_logits_bias)"
            )
    check_number("logit_scale", logit_scale, low=0.0, low_open=True)
    check_number("final_logit_softcapping", softcap, low=0.0, low_open=True, allow_none=True)
    check_number("chunk_size", chunk_size, low=1, integer=True, allow_none=True)


def linear_token_weighted_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    terms: TokenWeightRule | TokenTerms,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
    impl: Impl = "torch",
    extra_metrics: bool = False,
    token_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, GammaCEStats]:
    """The loss given by the weight rule ``terms`` (a :class:`~.common.TokenWeightRule`, e.g. γ-CE or focal; a bare
    :data:`~.common.TokenTerms` function is a rule without a floor) of the logits
    ``softcap((logit_scale · hidden) @ weight.T + bias)`` without materialising them, plus logging sums; see
    :func:`linear_gamma_cross_entropy` for the arguments.

    ``extra_metrics=True`` adds argmax accuracy, predictive entropy and calibration sums to the stats, computed
    chunk by chunk in the loss's own pass (impl="torch": one more ``[chunk, V]`` fp32 buffer), or in one extra
    gradient-free chunked pass for the kernel backends, whose kernels return only the NLL.
    ``token_scale`` (shaped like ``labels``, or ``[batch]``) multiplies each token's loss, value and gradient."""
    check_reduction(reduction)
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)
    rule = as_token_weight_rule(terms)
    device_type = hidden.device.type if isinstance(hidden, torch.Tensor) else "cpu"
    autocast = torch.is_autocast_enabled(device_type)
    if autocast:
        # Under autocast the model's lm_head would run its matmul in the autocast dtype: do the same (the casts are
        # differentiable, so the fp32 parameters get their gradients), and keep autocast off inside.
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
        _check_linear_inputs(
            hidden, weight, bias, labels, ignore_index, shift_labels, logit_scale, final_logit_softcapping, chunk_size
        )
        eps = float(label_smoothing)
        softcap = None if final_logit_softcapping is None else float(final_logit_softcapping)
        vocab_size, hidden_size = weight.shape
        targets, mask = prepare_targets(
            labels, vocab_size, ignore_index=ignore_index, shift_labels=shift_labels, device=hidden.device
        )
        flat_hidden = hidden.reshape(-1, hidden_size)
        flat_bias = None if bias is None else bias.reshape(vocab_size)
        settings = ChunkSettings(rule, eps, float(logit_scale), softcap, chunk_size or rows_per_chunk(vocab_size))
        grad_on = torch.is_grad_enabled()
        needs = (
            grad_on and hidden.requires_grad,
            grad_on and weight.requires_grad,
            grad_on and bias is not None and bias.requires_grad,
        )
        backend = select_impl(impl, hidden, flat_bias, softcap, eps, vocab_size=vocab_size, needs_grad=any(needs))
        scale = prepare_token_scale(token_scale, labels, shift_labels=shift_labels, device=hidden.device)
        # the prediction pass also gives the per-position entropy that an entropy rule reads
        with_prediction = extra_metrics or rule.uses_entropy
        prediction = PredictionStats(flat_hidden.shape[0], flat_hidden.device) if with_prediction else None
        if backend == "torch":
            total, per_token, nll, token_weight = torch_linear_loss(
                flat_hidden, weight, flat_bias, targets, mask, settings,
                reduce=reduction != "none", needs=needs, prediction=prediction, scale=scale,
            )  # fmt: skip
        else:
            total = None
            if prediction is not None:  # the kernels return only the NLL: one gradient-free pass for the rest
                prediction_pass(flat_hidden, weight, flat_bias, targets, settings, prediction)
            scaled = flat_hidden * settings.logit_scale if settings.logit_scale != 1.0 else flat_hidden
            per_token, nll, token_weight = kernel_per_token(
                backend, scaled, weight, flat_bias, targets, mask, rule, eps, softcap, ignore_index,
                entropy=None if prediction is None else prediction.entropy,
            )  # fmt: skip
            if scale is not None:
                per_token = per_token * scale
        return reduce_token_losses(
            per_token,
            nll,
            token_weight,
            mask,
            labels_shape=labels.shape,
            shift_labels=shift_labels,
            num_items_in_batch=num_items_in_batch,
            reduction=reduction,
            total=total,
            floor=rule.floor,
            prediction=prediction.sums(targets, mask) if extra_metrics else None,
        )


# The public losses below spell out their keyword arguments, and each forwards them to the next: users call them
# with keywords, and help(), IDEs and type checkers read the signature. Sharing one keyword list (a **kwargs
# pass-through, a signature-copying decorator, an options object) would hide it from all three. The copies are
# kept equal by tests/test_loss_options.py::test_public_loss_signatures_agree.
def linear_gamma_cross_entropy_with_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
    gamma: float,
    min_weight: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
    impl: Impl = "torch",
    extra_metrics: bool = False,
) -> tuple[torch.Tensor, GammaCEStats]:
    """:func:`linear_gamma_cross_entropy` that also returns detached sums for logging (:class:`GammaCEStats`)."""
    validate_loss_hyperparameters(gamma, min_weight, label_smoothing)
    return linear_token_weighted_cross_entropy(
        hidden,
        weight,
        labels,
        gamma_terms(float(gamma), float(min_weight)),
        bias=bias,
        logit_scale=logit_scale,
        final_logit_softcapping=final_logit_softcapping,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
        chunk_size=chunk_size,
        impl=impl,
        extra_metrics=extra_metrics,
    )


def linear_gamma_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
    gamma: float,
    min_weight: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    shift_labels: bool = False,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
    impl: Impl = "torch",
) -> torch.Tensor:
    """γ-cross-entropy of ``logits = softcap((logit_scale · hidden) @ weight.T + bias)`` without materialising them.

    Same loss, arguments, validation and output layout as :func:`hf_tvd_loss.gamma_cross_entropy` applied to
    those logits; the softmax and weight math runs in fp32, the matmuls in the inputs' dtype.

    Args:
        hidden: ``[..., d]`` final hidden states (e.g. ``[batch, seq_len, d]``), fp32/bf16/fp16.
        weight: ``[V, d]`` output embedding (``lm_head.weight``), same dtype and device as ``hidden``.
        labels: ``[...]`` integer targets in ``[0, V)`` or ``ignore_index``, shaped like ``hidden[..., 0]``.
        bias: optional ``[V]`` (or ``[1, V]``) added to the logits, e.g. BART's ``final_logits_bias``.
        logit_scale: multiplies ``hidden`` before the projection (T5 with tied embeddings: ``d_model**-0.5``).
        final_logit_softcapping: ``cap`` in ``cap · tanh(logits / cap)`` (Gemma 2), or None.
        gamma, min_weight, label_smoothing, ignore_index, shift_labels, num_items_in_batch, reduction:
            as in :func:`hf_tvd_loss.gamma_cross_entropy`.
        chunk_size: token rows per chunk (default: about 2**24 logits per chunk, e.g. 524 rows at V = 32000).
        impl: ``"torch"`` (pure PyTorch, any device), ``"cce"`` / ``"liger"`` (fused CUDA kernels from
            cut-cross-entropy / liger-kernel for the per-token NLL, γ weighting added in torch; see
            :mod:`.kernels` for what has been checked), or ``"auto"`` (liger, on CUDA when installed and applicable;
            else torch; cut-cross-entropy only when asked for by name).

    Returns:
        A 0-dim fp32 tensor, or a ``labels``-shaped one for ``reduction="none"``. Gradients flow to
        ``hidden``, ``weight`` and ``bias``. With ``reduction`` "mean"/"sum" and ``impl="torch"`` the
        gradients are computed during the forward pass (see :class:`.linear_torch._FusedLinearGammaCE`), so such a loss
        supports one backward pass.

    Raises:
        ValueError: everything :func:`hf_tvd_loss.gamma_cross_entropy` refuses, plus mismatched ``weight`` /
            ``bias`` shapes, dtypes or devices, a non-positive ``logit_scale`` / softcap / ``chunk_size``, an
            unknown ``impl``, or an explicitly requested backend that is not installed or not on CUDA.
    """
    loss, _ = linear_gamma_cross_entropy_with_stats(
        hidden,
        weight,
        labels,
        bias=bias,
        logit_scale=logit_scale,
        final_logit_softcapping=final_logit_softcapping,
        gamma=gamma,
        min_weight=min_weight,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
        chunk_size=chunk_size,
        impl=impl,
    )
    return loss
