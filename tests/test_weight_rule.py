"""Issue 22.9: a custom per-token weight rule (TokenWeightRule), on every loss_impl and backend, exact under
accumulation, judged by a materialised-logits float64 reference. The worked example: w = p^α (α = 0 cross-entropy,
α = 1 DFT)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from test_trainer import assert_same_training, train_losses
from tiny import tiny_model, train_tiny

from hf_tvd_loss import (
    TokenWeightRule,
    TVDArguments,
    TVDLoss,
    TVDTrainer,
    gamma_terms,
    linear_token_weighted_cross_entropy,
    probability_power_rule,
    token_weighted_cross_entropy,
)


def reference(logits, labels, alpha, label_smoothing=0.0):
    """The materialised loss in float64, written from the formula: mean over scored tokens of
    (1-ε)·sg(p^α)·(-log p_y) + (ε/V)·Σ_v(-log p_v)."""
    log_probs = F.log_softmax(logits.double(), dim=-1)
    mask = labels != -100
    log_p = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    weight = log_p.detach().exp() ** alpha
    smooth = -log_probs.mean(-1)
    per_token = (1 - label_smoothing) * weight * (-log_p) + label_smoothing * smooth
    return per_token[mask].sum() / mask.sum()


def head_inputs(seed, n, d, vocab, ignore_every):
    """float64 hidden ``[n, d]`` and head weight ``[vocab, d]`` (both requiring grad), labels with every
    ``ignore_every``-th one -100."""
    torch.manual_seed(seed)
    hidden = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, d, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, vocab, (n,))
    labels[::ignore_every] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 2.0])
def test_probability_power_equals_the_reference_on_both_paths(alpha):
    hidden, weight, labels = head_inputs(0, 37, 16, 53, ignore_every=5)
    rule = probability_power_rule(alpha)

    ref = reference(hidden @ weight.T, labels, alpha, 0.1)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    logits_loss, _ = token_weighted_cross_entropy(hidden @ weight.T, labels, rule, label_smoothing=0.1)
    logits_grads = torch.autograd.grad(logits_loss, (hidden, weight))
    chunked, _ = linear_token_weighted_cross_entropy(hidden, weight, labels, rule, label_smoothing=0.1,
                                                     chunk_size=8)  # fmt: skip
    chunked_grads = torch.autograd.grad(chunked, (hidden, weight))
    for loss, grads in ((logits_loss, logits_grads), (chunked, chunked_grads)):
        torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-7)  # the loss value is float32
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


def test_alpha_zero_is_cross_entropy_and_one_is_dft():
    torch.manual_seed(1)
    logits = torch.randn(4, 9, 31)
    labels = torch.randint(0, 31, (4, 9))
    for alpha, same in ((0.0, gamma_terms(0.0, 0.0)), (1.0, gamma_terms(1.0, 0.0))):
        ours, _ = token_weighted_cross_entropy(logits, labels, probability_power_rule(alpha), shift_labels=True)
        want, _ = token_weighted_cross_entropy(logits, labels, same, shift_labels=True)
        torch.testing.assert_close(ours, want)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 31), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(token_weighted_cross_entropy(logits, labels, probability_power_rule(0.0),
                                                            shift_labels=True)[0], plain)  # fmt: skip


def test_from_weight_refuses_a_rule_that_is_not_elementwise():
    rule = TokenWeightRule.from_weight(lambda log_p: log_p.exp().mean(), name="mean")
    with pytest.raises(ValueError, match="rule 'mean' returned .* one weight per token"):
        token_weighted_cross_entropy(torch.randn(5, 7), torch.randint(0, 7, (5,)), rule)
    with pytest.raises(ValueError, match="weight must be a function"):
        TokenWeightRule.from_weight(0.5)
    with pytest.raises(ValueError, match="alpha must be"):
        probability_power_rule(-1.0)


def test_trainer_with_a_rule_dft_equal_chunked_and_exact_under_accumulation(tmp_path):
    """TVDTrainer(weight_rule=p^1) trains exactly as TVDArguments(gamma=1, min_weight=0) (DFT); the chunked path
    equals the logits path; batch 16 = 4 × 4 accumulation."""
    rule = probability_power_rule(1.0)
    dft = train_tiny("llama", str(tmp_path / "dft"), per_device_batch=16, grad_accum=1,
                     tvd=dict(gamma=1.0, min_weight=0.0))  # fmt: skip
    ours = train_tiny("llama", str(tmp_path / "rule"), per_device_batch=16, grad_accum=1, weight_rule=rule)
    assert_same_training(ours, dft, loss_rtol=1e-5, param_atol=1e-5)
    half = probability_power_rule(0.5)
    logits = train_tiny("llama", str(tmp_path / "l"), per_device_batch=16, grad_accum=1, weight_rule=half)
    chunked = train_tiny("llama", str(tmp_path / "c"), per_device_batch=4, grad_accum=4, weight_rule=half,
                         tvd=dict(loss_impl="chunked"))  # fmt: skip
    assert_same_training(chunked, logits)
    assert train_losses(logits[0]) != train_losses(ours[0])  # α = 0.5 is another loss than α = 1
    logged = logits[0][0]
    assert "gamma" not in logged and 0 < logged["tvd_weight_mean"] < 1  # no γ in a custom rule
    assert logits[2].checkpoint_metadata()["weight_rule"] == "probability_power(alpha=0.5)"


def test_trainer_refuses_options_a_rule_replaces(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"gamma=0.8, min_weight=0.3 would not be applied"):
        TVDTrainer(model=tiny_model("llama"), args=args, tvd_args=TVDArguments(gamma=0.8, min_weight=0.3),
                   weight_rule=probability_power_rule(0.5))  # fmt: skip
    with pytest.raises(ValueError, match="weight_rule must be a TokenWeightRule"):
        TVDTrainer(model=tiny_model("llama"), args=args, weight_rule=lambda log_p: (log_p, log_p))
    with pytest.raises(ValueError, match="would not be applied"):
        TVDLoss(TVDArguments(loss_type="focal"), weight_rule=probability_power_rule(0.5))


def test_tvd_loss_and_model_card_with_a_rule(tmp_path):
    from huggingface_hub import ModelCard
    from transformers import TrainingArguments

    torch.manual_seed(2)
    logits, labels = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    out = {"logits": logits}
    loss = TVDLoss(weight_rule=probability_power_rule(0.5), shift_labels=True)(out, labels)
    want = reference(logits[:, :-1], labels[:, 1:], 0.5)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = TVDTrainer(model=tiny_model("llama"), args=args, weight_rule=probability_power_rule(0.5))
    trainer.create_model_card(model_name="tiny")
    card = ModelCard.load(os.path.join(str(tmp_path), "README.md"))
    assert card.data.hf_tvd_loss["weight_rule"] == "probability_power(alpha=0.5)"
    assert "| weight rule | probability_power(alpha=0.5) |" in card.text


# --- a rule that also reads each position's predictive entropy (issue 22.9: "and its entropy")
def entropy_weight(log_p, entropy):
    """A smooth entropy-and-probability weight, so a wrong entropy (or one per wrong row) changes the loss."""
    return log_p.exp().sqrt() * (1.0 + entropy).reciprocal() + 0.1


def entropy_reference(logits, labels, label_smoothing=0.0, reduction="mean"):
    """float64 from the formula: (1-ε)·sg(w(log p_y, H))·(-log p_y) + (ε/V)·Σ_v(-log p_v), H = -Σ_v p_v log p_v."""
    log_probs = F.log_softmax(logits.double(), dim=-1)
    mask = labels != -100
    log_p = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    weight = entropy_weight(log_p.detach(), entropy.detach())
    per_token = (1 - label_smoothing) * weight * (-log_p) + label_smoothing * (-log_probs.mean(-1))
    per_token = per_token * mask
    return per_token if reduction == "none" else per_token.sum() / mask.sum()


ENTROPY_RULE = TokenWeightRule.from_weight(entropy_weight, uses_entropy=True, name="entropy_example")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_entropy_rule_equals_the_reference_on_every_path(reduction):
    """The logits path, the torch chunked backend (fused "mean" and recomputing "none" forms) and PyTorch's own
    linear_cross_entropy kernel backend (entropy from the extra pass) against the float64 reference."""
    n = 29
    hidden, weight, labels = head_inputs(3, n, 16, 47, ignore_every=4)
    upstream = torch.rand(n, dtype=torch.float64) if reduction == "none" else None

    def grads_of(loss):
        loss = loss.double()
        total = loss.sum() if upstream is None else (loss * upstream).sum()
        return loss.detach(), torch.autograd.grad(total, (hidden, weight))

    want, want_grads = grads_of(entropy_reference(hidden @ weight.T, labels, 0.1, reduction))
    runs = {
        "logits": token_weighted_cross_entropy(
            hidden @ weight.T, labels, ENTROPY_RULE, label_smoothing=0.1, reduction=reduction
        )[0],  # fmt: skip
        "chunked": linear_token_weighted_cross_entropy(
            hidden, weight, labels, ENTROPY_RULE, label_smoothing=0.1, chunk_size=8, reduction=reduction
        )[0],  # fmt: skip
    }
    if hasattr(F, "linear_cross_entropy"):
        runs["torch_linear_ce"] = linear_token_weighted_cross_entropy(
            hidden.float(), weight.float(), labels, ENTROPY_RULE, label_smoothing=0.1, reduction=reduction,
            impl="torch_linear_ce",
        )[0]  # fmt: skip
    for name, loss in runs.items():
        got, got_grads = grads_of(loss)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-6, msg=name)


def test_entropy_rule_in_the_trainer_chunked_equals_logits_and_accumulation(tmp_path):
    logits = train_tiny("llama", str(tmp_path / "l"), per_device_batch=16, grad_accum=1, weight_rule=ENTROPY_RULE)
    chunked = train_tiny("llama", str(tmp_path / "c"), per_device_batch=4, grad_accum=4, weight_rule=ENTROPY_RULE,
                         tvd=dict(loss_impl="chunked"))  # fmt: skip
    assert_same_training(chunked, logits)
    plain = train_tiny("llama", str(tmp_path / "p"), per_device_batch=16, grad_accum=1,
                       weight_rule=probability_power_rule(0.5))  # fmt: skip
    assert train_losses(logits[0]) != train_losses(plain[0])
    assert logits[2].checkpoint_metadata()["weight_rule"] == "entropy_example"


def test_a_weight_function_that_cannot_take_its_arguments_is_refused_when_the_rule_is_made():
    with pytest.raises(ValueError, match=r"'one_arg' takes \(log_p\) but is called as weight\(log_p, entropy\)"):
        TokenWeightRule.from_weight(lambda log_p: log_p.exp(), uses_entropy=True, name="one_arg")
    with pytest.raises(ValueError, match="called as weight\\(log_p\\) .*needs uses_entropy=True"):
        TokenWeightRule.from_weight(entropy_weight)
