"""Runs the kernel backends' real Triton kernels on CPU tensors under Triton's interpreter and compares γ-CE through
them with the float64 reference. Started by tests/test_kernels_interpreted.py in a subprocess whose environment
has ``TRITON_INTERPRET=1`` (it must be set before triton is imported). Prints one JSON object per case.

Usage: python kernels_interpreted_worker.py WHICH[,WHICH...] with WHICH in liger|cce|cce_no_shim|cce_softcap. Several
run in one process (one interpreter start for the whole test file), in the order given; every printed object is
tagged with its ``which``. cce_no_shim must come before cce and cce_softcap, which install the shim for good.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 before starting this worker"

from hf_tvd_loss import (  # noqa: E402
    TokenWeightRule,
    linear_token_weighted_cross_entropy,
    probability_power_rule,
    token_weighted_cross_entropy,
)
from hf_tvd_loss.ops import kernels, linear_gamma_cross_entropy_with_stats  # noqa: E402
from hf_tvd_loss.ops.reference import gamma_cross_entropy_reference, prediction_metrics_reference  # noqa: E402

N, D, V = 14, 8, 40

# γ, b, ε, bias, softcap, shift, reduction: weights, floor, label smoothing, ignore_index (always: some labels are
# -100), both reductions (none with a random per-token upstream gradient), a bias and soft-capping where the
# backend takes them (cce 25.1: no bias, and soft-capping is refused below V % 256 (see cce_softcap);
# softcap with smoothing stays on torch for both). liger's soft-capping
# cannot run under the interpreter: its kernel calls ``softcap.to(tl.float32)`` on a scalar argument, which the
# interpreter passes as a Python float (AttributeError: 'float' object has no attribute 'to').
CASES = {
    "liger": [
        dict(gamma=0.0, min_weight=0.0, label_smoothing=0.0, bias=False, softcap=None, shift=False, reduction="mean"),
        dict(gamma=0.3, min_weight=0.2, label_smoothing=0.1, bias=True, softcap=None, shift=True, reduction="mean"),
        dict(gamma=0.8, min_weight=0.0, label_smoothing=0.1, bias=False, softcap=None, shift=False, reduction="none"),
        dict(gamma=1.0, min_weight=0.3, label_smoothing=0.0, bias=True, softcap=None, shift=True, reduction="none"),
    ],
    "cce": [
        dict(gamma=0.0, min_weight=0.0, label_smoothing=0.0, bias=False, softcap=None, shift=False, reduction="mean"),
        dict(gamma=0.3, min_weight=0.2, label_smoothing=0.1, bias=False, softcap=None, shift=True, reduction="mean"),
        dict(gamma=1.0, min_weight=0.3, label_smoothing=0.0, bias=False, softcap=None, shift=False, reduction="none"),
    ],
}


_WHICH = None  # the WHICH being run: every printed object is tagged with it


def emit(row: dict) -> None:
    print(json.dumps({"which": _WHICH, **row}), flush=True)


def install_libdevice_shim() -> None:
    """cut-cross-entropy's kernels call ``triton.language.extra.libdevice.log1p`` / ``tanh``, which the interpreter
    does not implement (the extern stubs return None); give them tl.math equivalents."""
    import cut_cross_entropy.tl_utils as tl_utils
    import triton.language as tl

    class LibdeviceShim:
        @staticmethod
        def log1p(a):
            return tl.log(1.0 + a)

        @staticmethod
        def tanh(a):
            e = tl.exp(-2.0 * tl.abs(a))
            t = (1.0 - e) / (1.0 + e)
            return tl.where(a >= 0, t, -t)

    tl_utils.tl_libdevice = LibdeviceShim


def inputs(seed: int, dtype: torch.dtype, bias: bool):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g).to(dtype)
    weight = (torch.randn(V, D, generator=g) * 0.5).to(dtype)
    b = torch.randn(V, generator=g).to(dtype) if bias else None
    labels = torch.randint(0, V, (N,), generator=g)
    labels[torch.rand(N, generator=g) < 0.25] = -100
    upstream = torch.rand(N, generator=g) + 0.5
    return hidden, weight, b, labels, upstream


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


def run_case(impl: str, case: dict, seed: int, dtype: torch.dtype) -> dict:
    hidden, weight, bias, labels, upstream = inputs(seed, dtype, case["bias"])
    loss_kw = dict(gamma=case["gamma"], min_weight=case["min_weight"], label_smoothing=case["label_smoothing"],
                   shift_labels=case["shift"], reduction=case["reduction"])  # fmt: skip
    leaves = [hidden, weight] + ([bias] if bias is not None else [])

    def ours(backend):
        params = [t.clone().requires_grad_() for t in leaves]
        h, w, b = params[0], params[1], params[2] if bias is not None else None
        loss, stats = linear_gamma_cross_entropy_with_stats(
            h, w, labels, bias=b, final_logit_softcapping=case["softcap"], impl=backend, extra_metrics=True, **loss_kw
        )
        out = loss if case["reduction"] != "none" else (loss * upstream.view_as(loss)).sum()
        return loss.detach(), stats, torch.autograd.grad(out, params)

    used = []
    real = kernels._kernel_nll
    kernels._kernel_nll = lambda name, *a: used.append(name) or real(name, *a)
    try:
        value, stats, grads = ours(impl)
    finally:
        kernels._kernel_nll = real
    assert used == [impl], f"the {impl} kernel was not called: {used}"
    # float64 reference on the materialised logits
    params64 = [t.detach().double().requires_grad_() for t in leaves]
    z = params64[0] @ params64[1].T
    if bias is not None:
        z = z + params64[2]
    if case["softcap"] is not None:
        z = case["softcap"] * torch.tanh(z / case["softcap"])
    ref = gamma_cross_entropy_reference(z, labels, **loss_kw)
    ref_out = ref if case["reduction"] != "none" else (ref * upstream.double().view_as(ref)).sum()
    ref_grads = torch.autograd.grad(ref_out, params64)
    metrics = prediction_metrics_reference(z.detach(), labels, shift_labels=case["shift"], gamma=case["gamma"],
                                           min_weight=case["min_weight"])  # fmt: skip
    # the pure-PyTorch backend on the same inputs, for comparison in low precision
    torch_value, _, torch_grads = ours("torch")
    return {
        "impl": impl,
        "dtype": str(dtype).removeprefix("torch."),
        **{k: v for k, v in case.items()},
        "loss_rel_err": rel(value, ref.detach()),
        "grad_rel_err": max(rel(g, r) for g, r in zip(grads, ref_grads)),
        "torch_loss_rel_err": rel(torch_value, ref.detach()),
        "torch_grad_rel_err": max(rel(g, r) for g, r in zip(torch_grads, ref_grads)),
        "nll_rel_err": rel(
            stats.nll_sum,
            gamma_cross_entropy_reference(z.detach(), labels, gamma=0.0, shift_labels=case["shift"], reduction="sum"),
        ),
        "correct_equal": float(stats.correct_sum) == float(metrics["correct_sum"]),
    }


def _entropy_weight(log_p: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """An entropy-gated weight (a rule that reads the predictive entropy): p · exp(-H)."""
    return log_p.exp() * torch.exp(-entropy)


# Custom weight rules (issue 22.9): the probability-power family w = p^α and one that reads the entropy, which the
# kernel backends get from their extra gradient-free pass.
RULES = {
    "power0.5": probability_power_rule(0.5),
    "entropy": TokenWeightRule.from_weight(_entropy_weight, uses_entropy=True, name="entropy_gate"),
}


def run_rule_case(impl: str, rule_name: str, reduction: str, seed: int, dtype: torch.dtype) -> dict:
    """A custom weight rule through the kernel backend ``impl`` against the materialised float64 logits path."""
    hidden, weight, _, labels, upstream = inputs(seed, dtype, False)
    rule = RULES[rule_name]
    kw = dict(label_smoothing=0.1, reduction=reduction)

    def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out = loss if reduction != "none" else (loss * upstream.to(loss.dtype).view_as(loss)).sum()
        return loss.detach(), torch.autograd.grad(out, params)

    params = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    used = []
    real = kernels._kernel_nll
    kernels._kernel_nll = lambda name, *a: used.append(name) or real(name, *a)
    try:
        loss, _ = linear_token_weighted_cross_entropy(*params, labels, rule, impl=impl, **kw)
        value, got = grads(loss, params)
    finally:
        kernels._kernel_nll = real
    assert used == [impl], f"the {impl} kernel was not called: {used}"
    params64 = [hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()]
    ref_loss, _ = token_weighted_cross_entropy(params64[0] @ params64[1].T, labels, rule, **kw)
    ref, want = grads(ref_loss, params64)
    torch_params = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    torch_loss, _ = linear_token_weighted_cross_entropy(*torch_params, labels, rule, impl="torch", **kw)
    _, torch_got = grads(torch_loss, torch_params)
    return {
        "impl": impl,
        "dtype": str(dtype).removeprefix("torch."),
        "rule": rule_name,
        "reduction": reduction,
        "loss_rel_err": rel(value, ref),
        "grad_rel_err": max(rel(g, w) for g, w in zip(got, want)),
        "torch_grad_rel_err": max(rel(g, w) for g, w in zip(torch_got, want)),
    }


def cce_softcap() -> None:
    """cut-cross-entropy's per-token NLL with soft-capping at a vocabulary that fills its blocks (256) and one that
    does not (40), called directly (our backend refuses the latter)."""
    import torch.nn.functional as F
    from cut_cross_entropy import linear_cross_entropy

    install_libdevice_shim()
    for vocab in (256, 40):
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(N, D, generator=g)
        weight = torch.randn(vocab, D, generator=g) * 0.5
        labels = torch.randint(0, vocab, (N,), generator=g)
        got = linear_cross_entropy(hidden, weight, labels, softcap=2.0, reduction="none", impl="cce")
        z = hidden.double() @ weight.double().T
        ref = F.cross_entropy(2.0 * torch.tanh(z / 2.0), labels, reduction="none")
        emit({"vocab": vocab, "nll_rel_err": rel(got, ref)})


def main(which: str) -> None:
    kernels.set_kernel_settings(kernels.KernelSettings(devices=("cpu", "cuda")))  # this process only
    global _WHICH
    _WHICH = which
    if which == "cce_no_shim":  # the failure as it happens without the shim
        try:
            emit(run_case("cce", CASES["cce"][0], 0, torch.float16))
        except Exception as exc:  # noqa: BLE001
            chain, cause = [], exc
            while cause is not None:  # the interpreter re-raises: the kernel's own frames are in the causes
                chain.append(cause)
                cause = cause.__cause__
            where = [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for e in chain
                     for f in traceback.extract_tb(e.__traceback__) if "cut_cross" in f.filename]  # fmt: skip
            emit({"error": f"{type(chain[-1]).__name__}: {chain[-1]}", "where": where})
        return
    if which == "cce_softcap":
        cce_softcap()
        return
    impl = which
    if impl == "cce":
        install_libdevice_shim()
    # cut-cross-entropy's backward takes only fp16/bf16 embeddings, and the interpreter mis-executes bf16 dots (its
    # forward values come out ~1e30): fp16 for cce; fp32 and fp16 for liger
    dtypes = (torch.float16,) if impl == "cce" else (torch.float32, torch.float16)
    for dtype in dtypes:
        for seed, case in enumerate(CASES[impl]):
            emit(run_case(impl, case, seed, dtype))
        for seed, (rule_name, reduction) in enumerate(
            (("power0.5", "mean"), ("entropy", "none"), ("entropy", "mean"))
        ):
            emit(run_rule_case(impl, rule_name, reduction, 10 + seed, dtype))


if __name__ == "__main__":
    # cut-cross-entropy wraps two small torch helpers around its kernels in torch.compile (``sort_logit_avg``, an
    # argsort, and ``softcapping``, a tanh); on CPU inductor would generate and build C++ for them, 13 of this
    # worker's 26 s on a cold machine. They run eagerly here: what is judged is the Triton kernels, interpreted.
    torch.compiler.set_stance("force_eager")
    whiches = sys.argv[1].split(",")
    if "cce_no_shim" in whiches:
        assert all(w not in ("cce", "cce_softcap") for w in whiches[: whiches.index("cce_no_shim")]), whiches
    for which in whiches:
        main(which)
