"""Fused-kernel backends of the hidden-state path: cut-cross-entropy (``cce``) and liger-kernel (``liger``).

Each package's fused linear + cross-entropy kernel gives the per-token negative log-likelihood
(``reduction="none"``) with its gradient; the γ weighting and label smoothing are added here in torch. Each backend
is checked for the capabilities it needs before use: the arguments of the installed release, liger-kernel's
per-token backward (releases without ``token_grad_output`` give wrong gradients for per-token weights), and
cut-cross-entropy 25.1 takes no bias, has no fp32 backward and mis-counts padded vocabulary columns with
soft-capping, so such calls go to liger or torch. ``impl="auto"`` picks liger-kernel only. What was executed and measured,
on which device, is in ``BENCHMARKS.md``; cut-cross-entropy's default gradient filtering applies.

Where the backends may run and which cut-cross-entropy implementation ``impl="cce"`` calls is one documented
setting, :class:`KernelSettings` (:func:`kernel_settings`, :func:`set_kernel_settings`); its defaults are the
training setting (CUDA only, the fused kernel), the other values check the calls into the real packages on CPU.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .common import TokenWeightRule

__all__ = [
    "CceImpl",
    "Impl",
    "KernelSettings",
    "kernel_per_token",
    "kernel_problem",
    "kernel_settings",
    "select_impl",
    "set_kernel_settings",
]

Impl = Literal["auto", "torch", "cce", "liger", "torch_linear_ce"]
IMPLS: tuple[str, ...] = get_args(Impl)
# cut-cross-entropy's implementations of ``linear_cross_entropy`` that impl="cce" may call
CceImpl = Literal["cce", "torch_compile"]

_PACKAGES = {"cce": ("cut_cross_entropy", "cut-cross-entropy"), "liger": ("liger_kernel", "liger-kernel")}


@dataclass(frozen=True)
class KernelSettings:
    """Where the kernel backends may run, and which implementation of cut-cross-entropy ``impl="cce"`` calls.

    The defaults are the training setting: cut-cross-entropy's and liger-kernel's fused kernels are Triton kernels
    for CUDA GPUs, so both backends take CUDA tensors only, and ``impl="cce"`` calls cut-cross-entropy's fused
    kernel. The other values exist to check this module's calls into the real packages (argument names,
    per-token output, ignored tokens, gradients) on a machine without a GPU, as the test suite does:

    * ``devices=("cpu", "cuda")`` lets the backends take CPU tensors: Triton's interpreter
      (``TRITON_INTERPRET=1``, set before triton is imported) runs the real kernels there, slowly;
    * ``cce_impl="torch_compile"`` calls cut-cross-entropy's own torch implementation, which runs on CPU without
      Triton, through the same public function, arguments, per-token output and gradients as its kernel; the
      refusals that describe the fused kernel's limits (:func:`select_impl`) apply only to ``"cce"``.

    Set them with :func:`set_kernel_settings` (for this process); :func:`kernel_settings` returns the current ones.
    """

    devices: tuple[str, ...] = ("cuda",)
    cce_impl: CceImpl = "cce"

    def __post_init__(self) -> None:
        if not isinstance(self.devices, tuple) or not all(isinstance(d, str) for d in self.devices):
            raise ValueError(f"KernelSettings.devices must be a tuple of device types, got {self.devices!r}")
        if self.cce_impl not in get_args(CceImpl):
            raise ValueError(f"KernelSettings.cce_impl must be one of {get_args(CceImpl)}, got {self.cce_impl!r}")


_settings = KernelSettings()


def kernel_settings() -> KernelSettings:
    """The :class:`KernelSettings` in use."""
    return _settings


def set_kernel_settings(settings: KernelSettings) -> KernelSettings:
    """Use ``settings`` from now on, in this process; returns the previous settings (to restore them)."""
    global _settings
    if not isinstance(settings, KernelSettings):
        raise TypeError(f"settings must be a KernelSettings, got {type(settings).__name__}")
    previous, _settings = _settings, settings
    return previous


# PyTorch's own chunked linear + cross-entropy (torch >= 2.13): runs wherever torch runs, no third-party package.
TORCH_LINEAR_CE = "torch_linear_ce"


def _torch_linear_ce_problem() -> str | None:
    import torch.nn.functional as F

    if not (hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")):
        return f"torch {torch.__version__} has no torch.nn.functional.linear_cross_entropy (it came with torch 2.13)"
    params = set(inspect.signature(F.linear_cross_entropy).parameters)
    missing = {"linear_bias", "reduction", "ignore_index", "options"} - params
    if missing:
        return f"torch {torch.__version__}'s linear_cross_entropy has no argument(s) {sorted(missing)}"
    return None


@functools.cache
def kernel_problem(name: str) -> str | None:
    """Why backend ``name`` cannot be used at all in this environment (None if it can).

    Checks capabilities rather than version numbers: the package must be installed, its function must take the
    arguments passed below, and liger-kernel's ``reduction="none"`` must apply each token's upstream gradient
    before the logits gradient is summed into ``grad_weight`` (releases without that give wrong gradients for
    per-token weights, which is exactly what γ-CE needs).
    """
    if name == TORCH_LINEAR_CE:
        return _torch_linear_ce_problem()
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


# Backends impl="auto" may pick, in order. Decided from executing the real Triton kernels on CPU under
# TRITON_INTERPRET=1 against the float64 reference (tests/test_kernels_interpreted.py, BENCHMARKS.md "Kernel
# backends executed"): liger-kernel 0.8.5 matched it like the torch backend in every case; cut-cross-entropy 25.1.1
# is left to an explicit impl="cce": its backward takes only fp16/bf16 embeddings, its gradients are approximate by
# design (gradient filtering), and with soft-capping it counts the padded vocabulary columns of its last block.
_AUTO_ORDER = ("liger",)
# cut-cross-entropy's largest vocabulary block (BLOCK_V of its autotuning configs in 25.1.1).
_CCE_MAX_BLOCK_V = 256


def _cce_call_problem(
    hidden: torch.Tensor, vocab_size: int | None, softcap: float | None, needs_grad: bool
) -> str | None:
    """Why cut-cross-entropy's fused kernel (not its torch_compile implementation) cannot run this call."""
    if _settings.cce_impl != "cce":
        return None
    if needs_grad and hidden.dtype not in (torch.float16, torch.bfloat16):
        return (
            f"cut-cross-entropy's backward kernel takes only float16/bfloat16 embeddings (hidden is {hidden.dtype}; "
            "it fails with 'Backwards requires embeddings to be bf16 or fp16')"
        )
    if softcap is not None and vocab_size is not None and vocab_size % _CCE_MAX_BLOCK_V:
        return (
            f"with final_logit_softcapping, cut-cross-entropy 25.1 soft-caps the padded columns of its last vocabulary "
            f"block after masking them to -inf, so they count as logit -cap in the log-sum-exp; vocab_size "
            f"{vocab_size} is not a multiple of its block size {_CCE_MAX_BLOCK_V}"
        )
    return None


def select_impl(
    impl: str,
    hidden: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    label_smoothing: float,
    *,
    vocab_size: int | None = None,
    needs_grad: bool = False,
) -> str:
    """Resolve ``impl``; raise ``ValueError`` when an explicitly requested backend cannot run this call.

    ``"auto"`` tries the backends of ``_AUTO_ORDER`` (liger-kernel only; see there why not cut-cross-entropy).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return impl
    candidates = _AUTO_ORDER if impl == "auto" else (impl,)
    for name in candidates:
        reason = None
        if name != TORCH_LINEAR_CE and hidden.device.type not in _settings.devices:  # Triton kernels: CUDA
            reason = f"it needs CUDA tensors (hidden is on {hidden.device})"
        else:
            reason = kernel_problem(name)
        if reason is None and name == TORCH_LINEAR_CE and softcap is not None:
            reason = "torch.nn.functional.linear_cross_entropy has no final_logit_softcapping"
        if reason is None and label_smoothing > 0 and softcap is not None:
            # Σ_v logit_v comes from the linear identity h · Σ_v W_v + Σ_v b_v, which softcapping breaks.
            reason = "label smoothing together with final_logit_softcapping is only implemented in impl='torch'"
        if reason is None and name == "cce" and bias is not None and not _cce_takes_bias():
            reason = "this cut-cross-entropy release has no bias argument (the model's head adds a bias)"
        if reason is None and name == "cce":
            reason = _cce_call_problem(hidden, vocab_size, softcap, needs_grad)
        if reason is None:
            return name
        if impl != "auto":
            raise ValueError(f"impl={impl!r} is not available: {reason}; use impl='torch' or 'auto'")
    return "torch"


def _kernel_nll(name, hidden, weight, bias, targets, mask, softcap, ignore_index):
    """Per-token ``-log p_y`` ``[N]`` (differentiable, 0 where ignored) from a fused kernel of another package."""
    kernel_targets = targets.masked_fill(~mask, ignore_index)
    kwargs = {"ignore_index": ignore_index, "softcap": softcap, "reduction": "none"}
    if bias is not None:  # select_impl has checked that the backend takes it
        kwargs["bias"] = bias
    if name == TORCH_LINEAR_CE:
        import torch.nn.functional as F

        # options=LinearCrossEntropyOptions(): its chunked path (no [N, V] logits); None would be its reference path.
        return F.linear_cross_entropy(
            hidden, weight, kernel_targets, linear_bias=bias, reduction="none", ignore_index=ignore_index,
            options=torch.nn.LinearCrossEntropyOptions(),
        ).float()  # fmt: skip
    if name == "cce":
        from cut_cross_entropy import linear_cross_entropy

        # cut-cross-entropy's default gradient filtering (filter_eps) applies.
        return linear_cross_entropy(hidden, weight, kernel_targets, impl=_settings.cce_impl, **kwargs).float()
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, kernel_targets, **kwargs).float()


def kernel_per_token(
    name: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    mask: torch.Tensor,
    rule: TokenWeightRule,
    eps: float,
    softcap: float | None,
    ignore_index: int,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(per_token, nll, weight)`` ``[N]`` from a kernel's per-token NLL, with the loss's ``rule`` in torch
    (``entropy`` ``[N]``, from the prediction pass when one was made, for a rule that reads it)."""
    vocab_size = weight.shape[0]
    nll = _kernel_nll(name, hidden, weight, bias, targets, mask, softcap, ignore_index).masked_fill(~mask, 0.0)
    nll_value = nll.detach()
    token_weight, grad_factor = rule(-nll_value, entropy)
    token_weight = token_weight.masked_fill(~mask, 0.0)
    grad_factor = grad_factor.masked_fill(~mask, 0.0)
    # value a · nll, gradient c · ∇nll (c = a for γ-CE, whose weight is held constant)
    weighted = token_weight * nll_value + grad_factor * (nll - nll_value)
    per_token = (1.0 - eps) * torch.where(torch.isinf(nll_value), nll_value, weighted)
    if eps > 0:  # softcap is None here (see select_impl): Σ_v -log p_v = V · (nll + z_y) - Σ_v z_v
        target_logit = (hidden * weight[targets]).sum(-1, dtype=torch.float32)
        # Σ_v z_v = h · Σ_v W_v (+ Σ_v b_v), without an fp32 copy of the [V, d] weight
        logit_sum = hidden.float() @ weight.sum(0, dtype=torch.float32)
        if bias is not None:
            target_logit = target_logit + bias.float()[targets]
            logit_sum = logit_sum + bias.sum(dtype=torch.float32)
        smooth = vocab_size * (nll + target_logit) - logit_sum
        per_token = per_token + (eps / vocab_size) * smooth.masked_fill(~mask, 0.0)
    return per_token, nll.detach(), token_weight
