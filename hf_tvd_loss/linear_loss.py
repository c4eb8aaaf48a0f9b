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

    from hf_tvd_loss.linear_loss import linear_gamma_cross_entropy

    hidden = model.model(input_ids, attention_mask=mask).last_hidden_state      # [B, T, d]
    loss = linear_gamma_cross_entropy(hidden, model.lm_head.weight, labels, gamma=0.1, shift_labels=True)

:func:`hf_tvd_loss.heads.resolve_output_head` finds the weight, bias, scale and softcapping of a transformers
model and computes its final hidden states. Measured speed and memory are in ``BENCHMARKS.md``.

Backends (``impl``): ``"torch"`` (the default) is the pure-PyTorch implementation here, on any device;
``"cce"`` (cut-cross-entropy) and ``"liger"`` (liger-kernel) use those packages' fused CUDA kernels for the
per-token negative log-likelihood (``reduction="none"``) and add the γ weighting and label smoothing on top;
``"auto"`` picks cce, then liger, on CUDA when installed and applicable, else torch. Each backend is checked
for the capabilities it needs before use (arguments of the installed version; liger-kernel's per-token
backward; cut-cross-entropy 25.1 takes no bias, so a head with a bias goes to liger or torch). The test suite
runs cut-cross-entropy's own CPU implementation through this module and checks liger-kernel's installed
signature; the CUDA kernels themselves have not been run in this repository (no GPU so far), and
cut-cross-entropy's default gradient filtering applies. ``"torch"`` stays the default.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import inspect
from typing import Literal

import torch

from .loss import (
    GammaCEStats,
    Reduction,
    _check_inputs,
    _check_options,
    _flat_targets,
    _logit_grad_coefficients,
    _probs_to_logit_grad_,
    _token_terms,
    reduce_token_losses,
    tvd_weight,
)

__all__ = ["Impl", "linear_gamma_cross_entropy", "linear_gamma_cross_entropy_with_stats"]

Impl = Literal["auto", "torch", "cce", "liger"]
_IMPLS = ("auto", "torch", "cce", "liger")

# Default rows per chunk: about this many logits at once (64 MiB of fp32 scratch per buffer; 524 rows at
# V = 32000). Measured on the 2-core CPU of BENCHMARKS.md (N = 2048, d = 512): 262 / 524 / 1024 rows gave
# 3.86 / 3.43 / 3.28 s and 108 / 140 / 201 MiB extra peak memory; matmuls of a few hundred rows are
# noticeably less efficient there, and the memory stays far below the logits path's (510 MiB).
_CHUNK_ELEMENTS = 1 << 24


def _default_chunk_size(vocab_size: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, vocab_size))


class _ChunkLogits:
    """Computes fp32 logits for chunks of rows into reused buffers (fresh allocations cost page faults on CPU)."""

    def __init__(self, hidden, weight, bias, logit_scale, softcap, chunk_size):
        self.weight, self.bias, self.logit_scale, self.softcap = weight, bias, logit_scale, softcap
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
            torch.mm(grad_z, self.weight, out=out)
            if self.logit_scale != 1.0:
                out.mul_(self.logit_scale)
        if grad_weight is not None:
            if grad_weight.dtype == grad_z.dtype:
                grad_weight.addmm_(grad_z.t(), h)
            else:  # low-precision inputs: accumulate the chunks' contributions in fp32
                grad_weight.add_(torch.mm(grad_z.t(), h))


def _row_stats(logits, targets, start, end, lse, target_logit, logit_sum):
    """Fill rows ``start:end`` of lse / target_logit / logit_sum; leaves ``exp(logits - max)`` in ``logits``.

    Returns the row sums of that exponential, ``[n, 1]``.
    """
    target_logit[start:end] = logits.gather(1, targets[start:end].unsqueeze(1)).squeeze(1)
    if logit_sum is not None:
        logit_sum[start:end] = logits.sum(dim=-1)
    row_max = logits.amax(dim=-1, keepdim=True)
    sumexp = logits.sub_(row_max).exp_().sum(dim=-1, keepdim=True)
    lse[start:end] = sumexp.log().squeeze(1) + row_max.squeeze(1)
    return sumexp


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
        ctx, hidden, weight, bias, targets, mask, gamma, min_weight, eps, logit_scale, softcap, chunk_size, needs
    ):
        num_rows = hidden.shape[0]
        vocab_size = weight.shape[0]
        chunks = _ChunkLogits(hidden, weight, bias, logit_scale, softcap, chunk_size)
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
            sumexp = _row_stats(logits, targets, start, end, lse, target_logit, logit_sum)
            per_token[rows], nll[rows], token_weight[rows] = _token_terms(
                target_logit[rows],
                lse[rows],
                None if logit_sum is None else logit_sum[rows],
                mask[rows],
                vocab_size,
                gamma,
                min_weight,
                eps,
            )
            if any(needs):
                probs = logits.div_(sumexp)
                coefs = _logit_grad_coefficients(
                    torch.ones(end - start, **f32), token_weight[rows], mask[rows], eps, vocab_size
                )
                local = slice(0, end - start)
                _probs_to_logit_grad_(probs, targets[rows], *coefs, local)
                chunks.backprop(probs, tanh, h, start, end, grad_hidden, grad_weight, grad_bias)
        del chunks
        if grad_weight is not None and grad_weight.dtype != weight.dtype:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None and grad_bias.dtype != bias.dtype:
            grad_bias = grad_bias.to(bias.dtype)
        ctx.grads = [grad_hidden, grad_weight, grad_bias]
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
        return grads[0], grads[1], grads[2], None, None, None, None, None, None, None, None, None


class _LinearGammaCE(torch.autograd.Function):
    """Per-token γ-CE of ``hidden @ weight.T``; the logits are recomputed chunk by chunk in backward.

    Returns ``(per_token [N] differentiable, nll [N], weight [N])``; saves only ``[N]`` statistics.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, hidden, weight, bias, targets, mask, gamma, min_weight, eps, logit_scale, softcap, chunk_size
    ):
        num_rows = hidden.shape[0]
        vocab_size = weight.shape[0]
        chunks = _ChunkLogits(hidden, weight, bias, logit_scale, softcap, chunk_size)
        f32 = dict(dtype=torch.float32, device=hidden.device)
        lse, target_logit = torch.empty(num_rows, **f32), torch.empty(num_rows, **f32)
        logit_sum = torch.empty(num_rows, **f32) if eps > 0 else None
        for start in range(0, num_rows, chunk_size):
            end = min(start + chunk_size, num_rows)
            logits, _ = chunks(chunks.scaled_hidden(start, end))
            _row_stats(logits, targets, start, end, lse, target_logit, logit_sum)
        del chunks
        per_token, nll, token_weight = _token_terms(
            target_logit, lse, logit_sum, mask, vocab_size, gamma, min_weight, eps
        )
        ctx.save_for_backward(hidden, weight, bias, targets, mask, lse, token_weight)
        ctx.settings = (eps, logit_scale, softcap, chunk_size)
        ctx.mark_non_differentiable(nll, token_weight)
        return per_token, nll, token_weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_per_token, _grad_nll, _grad_weight):  # type: ignore[override]
        hidden, weight, bias, targets, mask, lse, token_weight = ctx.saved_tensors
        eps, logit_scale, softcap, chunk_size = ctx.settings
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, needs)
        coefs = _logit_grad_coefficients(grad_per_token, token_weight, mask, eps, weight.shape[0])
        chunks = _ChunkLogits(hidden, weight, bias, logit_scale, softcap, chunk_size)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = chunks.scaled_hidden(start, end)
            logits, tanh = chunks(h)
            probs = logits.sub_(lse[start:end].unsqueeze(1)).exp_()
            _probs_to_logit_grad_(probs, targets[start:end], *coefs, slice(start, end))
            chunks.backprop(probs, tanh, h, start, end, grad_hidden, grad_weight, grad_bias)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None, None, None


def _check_linear_inputs(hidden, weight, bias, labels, ignore_index, shift_labels, logit_scale, softcap, chunk_size):
    _check_inputs(hidden, labels, ignore_index, shift_labels, name="hidden", last_dim="hidden_size")
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
    for name, value in (("logit_scale", logit_scale), ("final_logit_softcapping", softcap)):
        if value is None and name == "final_logit_softcapping":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")


_PACKAGES = {"cce": ("cut_cross_entropy", "cut-cross-entropy"), "liger": ("liger_kernel", "liger-kernel")}

# Devices each kernel backend runs on. cut-cross-entropy's and liger-kernel's fused kernels are Triton kernels
# for CUDA GPUs.
_KERNEL_DEVICES = {"cce": ("cuda",), "liger": ("cuda",)}

# The implementation of cut-cross-entropy's ``linear_cross_entropy`` that impl="cce" calls: its fused kernel.
# The test suite, on machines without a GPU, switches this (and _KERNEL_DEVICES) to the package's own
# "torch_compile" implementation, which runs on CPU, so that this module's call into the real package (argument
# names, per-token output, ignored tokens, gradients) is exercised there too.
_CCE_IMPL = "cce"


@functools.cache
def _kernel_problem(name: str) -> str | None:
    """Why backend ``name`` cannot be used at all in this environment (None if it can).

    Checks capabilities rather than version numbers: the package must be installed, its function must take the
    arguments passed below, and liger-kernel's ``reduction="none"`` must apply each token's upstream gradient
    before the logits gradient is summed into ``grad_weight`` (releases without that give wrong gradients for
    per-token weights, which is exactly what γ-CE needs).
    """
    module, dist = _PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        return f"the package {dist} is not installed"
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    try:
        if name == "cce":
            from cut_cross_entropy import linear_cross_entropy as fn

            required = {"ignore_index", "softcap", "reduction", "impl"}
        else:
            from liger_kernel.ops import fused_linear_cross_entropy as ops
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy as fn

            required = {"bias", "ignore_index", "softcap", "reduction"}
            if "token_grad_output" not in inspect.signature(ops.fused_linear_cross_entropy_forward).parameters:
                return (
                    f"liger-kernel {version} cannot apply per-token gradients with reduction='none' (its backward "
                    "scales the summed weight gradient by one number); install a newer liger-kernel"
                )
    except Exception as exc:  # noqa: BLE001 - an import that breaks (e.g. no usable Triton) disables the backend
        return f"{dist} {version} could not be imported ({type(exc).__name__}: {exc})"
    missing = required - set(inspect.signature(fn).parameters)
    if missing:
        return f"{dist} {version} has no argument(s) {sorted(missing)} in {fn.__name__}"
    return None


@functools.cache
def _cce_takes_bias() -> bool:
    from cut_cross_entropy import linear_cross_entropy

    return "bias" in inspect.signature(linear_cross_entropy).parameters


def _select_impl(
    impl: str, hidden: torch.Tensor, bias: torch.Tensor | None, softcap: float | None, label_smoothing: float
) -> str:
    """Resolve ``impl``; raise ``ValueError`` when an explicitly requested backend cannot run this call."""
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "torch":
        return impl
    candidates = ("cce", "liger") if impl == "auto" else (impl,)
    for name in candidates:
        reason = None
        if hidden.device.type not in _KERNEL_DEVICES[name]:
            reason = f"it needs CUDA tensors (hidden is on {hidden.device})"
        else:
            reason = _kernel_problem(name)
        if reason is None and label_smoothing > 0 and softcap is not None:
            # Σ_v logit_v comes from the linear identity h · Σ_v W_v + Σ_v b_v, which softcapping breaks.
            reason = "label smoothing together with final_logit_softcapping is only implemented in impl='torch'"
        if reason is None and name == "cce" and bias is not None and not _cce_takes_bias():
            reason = "this cut-cross-entropy release has no bias argument (the model's head adds a bias)"
        if reason is None:
            return name
        if impl != "auto":
            raise ValueError(f"impl={impl!r} is not available: {reason}; use impl='torch' or 'auto'")
    return "torch"


def _kernel_nll(name, hidden, weight, bias, targets, mask, softcap, ignore_index):
    """Per-token ``-log p_y`` ``[N]`` (differentiable, 0 where ignored) from a fused kernel of another package."""
    kernel_targets = targets.masked_fill(~mask, ignore_index)
    kwargs = {"ignore_index": ignore_index, "softcap": softcap, "reduction": "none"}
    if bias is not None:  # _select_impl has checked that the backend takes it
        kwargs["bias"] = bias
    if name == "cce":
        from cut_cross_entropy import linear_cross_entropy

        # cut-cross-entropy's default gradient filtering (filter_eps) applies.
        return linear_cross_entropy(hidden, weight, kernel_targets, impl=_CCE_IMPL, **kwargs).float()
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, kernel_targets, **kwargs).float()


def _kernel_per_token(name, hidden, weight, bias, targets, mask, gamma, min_weight, eps, softcap, ignore_index):
    """``(per_token, nll, weight)`` ``[N]`` using a kernel's per-token NLL and the γ weighting in torch."""
    vocab_size = weight.shape[0]
    nll = _kernel_nll(name, hidden, weight, bias, targets, mask, softcap, ignore_index).masked_fill(~mask, 0.0)
    token_weight = tvd_weight(-nll.detach(), gamma, min_weight).masked_fill(~mask, 0.0)
    per_token = (1.0 - eps) * token_weight * nll
    if eps > 0:  # softcap is None here (see _select_impl): Σ_v -log p_v = V · (nll + z_y) - Σ_v z_v
        target_logit = (hidden * weight[targets]).sum(-1, dtype=torch.float32)
        # Σ_v z_v = h · Σ_v W_v (+ Σ_v b_v), without an fp32 copy of the [V, d] weight
        logit_sum = hidden.float() @ weight.sum(0, dtype=torch.float32)
        if bias is not None:
            target_logit = target_logit + bias.float()[targets]
            logit_sum = logit_sum + bias.sum(dtype=torch.float32)
        smooth = vocab_size * (nll + target_logit) - logit_sum
        per_token = per_token + (eps / vocab_size) * smooth.masked_fill(~mask, 0.0)
    return per_token, nll.detach(), token_weight


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
) -> tuple[torch.Tensor, GammaCEStats]:
    """:func:`linear_gamma_cross_entropy` that also returns detached sums for logging (:class:`GammaCEStats`)."""
    _check_options(gamma, min_weight, label_smoothing, reduction)
    _check_linear_inputs(
        hidden, weight, bias, labels, ignore_index, shift_labels, logit_scale, final_logit_softcapping, chunk_size
    )
    gamma, min_weight, eps = float(gamma), float(min_weight), float(label_smoothing)
    logit_scale = float(logit_scale)
    softcap = None if final_logit_softcapping is None else float(final_logit_softcapping)
    vocab_size, hidden_size = weight.shape
    targets, mask = _flat_targets(labels, vocab_size, hidden.device, ignore_index, shift_labels)
    flat_hidden = hidden.reshape(-1, hidden_size)
    flat_bias = None if bias is None else bias.reshape(vocab_size)
    chunk_size = chunk_size or _default_chunk_size(vocab_size)
    backend = _select_impl(impl, hidden, flat_bias, softcap, eps)

    total = None
    if backend != "torch":
        scaled = flat_hidden * logit_scale if logit_scale != 1.0 else flat_hidden
        per_token, nll, token_weight = _kernel_per_token(
            backend, scaled, weight, flat_bias, targets, mask, gamma, min_weight, eps, softcap, ignore_index
        )
    elif reduction == "none":
        per_token, nll, token_weight = _LinearGammaCE.apply(
            flat_hidden, weight, flat_bias, targets, mask, gamma, min_weight, eps, logit_scale, softcap, chunk_size
        )
    else:
        grad_on = torch.is_grad_enabled()
        needs = (
            grad_on and hidden.requires_grad,
            grad_on and weight.requires_grad,
            grad_on and bias is not None and bias.requires_grad,
        )
        total, per_token, nll, token_weight = _FusedLinearGammaCE.apply(
            flat_hidden,
            weight,
            flat_bias,
            targets,
            mask,
            gamma,
            min_weight,
            eps,
            logit_scale,
            softcap,
            chunk_size,
            needs,
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
            cut-cross-entropy / liger-kernel for the per-token NLL, γ weighting added in torch; see the module
            docstring for what has been checked), or ``"auto"`` (cce, then liger, on CUDA when installed and
            applicable; else torch).

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
