"""The pure-PyTorch backend of :mod:`.linear` (``impl="torch"``): γ-CE of ``hidden @ weight.T`` a chunk of rows at a time.

Only a ``[chunk, V]`` block of logits exists at any moment. Two autograd functions, chosen by the reduction:

* :class:`_FusedLinearGammaCE` (``"mean"`` / ``"sum"``): the gradients are built during the forward pass, while
  each chunk's logits and softmax are at hand, and only rescaled in backward;
* :class:`_LinearGammaCE` (``"none"``): stores ``[N]`` statistics only and recomputes the chunks in backward.

:func:`torch_linear_loss` picks between them; :func:`prediction_pass` fills the prediction metrics of the kernel
backends, whose kernels return only the NLL. Argument checks, targets and reductions are the caller's
(:func:`.linear.linear_token_weighted_cross_entropy`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import PredictionStats, TokenWeightRule, logit_grad_coefficients, per_token_values, probs_to_logit_grad_

__all__ = ["ChunkSettings", "prediction_pass", "torch_linear_loss"]


@dataclass(frozen=True)
class ChunkSettings:
    """The non-tensor settings of one call: the per-token weight rule, label smoothing ε, and how the logits are made
    (``softcap((logit_scale · hidden) @ weight.T + bias)``, ``chunk_size`` rows at a time). A rule that
    ``uses_entropy`` reads the entropy from the prediction stats, which the caller must then give."""

    rule: TokenWeightRule
    eps: float
    logit_scale: float
    softcap: float | None
    chunk_size: int


class _ChunkLogits:
    """Computes fp32 logits for chunks of rows into reused buffers (fresh allocations cost page faults on CPU)."""

    def __init__(self, hidden, weight, bias, settings: ChunkSettings, prediction=None):
        self.weight, self.bias, self.logit_scale, self.softcap = weight, bias, settings.logit_scale, settings.softcap
        self.prediction = prediction
        self.hidden = hidden
        softcap = settings.softcap
        rows = min(settings.chunk_size, hidden.shape[0])
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
        # Kept as found, but note: the gradients are built inside the autograd functions' forward / backward, which
        # run with grad mode off, so this copy is not taken there (only in prediction_pass, which needs no
        # gradient); making it effective changes the fp16 CPU results' rounding, a change of numbers for its own
        # issue, not part of a tidy-up.
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
    def forward(ctx, hidden, weight, bias, targets, mask, settings, needs, prediction, scale):  # type: ignore[override]
        num_rows = hidden.shape[0]
        vocab_size = weight.shape[0]
        eps, chunk_size = settings.eps, settings.chunk_size
        chunks = _ChunkLogits(hidden, weight, bias, settings, prediction)
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
                settings.rule,
                eps,
                None if prediction is None else prediction.entropy[rows],
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
        return grads[0], grads[1], grads[2], None, None, None, None, None, None


def _stats_pass(hidden, weight, bias, targets, settings, with_logit_sum, prediction):
    """One forward pass over the chunks: ``(lse, target_logit, logit_sum or None)`` ``[N]`` fp32, and the
    prediction metrics into ``prediction`` (a :class:`PredictionStats`, or None). No gradients."""
    num_rows = hidden.shape[0]
    chunk_size = settings.chunk_size
    chunks = _ChunkLogits(hidden, weight, bias, settings, prediction)
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
    def forward(ctx, hidden, weight, bias, targets, mask, settings, prediction):  # type: ignore[override]
        vocab_size = weight.shape[0]
        eps = settings.eps
        lse, target_logit, logit_sum = _stats_pass(hidden, weight, bias, targets, settings, eps > 0, prediction)
        per_token, nll, token_weight, grad_factor = per_token_values(
            target_logit,
            lse,
            logit_sum,
            mask,
            vocab_size,
            settings.rule,
            eps,
            None if prediction is None else prediction.entropy,
        )
        ctx.save_for_backward(hidden, weight, bias, targets, mask, lse, grad_factor)
        ctx.settings = settings
        ctx.mark_non_differentiable(nll, token_weight)
        return per_token, nll, token_weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_per_token, _grad_nll, _grad_weight):  # type: ignore[override]
        hidden, weight, bias, targets, mask, lse, grad_factor = ctx.saved_tensors
        settings = ctx.settings
        eps, chunk_size = settings.eps, settings.chunk_size
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, needs)
        coefs = logit_grad_coefficients(grad_per_token, grad_factor, mask, eps, weight.shape[0])
        chunks = _ChunkLogits(hidden, weight, bias, settings)
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
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def torch_linear_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    mask: torch.Tensor,
    settings: ChunkSettings,
    *,
    reduce: bool,
    needs: tuple[bool, bool, bool],
    prediction: PredictionStats | None,
    scale: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total or None, per_token [N], nll [N], weight [N])`` of ``hidden`` ``[N, d]`` (already flat) against the
    safe ``targets`` / ``mask`` ``[N]``, ``scale`` (``[N]`` or None) applied to each token's loss.

    ``reduce``: the caller sums the losses (``"mean"`` / ``"sum"``): the differentiable ``total`` comes from
    :class:`_FusedLinearGammaCE` (gradients built in forward; ``needs`` says which of hidden, weight, bias want one).
    Otherwise ``total`` is None and ``per_token`` is differentiable (:class:`_LinearGammaCE`).
    """
    if reduce:
        return _FusedLinearGammaCE.apply(hidden, weight, bias, targets, mask, settings, needs, prediction, scale)
    per_token, nll, token_weight = _LinearGammaCE.apply(hidden, weight, bias, targets, mask, settings, prediction)
    if scale is not None:
        per_token = per_token * scale
    return None, per_token, nll, token_weight


def prediction_pass(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    settings: ChunkSettings,
    prediction: PredictionStats,
) -> None:
    """Fill ``prediction`` with one gradient-free pass over the chunks (for backends that return only the NLL)."""
    _stats_pass(hidden.detach(), weight.detach(), None if bias is None else bias.detach(), targets, settings, False,
                prediction)  # fmt: skip
