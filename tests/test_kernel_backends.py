"""The optional kernel backends of the fused linear γ-CE (impl="cce" / "liger") against the installed packages.

Their fused kernels are Triton kernels for CUDA, which this suite cannot run (no GPU). What it can run:

* cut-cross-entropy for real, through its own ``impl="torch_compile"`` implementation (CPU, run eagerly), switched in
  with ``KernelSettings(cce_impl="torch_compile")`` (the ``kernels_on_cpu`` fixture of conftest.py): the same public
  function, arguments, per-token output and gradients as the kernel, so the call into the package and the γ weighting on top are checked against impl="torch";
* liger-kernel's installed function signature and capabilities (the per-token backward of reduction="none");
  its kernel is replaced by a torch function bound to the real signature.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
import torch.nn.functional as F

from hf_tvd_loss.ops import kernels, linear_gamma_cross_entropy, linear_gamma_cross_entropy_with_stats

V, D = 37, 16


@pytest.fixture
def fake_liger(monkeypatch):
    """liger's per-token fused linear CE in plain torch, bound to the installed function's real signature."""
    import liger_kernel.transformers.functional as functional

    signature = inspect.signature(functional.liger_fused_linear_cross_entropy)
    calls = []

    def fake(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        calls.append({k: a[k] for k in ("reduction", "ignore_index", "softcap", "label_smoothing")})
        assert a["reduction"] == "none" and a["ce_weight"] is None and a["label_smoothing"] == 0.0
        logits = F.linear(a["input"], a["weight"], a["bias"]).float()
        if a["softcap"] is not None:
            logits = a["softcap"] * torch.tanh(logits / a["softcap"])
        return F.cross_entropy(logits, a["target"], ignore_index=a["ignore_index"], reduction="none")

    fake.__signature__ = signature  # what the capability check inspects
    monkeypatch.setattr(functional, "liger_fused_linear_cross_entropy", fake)
    return calls


def _inputs(seed, *, bias=False, shape=(3, 9)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, D, generator=g).requires_grad_()
    weight = (torch.randn(V, D, generator=g) * 0.5).requires_grad_()
    b = torch.randn(V, generator=g).requires_grad_() if bias else None
    labels = torch.randint(0, V, shape, generator=g)
    labels[torch.rand(shape, generator=g) < 0.25] = -100
    return hidden, weight, b, labels


def _loss_and_grads(impl, hidden, weight, bias, labels, reduction, **kwargs):
    loss, stats = linear_gamma_cross_entropy_with_stats(
        hidden, weight, labels, bias=bias, impl=impl, reduction=reduction, **kwargs
    )
    g = torch.Generator().manual_seed(0)
    upstream = torch.rand(loss.shape, generator=g) if reduction == "none" else torch.tensor(1.0)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    return loss.detach(), stats, torch.autograd.grad(loss, leaves, upstream)


def test_installed_packages_pass_the_capability_checks(fresh_kernel_checks):
    """The versions install.sh installs take every argument the backends pass (checked, not assumed)."""
    assert kernels.kernel_problem("cce") is None
    assert kernels.kernel_problem("liger") is None


_CASES = [
    dict(gamma=0.0, min_weight=0.0, label_smoothing=0.0, shift_labels=False, final_logit_softcapping=None),
    dict(gamma=0.1, min_weight=0.3, label_smoothing=0.1, shift_labels=True, final_logit_softcapping=None),
    dict(gamma=1.0, min_weight=0.0, label_smoothing=0.0, shift_labels=True, final_logit_softcapping=2.0),
    dict(gamma=0.8, min_weight=0.2, label_smoothing=0.1, shift_labels=False, final_logit_softcapping=None),
]


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(
    "case", _CASES, ids=lambda c: f"g{c['gamma']}-ls{c['label_smoothing']}-cap{c['final_logit_softcapping']}"
)
def test_cut_cross_entropy_backend_matches_torch(kernels_on_cpu, case, reduction):
    hidden, weight, _, labels = _inputs(int(case["gamma"] * 10))
    expected, expected_stats, expected_grads = _loss_and_grads(
        "torch", hidden, weight, None, labels, reduction, **case
    )
    got, stats, grads = _loss_and_grads("cce", hidden, weight, None, labels, reduction, **case)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.nll_sum, expected_stats.nll_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.weight_sum, expected_stats.weight_sum, rtol=1e-5, atol=1e-5)
    assert int(stats.num_tokens) == int(expected_stats.num_tokens)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_liger_backend_call_and_gamma_weighting(kernels_on_cpu, fake_liger, bias):
    hidden, weight, b, labels = _inputs(3, bias=bias)
    kwargs = dict(gamma=0.1, min_weight=0.3, label_smoothing=0.1, shift_labels=True)
    expected, _, expected_grads = _loss_and_grads("torch", hidden, weight, b, labels, "sum", **kwargs)
    got, _, grads = _loss_and_grads("liger", hidden, weight, b, labels, "sum", **kwargs)
    assert fake_liger and fake_liger[-1]["reduction"] == "none"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_cce_refuses_a_bias_it_cannot_take_and_auto_moves_on(kernels_on_cpu, fake_liger):
    hidden, weight, b, labels = _inputs(4, bias=True)
    if kernels._cce_takes_bias():  # a future release with a bias argument: nothing to refuse
        pytest.fail("the installed cut-cross-entropy takes a bias; update this test and the backend's docs")
    with pytest.raises(ValueError, match="impl='cce' is not available: this cut-cross-entropy release has no bias"):
        linear_gamma_cross_entropy(hidden, weight, labels, bias=b, gamma=0.1, impl="cce")
    # auto: cce is skipped for the bias, liger (here the torch stand-in) takes it
    auto = linear_gamma_cross_entropy(hidden, weight, labels, bias=b, gamma=0.1, impl="auto")
    assert len(fake_liger) == 1
    torch.testing.assert_close(
        auto, linear_gamma_cross_entropy(hidden, weight, labels, bias=b, gamma=0.1, impl="torch"), rtol=1e-5, atol=0
    )


def test_auto_picks_liger_not_cut_cross_entropy(kernels_on_cpu, fake_liger, monkeypatch):
    """impl="auto" picks liger-kernel only (see ops/kernels.py _AUTO_ORDER and BENCHMARKS.md for why)."""
    used = []
    real = kernels._kernel_nll
    monkeypatch.setattr(kernels, "_kernel_nll", lambda name, *a: used.append(name) or real(name, *a))
    hidden, weight, _, labels = _inputs(5)
    linear_gamma_cross_entropy(hidden, weight, labels, gamma=0.1, impl="auto")
    assert used == ["liger"] and fake_liger


def test_cce_kernel_refusals(kernels_on_cpu, monkeypatch):
    """What cut-cross-entropy's fused kernel cannot do (found by running it under TRITON_INTERPRET=1) is refused."""
    # the real kernel's rules (nothing is run here); the fixture restores the settings afterwards
    kernels.set_kernel_settings(dataclasses.replace(kernels.kernel_settings(), cce_impl="cce"))
    hidden, weight, _, labels = _inputs(8)
    with pytest.raises(ValueError, match="backward kernel takes only float16/bfloat16 embeddings"):
        linear_gamma_cross_entropy(hidden.requires_grad_(), weight, labels, gamma=0.1, impl="cce")
    with torch.no_grad(), pytest.raises(ValueError, match="soft-caps the padded columns"):
        linear_gamma_cross_entropy(hidden.half(), weight.half(), labels, gamma=0.1, impl="cce",
                                   final_logit_softcapping=2.0)  # fmt: skip


def test_softcap_with_label_smoothing_stays_on_torch(kernels_on_cpu):
    hidden, weight, _, labels = _inputs(6)
    kwargs = dict(gamma=0.1, label_smoothing=0.1, final_logit_softcapping=2.0)
    with pytest.raises(ValueError, match="label smoothing together with final_logit_softcapping"):
        linear_gamma_cross_entropy(hidden, weight, labels, impl="cce", **kwargs)
    auto = linear_gamma_cross_entropy(hidden, weight, labels, impl="auto", **kwargs)
    assert torch.equal(auto, linear_gamma_cross_entropy(hidden, weight, labels, impl="torch", **kwargs))


def test_liger_without_per_token_backward_is_refused(monkeypatch, fresh_kernel_checks):
    """A liger-kernel whose reduction='none' backward cannot weight tokens would give wrong gradients."""
    from liger_kernel.ops import fused_linear_cross_entropy as ops

    def old_forward(_input, weight, target, ce_weight=None, bias=None, ignore_index=-100, reduction="mean"):
        raise AssertionError("not called")

    monkeypatch.setattr(ops, "fused_linear_cross_entropy_forward", old_forward)
    assert "cannot apply per-token gradients" in kernels.kernel_problem("liger")


def test_missing_package_is_named(kernels_on_cpu, monkeypatch):
    monkeypatch.setitem(kernels._PACKAGES, "cce", ("no_such_module_hf_tvd", "cut-cross-entropy"))
    hidden, weight, _, labels = _inputs(7)
    with pytest.raises(ValueError, match="the package cut-cross-entropy is not installed"):
        linear_gamma_cross_entropy(hidden, weight, labels, gamma=0.1, impl="cce")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_trainer_with_cut_cross_entropy_backend_trains_like_torch(kernels_on_cpu, family, tmp_path, monkeypatch):
    """TVDTrainer(loss_impl='chunked', chunked_backend='cce') through the real package trains like 'torch'."""
    from test_trainer import TVD, assert_same_training
    from tiny import train_tiny

    used = []
    real = kernels._kernel_nll
    monkeypatch.setattr(kernels, "_kernel_nll", lambda name, *a: used.append(name) or real(name, *a))
    torch_run = train_tiny(family, str(tmp_path / "a"), per_device_batch=8, grad_accum=2,
                           tvd={**TVD, "loss_impl": "chunked", "chunked_backend": "torch"})  # fmt: skip
    assert not used
    cce_run = train_tiny(family, str(tmp_path / "b"), per_device_batch=8, grad_accum=2,
                         tvd={**TVD, "loss_impl": "chunked", "chunked_backend": "cce"})  # fmt: skip
    assert used and set(used) == {"cce"}
    assert_same_training(cce_run, torch_run, loss_rtol=1e-5)


def test_kernels_are_opt_in():
    """Until the CUDA kernels are measured on a GPU here, loss_impl='chunked' uses the torch backend by default."""
    from hf_tvd_loss import TVDArguments

    assert TVDArguments(loss_impl="chunked").chunked_backend == "torch"


@pytest.mark.parametrize("backend", ["cce", "liger"])
def test_custom_weight_rule_on_the_kernel_backends(kernels_on_cpu, fake_liger, backend):
    """Issue 22.9: a custom rule (p^0.5) runs on the kernel backends as on impl="torch": the kernel gives the per-token
    NLL and the rule runs on it in torch (values and gradients)."""
    from hf_tvd_loss import linear_token_weighted_cross_entropy, probability_power_rule

    hidden, weight, _, labels = _inputs(3)
    rule = probability_power_rule(0.5)
    results = {}
    for impl in ("torch", backend):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss, _ = linear_token_weighted_cross_entropy(h, w, labels, rule, impl=impl)
        results[impl] = (loss, torch.autograd.grad(loss, (h, w)))
    torch.testing.assert_close(results[backend][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    for g, e in zip(results[backend][1], results["torch"][1]):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    if backend == "liger":
        assert fake_liger, "the liger backend was not called"


# --- PyTorch's own torch.nn.functional.linear_cross_entropy (torch >= 2.13) as chunked_backend="torch_linear_ce"
# (issue 22.8): runs on CPU, so judged here directly against impl="torch" and the float64 reference.
@pytest.mark.parametrize("case", _CASES[:2] + _CASES[3:], ids=lambda c: f"g{c['gamma']}-ls{c['label_smoothing']}")
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_linear_ce_backend_matches_torch(case, bias, reduction, recwarn):
    assert kernels.kernel_problem("torch_linear_ce") is None
    hidden, weight, b, labels = _inputs(7, bias=bias)
    expected, expected_stats, expected_grads = _loss_and_grads("torch", hidden, weight, b, labels, reduction, **case)
    got, stats, grads = _loss_and_grads("torch_linear_ce", hidden, weight, b, labels, reduction, **case)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.nll_sum, expected_stats.nll_sum, rtol=1e-5, atol=1e-5)
    assert int(stats.num_tokens) == int(expected_stats.num_tokens)  # ignore_index: the same tokens scored
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    # its chunked path ran (torch warns when a call falls through to its reference implementation)
    assert not [w for w in recwarn if "linear_cross_entropy" in str(w.message)]


def test_torch_linear_ce_bf16_against_the_float64_reference():
    """bf16: both backends against the float64 reference of the same bf16 inputs; errors of the same order."""
    from hf_tvd_loss.ops.reference import gamma_cross_entropy_reference

    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(64, 32, generator=g).bfloat16()
    weight = (torch.randn(211, 32, generator=g) * 0.3).bfloat16()
    labels = torch.randint(0, 211, (64,), generator=g)
    labels[::9] = -100
    options = dict(gamma=0.1, min_weight=0.2, label_smoothing=0.1)
    ref = gamma_cross_entropy_reference(hidden.double() @ weight.double().T, labels, **options)
    errors = {}
    for impl in ("torch", "torch_linear_ce"):
        loss = linear_gamma_cross_entropy(hidden, weight, labels, impl=impl, **options)
        errors[impl] = abs(float(loss) - float(ref)) / float(ref)
    assert errors["torch_linear_ce"] < 1e-2 and errors["torch"] < 1e-2, errors


def test_torch_linear_ce_refusals_and_auto():
    hidden, weight, _, labels = _inputs(1)
    with pytest.raises(ValueError, match="torch_linear_ce.*no final_logit_softcapping"):
        linear_gamma_cross_entropy(hidden, weight, labels, gamma=0.1, impl="torch_linear_ce",
                                   final_logit_softcapping=2.0)  # fmt: skip
    # auto never picks it: 2.7x the time of impl="torch" on CPU (BENCHMARKS.md), not measured on a GPU here
    assert kernels.select_impl("auto", hidden, None, None, 0.0) == "torch"


def test_trainer_with_torch_linear_ce_backend_trains_like_torch(tmp_path, monkeypatch):
    from test_trainer import TVD, assert_same_training
    from tiny import train_tiny

    used = []
    real = kernels._kernel_nll
    monkeypatch.setattr(kernels, "_kernel_nll", lambda name, *a: used.append(name) or real(name, *a))
    torch_run = train_tiny("llama", str(tmp_path / "a"), per_device_batch=8, grad_accum=2,
                           tvd={**TVD, "loss_impl": "chunked", "chunked_backend": "torch"})  # fmt: skip
    ours = train_tiny("llama", str(tmp_path / "b"), per_device_batch=8, grad_accum=2,
                      tvd={**TVD, "loss_impl": "chunked", "chunked_backend": "torch_linear_ce"})  # fmt: skip
    assert used and set(used) == {"torch_linear_ce"}
    assert_same_training(ours, torch_run, loss_rtol=1e-5)
