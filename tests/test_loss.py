"""gamma_cross_entropy against F.cross_entropy, DFT, the closed form and the float64 reference."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import hf_tvd_loss.ops.common as loss_module
from hf_tvd_loss import gamma_cross_entropy, gamma_cross_entropy_with_stats, tvd_weight
from hf_tvd_loss.ops.reference import dft_reference, gamma_closed_form_reference, gamma_cross_entropy_reference

GAMMAS = [0.0, 1e-7, 0.1, 0.8, 1.0]


def make_batch(dtype=torch.float32, shape=(3, 9), vocab=13, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, vocab, generator=g) * scale).to(dtype)
    labels = torch.randint(0, vocab, shape, generator=g)
    labels[0, :4] = -100  # a masked prompt
    labels[-1, -2:] = -100  # padding
    return logits, labels


def test_gamma_zero_is_cross_entropy():
    logits, labels = make_batch()
    x1 = logits.clone().requires_grad_()
    x2 = logits.clone().requires_grad_()
    ours = gamma_cross_entropy(x1, labels, gamma=0.0)
    stock = F.cross_entropy(x2.view(-1, 13), labels.view(-1), ignore_index=-100)
    ours.backward()
    stock.backward()
    assert abs(ours.item() - stock.item()) <= 1e-6
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)


def test_gamma_zero_with_smoothing_is_label_smoothed_cross_entropy():
    logits, labels = make_batch()
    ours = gamma_cross_entropy(logits, labels, gamma=0.0, label_smoothing=0.1)
    stock = F.cross_entropy(logits.view(-1, 13), labels.view(-1), ignore_index=-100, label_smoothing=0.1)
    assert abs(ours.item() - stock.item()) <= 1e-6


def test_gamma_one_is_dft():
    logits, labels = make_batch()
    x = logits.clone().requires_grad_()
    x64 = logits.double().requires_grad_()
    ours = gamma_cross_entropy(x, labels, gamma=1.0)
    ref = dft_reference(x64, labels)
    ours.backward()
    ref.backward()
    assert abs(ours.item() - ref.item()) <= 1e-6
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("gamma", [1e-7, 0.1, 0.5, 0.8, 0.999])
def test_gradient_equals_closed_form(gamma):
    logits, labels = make_batch()
    x = logits.clone().requires_grad_()
    x64 = logits.double().requires_grad_()
    gamma_cross_entropy(x, labels, gamma=gamma, min_weight=0.0).backward()
    gamma_closed_form_reference(x64, labels, gamma=gamma).backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "gamma,min_weight,eps,shift,reduction",
    list(itertools.product(GAMMAS, [0.0, 0.2], [0.0, 0.1], [False, True], ["mean", "sum", "none"])),
)
def test_matches_float64_reference_fp32(gamma, min_weight, eps, shift, reduction):
    logits, labels = make_batch()
    x = logits.clone().requires_grad_()
    x64 = logits.double().requires_grad_()
    kw = dict(gamma=gamma, min_weight=min_weight, label_smoothing=eps, shift_labels=shift, reduction=reduction)
    ours = gamma_cross_entropy(x, labels, **kw)
    ref = gamma_cross_entropy_reference(x64, labels, **kw)
    assert ours.shape == ref.shape
    upstream = torch.randn_like(ref) if reduction == "none" else torch.ones_like(ref)
    ours.backward(upstream.float())
    ref.backward(upstream)
    torch.testing.assert_close(ours.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_half_precision_logits_math_in_fp32(dtype, gamma):
    logits, labels = make_batch(dtype=dtype)
    x = logits.clone().requires_grad_()
    x64 = logits.double().requires_grad_()  # the reference sees exactly the rounded half-precision values
    kw = dict(gamma=gamma, min_weight=0.2, label_smoothing=0.1, shift_labels=True)
    ours = gamma_cross_entropy(x, labels, **kw)
    ref = gamma_cross_entropy_reference(x64, labels, **kw)
    ours.backward()
    ref.backward()
    assert ours.dtype == torch.float32 and x.grad.dtype == dtype
    torch.testing.assert_close(ours.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    # the gradient is rounded to the logits' dtype once
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=2e-3, rtol=1e-2)


def test_chunking_does_not_change_results(monkeypatch):
    logits, labels = make_batch(shape=(5, 11), vocab=17)
    kw = dict(gamma=0.3, min_weight=0.1, label_smoothing=0.1, shift_labels=True)
    x_full = logits.clone().requires_grad_()
    full = gamma_cross_entropy(x_full, labels, **kw)
    full.backward()
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 17 * 3)  # 3 rows a chunk, 55 rows: a ragged last chunk
    x_chunk = logits.clone().requires_grad_()
    chunked = gamma_cross_entropy(x_chunk, labels, **kw)
    chunked.backward()
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x_chunk.grad, x_full.grad, atol=1e-7, rtol=1e-6)


def test_num_items_in_batch_and_none_reduction_layout():
    logits, labels = make_batch()
    total = gamma_cross_entropy(logits, labels, gamma=0.1, reduction="sum")
    assert torch.allclose(gamma_cross_entropy(logits, labels, gamma=0.1, num_items_in_batch=7), total / 7)
    assert torch.allclose(
        gamma_cross_entropy(logits, labels, gamma=0.1, num_items_in_batch=torch.tensor(7.0)), total / 7
    )
    per = gamma_cross_entropy(logits, labels, gamma=0.1, reduction="none", shift_labels=True)
    assert per.shape == labels.shape
    assert (per[labels == -100] == 0).all()
    assert (per[:, 0] == 0).all()  # position 0 is never predicted
    scored = labels != -100
    scored[:, 0] = False
    assert (per[scored] > 0).all()


@pytest.mark.parametrize("gamma", [1e-7, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extreme_logits_are_finite(gamma, dtype):
    logits, labels = make_batch(scale=1.0)
    logits = (logits.sign() * 1e4).to(dtype)
    for min_weight, eps in [(0.0, 0.0), (0.2, 0.1)]:
        x = logits.clone().requires_grad_()
        loss = gamma_cross_entropy(x, labels, gamma=gamma, min_weight=min_weight, label_smoothing=eps)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        ref = gamma_cross_entropy_reference(logits, labels, gamma=gamma, min_weight=min_weight, label_smoothing=eps)
        torch.testing.assert_close(loss.double(), ref, atol=1e-2, rtol=1e-4)


def test_all_ignored_gives_zero_and_zero_gradient():
    logits, labels = make_batch()
    labels[:] = -100
    for reduction in ["mean", "sum"]:
        x = logits.clone().requires_grad_()
        loss = gamma_cross_entropy(x, labels, gamma=0.5, label_smoothing=0.1, reduction=reduction)
        loss.backward()
        assert loss.item() == 0.0
        assert (x.grad == 0).all()


def test_weight_matches_definition():
    p = torch.tensor([1e-30, 1e-6, 0.01, 0.5, 0.999, 1.0], dtype=torch.float64)
    for gamma in GAMMAS:
        for b in [0.0, 0.3]:
            expected = (p / (gamma + (1 - gamma) * p)).clamp(b, 1.0)
            torch.testing.assert_close(tvd_weight(p.log(), gamma, b), expected, atol=1e-12, rtol=1e-9)


def test_stats_are_token_sums():
    logits, labels = make_batch()
    loss, stats = gamma_cross_entropy_with_stats(logits, labels, gamma=0.5, min_weight=0.1, reduction="sum")
    nll = F.cross_entropy(logits.view(-1, 13), labels.view(-1), reduction="sum")
    assert stats.num_tokens.item() == (labels != -100).sum().item()
    assert abs(stats.nll_sum.item() - nll.item()) < 1e-4
    assert abs(stats.objective_sum.item() - loss.item()) < 1e-5
    assert 0.1 * stats.num_tokens.item() <= stats.weight_sum.item() <= stats.num_tokens.item()


def test_no_full_vocabulary_tensor_saved_for_backward():
    """The graph keeps the logits themselves and O(N) tensors, nothing else of size N×V."""
    for dtype in [torch.float32, torch.bfloat16]:
        logits, labels = make_batch(dtype=dtype, shape=(4, 32), vocab=1000)
        x = logits.clone().requires_grad_()
        big = []

        def pack(t, x=x, big=big):
            if t.numel() >= x.numel() and t.data_ptr() != x.data_ptr():
                big.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = gamma_cross_entropy(x, labels, gamma=0.1, label_smoothing=0.1, shift_labels=True)
        loss.backward()
        assert big == [], f"extra N×V tensors saved for backward: {big}"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gamma=-0.1), "gamma must be in"),
        (dict(gamma=1.5), "gamma must be in"),
        (dict(gamma=float("nan")), "gamma must be a number"),
        (dict(gamma=0.1, min_weight=1.2), "min_weight must be in"),
        (dict(gamma=0.1, min_weight=float("nan")), "min_weight"),
        (dict(gamma=0.1, label_smoothing=1.0), "label_smoothing must be in"),
        (dict(gamma=0.1, label_smoothing=-0.1), "label_smoothing must be in"),
        (dict(gamma=0.1, reduction="avg"), "reduction must be one of"),
        (dict(gamma="0.1"), "gamma must be a number"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    logits, labels = make_batch()
    with pytest.raises(ValueError, match=match):
        gamma_cross_entropy(logits, labels, **kwargs)


def test_bad_tensors():
    logits, labels = make_batch()
    with pytest.raises(ValueError, match="does not match labels shape"):
        gamma_cross_entropy(logits, labels[:, :-1], gamma=0.1)
    with pytest.raises(ValueError, match="does not match labels shape"):
        gamma_cross_entropy(logits[0], labels, gamma=0.1)
    with pytest.raises(ValueError, match="integer tensor"):
        gamma_cross_entropy(logits, labels.float(), gamma=0.1)
    with pytest.raises(ValueError, match="floating-point"):
        gamma_cross_entropy(logits.long(), labels, gamma=0.1)
    for bad in [13, -1, -7]:
        wrong = labels.clone()
        wrong[1, 3] = bad
        with pytest.raises(ValueError, match=r"labels must be in \[0, 13\).*found \[" + str(bad)):
            gamma_cross_entropy(logits, wrong, gamma=0.1)
    # with shift, the first label is never a target, so an out-of-range value there is not scored
    wrong = labels.clone()
    wrong[1, 0] = 99
    gamma_cross_entropy(logits, wrong, gamma=0.1, shift_labels=True)


def test_loss_module_does_not_import_transformers():
    code = (
        "import sys, hf_tvd_loss; from hf_tvd_loss import gamma_cross_entropy, TVDArguments; "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("focal_gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_focal_matches_float64_reference(focal_gamma, eps):
    from hf_tvd_loss.ops import focal_cross_entropy_with_stats
    from hf_tvd_loss.ops.reference import focal_cross_entropy_reference

    logits, labels = make_batch()
    x = logits.clone().requires_grad_()
    x64 = logits.double().requires_grad_()
    kw = dict(focal_gamma=focal_gamma, focal_alpha=0.5, label_smoothing=eps, shift_labels=True)
    ours, stats = focal_cross_entropy_with_stats(x, labels, **kw)
    ref = focal_cross_entropy_reference(x64, labels, **kw)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours.double(), ref.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-6, rtol=1e-4)
    assert 0 < stats.weight_sum.item() <= 0.5 * stats.num_tokens.item()


def test_focal_zero_is_cross_entropy_and_bad_values():
    from hf_tvd_loss.ops import focal_cross_entropy_with_stats

    logits, labels = make_batch()
    focal, _ = focal_cross_entropy_with_stats(logits, labels, focal_gamma=0.0)
    assert abs(focal.item() - gamma_cross_entropy(logits, labels, gamma=0.0).item()) <= 1e-6
    with pytest.raises(ValueError, match="focal_gamma must be a number >= 0"):
        focal_cross_entropy_with_stats(logits, labels, focal_gamma=-1.0)
    with pytest.raises(ValueError, match="focal_alpha must be a number > 0"):
        focal_cross_entropy_with_stats(logits, labels, focal_alpha=0.0)
