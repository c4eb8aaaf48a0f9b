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
(FSDP2, ZeRO-3) have the head's weight gathered. Backends (``impl``): ``"torch"`` here, or the fused kernels of
cut-cross-entropy / liger-kernel through :mod:`.kernels`. Measured speed and memory are in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import torch

from .common import (
    GammaCEStats,
    PredictionStats,
    Reduction,
    TokenTerms,
    check_inputs,
    check_number,
    check_reduction,
    gamma_terms,
    logit_grad_coefficients,
    per_token_values,
    prepare_targets,
    prepare_token_scale,
    probs_to_logit_grad_,
    reduce_token_losses,
    rows_per_chunk,
    validate_loss_hyperparameters,
)
from .kernels import Impl, kernel_per_token, select_impl

__all__ = [
    "Impl",
    "linear_gamma_cross_entropy",
    "linear_gamma_cross_entropy_with_stats",
    "linear_token_weighted_cross_entropy",
]


class _ChunkLogits:
    """Computes fp32 logits for chunks of rows into reused buffers (fresh allocations cost page faults on CPU)."""

    def __init__(self, hidden, weight, bias, logit_scale, softcap, chunk_size, prediction=None):
        self.weight, self.bias, self.logit_scale, self.softcap = weight, bias, logit_scale, softcap
        self.prediction = prediction
        self.hidden = hidden
        rows = min(chunk_size, hidden.shape[0])
        vocab_size = weight.shape[0]
        self.low_precision = hidden.dtype != torch.float32
        # z in the inputs' dtype (what the model's lm_head computes), then an fp32 copy for the softmax math.
        self.z_buf = hidden.new_empty((rows, vocab_size))
        self.f_buf = (
            self.z_buf if not self.low_precision else hidden.new_empty((rows, vocab_size), dtype=torch.float32)
        )
        self.t_buf = hidden.new_empty((rows, vocab_size), dtype=torch.float32) if softcap is not None else None
        # prediction metrics: exp(logits - max) goes to its own buffer (the shifted logits are still needed)
        self.e_buf = hidden.new_empty((rows, vocab_size), dtype=torch.float32) if prediction is not None else None
        # [V, d] as the right operand of grad_logits @ weight: CPU fp16 matmuls are ~100x slower with a row-major
        # right operand of this shape than with a column-major one (torch 2.13, measured in BENCHMARKS.md, "bf16
        # and fp16"), so on CPU in fp16 keep a column-major copy (one [V, d] fp16 copy, backward only).
        self.weight_right = weight
        if weight.device.type == "cpu" and weight.dtype == torch.float16 and torch.is_grad_enabled():
            self.weight_right = weight.t().contiguous().t()

    def scaled_hidden(self, start: int, end: int) -> torch.Tensor:
        h = self.hidden[start:end]
        return h * self.logit_scale if self.logit_scale != 1.0 else h

    def __call__(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``h`` ``[n, d]`` (already scaled) -> ``(logits [n, V] fp32, tanh(z/cap) [n, V] or None)``."""
        n = h.shape[0]
        z = torch.mm(h, self.weight.t(), out=self.z_buf[:n])
        logits = self.f_buf[:n]
        if self.low_precision:
            logits.copy_(z)
        if self.bias is not None:
            logits.add_(self.bias.float())
        tanh = None
        if self.softcap is not None:
            tanh = torch.div(logits, self.softcap, out=self.t_buf[:n]).tanh_()
            torch.mul(tanh, self.softcap, out=logits)
        return logits, tanh

    def backprop(self, grad_logits, tanh, h, start, end, grad_hidden, grad_weight, grad_bias) -> None:
        """Chain ``d loss / d logits`` ``[n, V]`` (fp32, overwritten) of rows ``start:end`` into the three grads."""
        if tanh is not None:
            # d(cap · tanh(z / cap)) / dz = 1 - tanh²
            grad_logits.mul_(1.0 - tanh.square_())
        if grad_bias is not None:
            grad_bias.add_(grad_logits.sum(dim=0))
        if self.low_precision:
            # Matmuls in the inputs' dtype, like autograd on the materialised logits would do.
            grad_z = self.z_buf[: end - start].copy_(grad_logits)
        else:
            grad_z = grad_logits
        if grad_hidden is not None:
            out = grad_hidden[start:end]
            if self.weight_right is None:
                cpu_fp16 = self.weight.device.type == "cpu" and self.weight.dtype == torch.float16
                self.weight_right = self.weight.t().contiguous().t() if cpu_fp16 else self.weight
            torch.mm(grad_z, self.weight_right, out=out)
            if self.logit_scale != 1.0:
                out.mul_(self.logit_scale)
        if grad_weight is not None:
            if grad_weight.dtype == grad_z.dtype:
                grad_weight.addmm_(grad_z.t(), h)
            elif grad_z.dtype == torch.float16 and 2.0 * (end - start) * float(h.abs().max()) >= 65504.0:
                # This chunk's sum over its rows (|grad_logits| ≤ 2 per entry) could exceed fp16's range in an
                # fp16 matmul: do it in fp32 from the fp32 gradient (the gradient of the summed loss is not yet
                # scaled by 1 / tokens). One host sync per chunk, fp16 only.
                grad_weight.addmm_(grad_logits.t(), h.float())
            else:  # low-precision inputs: accumulate the chunks' contributions in fp32
                grad_weight.add_(torch.mm(grad_z.t(), h))


def _row_stats(logits, targets, start, end, lse, target_logit, logit_sum, chunks):
    """Fill rows ``start:end`` of lse / target_logit / logit_sum (and of ``chunks.prediction``, when set).

    Returns ``(e, sumexp)``: ``e = exp(logits - max)`` ``[n, V]`` (in place of ``logits``, or in ``chunks.e_buf``
    with prediction metrics) and its row sums ``[n, 1]``.
    """
    target_logit[start:end] = logits.gather(1, targets[start:end].unsqueeze(1)).squeeze(1)
    if logit_sum is not None:
        logit_sum[start:end] = logits.sum(dim=-1)
    prediction = chunks.prediction
    if prediction is not None:
        row_max, e, sumexp = prediction.exp_rows(logits, logits, chunks.e_buf[: end - start])
        prediction.store(start, end)
    else:
        row_max = logits.amax(dim=-1, keepdim=True)
        e = logits.sub_(row_max).exp_()
        sumexp = e.sum(dim=-1, keepdim=True)
    lse[start:end] = sumexp.log().squeeze(1) + row_max.squeeze(1)
    return e, sumexp


def _grad_buffers(hidden, weight, bias, needs):
    need_hidden, need_weight, need_bias = needs
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
    return grad_hidden, grad_weight, grad_bias


class _FusedLinearGammaCE(torch.autograd.Function):
    """Summed γ-CE of ``hidden @ weight.T``, with the gradients computed during the forward pass.

    Why the gradient is computed in forward (as Liger-Kernel does) rather than recomputing the logits in
    backward (as cut-cross-entropy does): with the loss reduced to a scalar, the upstream gradient is one
    number, so the gradients for a unit upstream gradient can be built chunk by chunk while the chunk's
    logits and softmax are at hand, and only rescaled in backward. That costs 3 matmuls of ``N·d·V`` and one
    exp pass over the logits, against 4 matmuls and two exp passes for recomputation (about 25% less work on
    CPU, where the matmuls dominate), and the extra memory is the same: one ``[chunk, V]`` block plus gradient
    buffers of the size of ``hidden`` and ``weight``, which backward has to return anyway.
    The per-token (``reduction="none"``) form cannot do this: each token's upstream gradient is unknown until
    backward, so :class:`_LinearGammaCE` stores nothing ``[N, V]``-sized and recomputes the chunks instead.

    Returns ``(total [] differentiable, per_token [N], nll [N], weight [N])``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        hidden,
        weight,
        bias,
        targets,
        mask,
        terms,
        eps,
        logit_scale,
        softcap,
        chunk_size,
        needs,
        prediction,
        scale,
    ):
        num_rows = hidden.shape[0]
        vocab_size = weight.shape[0]
        chunks = _ChunkLogits(hidden, weight, bias, logit_scale, softcap, chunk_size, prediction)
        f32 = dict(dtype=torch.float32, device=hidden.device)
        lse, target_logit = torch.empty(num_rows, **f32), torch.empty(num_rows, **f32)
        logit_sum = torch.empty(num_rows, **f32) if eps > 0 else None
        per_token, nll, token_weight = (torch.zeros(num_rows, **f32) for _ in range(3))
        grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, needs)
        for start in range(0, num_rows, chunk_size):
            end = min(start + chunk_size, num_rows)
            rows = slice(start, end)
            h = chunks.scaled_hidden(start, end)
            logits, tanh = chunks(h)
            e, sumexp = _row_stats(logits, targets, start, end, lse, target_logit, logit_sum, chunks)
            per_token[rows], nll[rows], token_weight[rows], grad_factor = per_token_values(
                target_logit[rows],
                lse[rows],
                None if logit_sum is None else logit_sum[rows],
                mask[rows],
                vocab_size,
                terms,
                eps,
            )
            if any(needs):
                probs = e.div_(sumexp)
                upstream = torch.ones(end - start, **f32) if scale is None else scale[rows]
                coefs = logit_grad_coefficients(upstream, grad_factor, mask[rows], eps, vocab_size)
                local = slice(0, end - start)
                probs_to_logit_grad_(probs, targets[rows], *coefs, local)
                chunks.backprop(probs, tanh, h, start, end, grad_hidden, grad_weight, grad_bias)
        del chunks
        # The weight and bias gradients are sums over all N tokens of the summed loss (upstream gradient 1): in
        # fp16 they can exceed its range (65504) before backward scales them by the upstream gradient (1 / tokens
        # for a mean), so fp16 keeps them in fp32 until then; bf16 has fp32's range and is cast now (half the memory).
        ctx.dtypes = [None, weight.dtype, None if bias is None else bias.dtype]
        if grad_weight is not None and grad_weight.dtype != weight.dtype and weight.dtype != torch.float16:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None and grad_bias.dtype != bias.dtype and bias.dtype != torch.float16:
            grad_bias = grad_bias.to(bias.dtype)
        ctx.grads = [grad_hidden, grad_weight, grad_bias]
        if scale is not None:
            per_token = per_token * scale
        ctx.mark_non_differentiable(per_token, nll, token_weight)
        return per_token.sum(), per_token, nll, token_weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_per_token, _grad_nll, _grad_weight):  # type: ignore[override]
        if ctx.grads is None:
            raise RuntimeError(
                "linear_gamma_cross_entropy with a reduced loss supports one backward pass per forward "
                "(its gradients are precomputed and scaled in place); run the forward again"
            )
        grads, ctx.grads = ctx.grads, None
        # Scale in place: these buffers are not referenced anywhere else.
        grads = [None if g is None else g.mul_(grad_total.to(g.dtype)) for g in grads]
        grads = [
            g if g is None or g.dtype == dtype or dtype is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)
        ]
        return grads[0], grads[1], grads[2], None, None, None, None, None, None, None, None, None, None


def _stats_pass(hidden, weight, bias, targets, logit_scale, softcap, chunk_size, with_logit_sum, prediction):
    """One forward pass over the chunks: ``(lse, target_logit, logit_sum or None)`` ``[N]`` fp32, and the
    prediction metrics into ``prediction`` (a :class:`PredictionStats`, or None). No gradients."""
    num_rows = hidden.shape[0]
    chunks = _ChunkLogits(hidden, weight, bias, logit_scale, softcap, chunk_size, prediction)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    lse, target_logit = torch.empty(num_rows, **f32), torch.empty(num_rows, **f32)
    logit_sum = torch.empty(num_rows, **f32) if with_logit_sum else None
    with torch.no_grad():
        for start in range(0, num_rows, chunk_size):
            end = min(start + chunk_size, num_rows)
            logits, _ = chunks(chunks.scaled_hidden(start, end))
            _row_stats(logits, targets, start, end, lse, target_logit, logit_sum, chunks)
    return lse, target_logit, logit_sum


class _LinearGammaCE(torch.autograd.Function):
    """Per-token γ-CE of ``hidden @ weight.T``; the logits are recomputed chunk by chunk in backward.

    Returns ``(per_token [N] differentiable, nll [N], weight [N])``; saves only ``[N]`` statistics.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, hidden, weight, bias, targets, mask, terms, eps, logit_scale, softcap, chunk_size, prediction
    ):
        vocab_size = weight.shape[0]
        lse, target_logit, logit_sum = _stats_pass(
            hidden, weight, bias, targets, logit_scale, softcap, chunk_size, eps > 0, prediction
        )
        per_token, nll, token_weight, grad_factor = per_token_values(
            target_logit, lse, logit_sum, mask, vocab_size, terms, eps
        )
        ctx.save_for_backward(hidden, weight, bias, targets, mask, lse, grad_factor)
        ctx.settings = (eps, logit_scale, softcap, chunk_size)
        ctx.mark_non_differentiable(nll, token_weight)
        return per_token, nll, token_weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_per_token, _grad_nll, _grad_weight):  # type: ignore[override]
        hidden, weight, bias, targets, mask, lse, grad_factor = ctx.saved_tensors
        eps, logit_scale, softcap, chunk_size = ctx.settings
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, needs)
        coefs = logit_grad_coefficients(grad_per_token, grad_factor, mask, eps, weight.shape[0])
        chunks = _ChunkLogits(hidden, weight, bias, logit_scale, softcap, chunk_size)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = chunks.scaled_hidden(start, end)
            logits, tanh = chunks(h)
            probs = logits.sub_(lse[start:end].unsqueeze(1)).exp_()
            probs_to_logit_grad_(probs, targets[start:end], *coefs, slice(start, end))
            chunks.backprop(probs, tanh, h, start, end, grad_hidden, grad_weight, grad_bias)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None, None, None


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
    terms: TokenTerms,
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
    """The loss given by ``terms`` (γ-CE, focal) of the logits ``softcap((logit_scale · hidden) @ weight.T + bias)``
    without materialising them, plus logging sums; see :func:`linear_gamma_cross_entropy` for the arguments.

    ``extra_metrics=True`` adds argmax accuracy, predictive entropy and calibration sums to the stats, computed
    chunk by chunk in the loss's own pass (impl="torch": one more ``[chunk, V]`` fp32 buffer), or in one extra
    gradient-free chunked pass for the kernel backends, whose kernels return only the NLL.
    ``token_scale`` (shaped like ``labels``, or ``[batch]``) multiplies each token's loss, value and gradient."""
    check_reduction(reduction)
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)
    device_type = hidden.device.type if isinstance(hidden, torch.Tensor) else "cpu"
    if torch.is_autocast_enabled(device_type):
        # Under autocast the model's lm_head would run its matmul in the autocast dtype: do the same (the casts are
        # differentiable, so the fp32 parameters get their gradients), and keep autocast off inside.
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return linear_token_weighted_cross_entropy(
                hidden, weight, labels, terms, bias=bias, logit_scale=logit_scale,
                final_logit_softcapping=final_logit_softcapping, label_smoothing=label_smoothing,
                ignore_index=ignore_index, shift_labels=shift_labels, num_items_in_batch=num_items_in_batch,
                reduction=reduction, chunk_size=chunk_size, impl=impl, token_scale=token_scale,
                extra_metrics=extra_metrics,
            )  # fmt: skip
    _check_linear_inputs(
        hidden, weight, bias, labels, ignore_index, shift_labels, logit_scale, final_logit_softcapping, chunk_size
    )
    eps = float(label_smoothing)
    logit_scale = float(logit_scale)
    softcap = None if final_logit_softcapping is None else float(final_logit_softcapping)
    vocab_size, hidden_size = weight.shape
    targets, mask = prepare_targets(
        labels, vocab_size, ignore_index=ignore_index, shift_labels=shift_labels, device=hidden.device
    )
    flat_hidden = hidden.reshape(-1, hidden_size)
    flat_bias = None if bias is None else bias.reshape(vocab_size)
    chunk_size = chunk_size or rows_per_chunk(vocab_size)
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    backend = select_impl(impl, hidden, flat_bias, softcap, eps, vocab_size=vocab_size, needs_grad=any(needs))
    scale = prepare_token_scale(token_scale, labels, shift_labels=shift_labels, device=hidden.device)

    total = None
    prediction = PredictionStats(flat_hidden.shape[0], flat_hidden.device) if extra_metrics else None
    if backend != "torch":
        scaled = flat_hidden * logit_scale if logit_scale != 1.0 else flat_hidden
        per_token, nll, token_weight = kernel_per_token(
            backend, scaled, weight, flat_bias, targets, mask, terms, eps, softcap, ignore_index
        )
        if scale is not None:
            per_token = per_token * scale
        if prediction is not None:
            _stats_pass(flat_hidden.detach(), weight.detach(), None if flat_bias is None else flat_bias.detach(),
                        targets, logit_scale, softcap, chunk_size, False, prediction)  # fmt: skip
    elif reduction == "none":
        per_token, nll, token_weight = _LinearGammaCE.apply(
            flat_hidden, weight, flat_bias, targets, mask, terms, eps, logit_scale, softcap, chunk_size, prediction
        )
        if scale is not None:
            per_token = per_token * scale
    else:
        total, per_token, nll, token_weight = _FusedLinearGammaCE.apply(
            flat_hidden,
            weight,
            flat_bias,
            targets,
            mask,
            terms,
            eps,
            logit_scale,
            softcap,
            chunk_size,
            needs,
            prediction,
            scale,
        )

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
        floor=getattr(terms, "floor", None),
        prediction=None if prediction is None else prediction.sums(targets, mask),
    )


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
        gradients are computed during the forward pass (see :class:`_FusedLinearGammaCE`), so such a loss
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
