"""Generalized cross-entropy (loss_type="gce"): (1 - p^q)/q per token, gradient p^q·∇(-log p), judged by the closed
form in float64 on both loss paths; its TVDArguments fields, the trainer's choice of rule, the study's loss name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_tvd_loss import TVDArguments, gamma_terms, gce_terms, linear_token_weighted_cross_entropy
from hf_tvd_loss.ops.logits import token_weighted_cross_entropy
from hf_tvd_loss.ops.reference import gce_cross_entropy_reference


def _head(seed=0, n=29, d=12, vocab=41):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[::6] = -100
    return hidden, weight, labels


def _both_paths(hidden, weight, labels, rule, **kwargs):
    """(loss, stats, grads) of the logits path and of the chunked hidden-state path."""
    out = []
    for path in ("logits", "chunked"):
        if path == "logits":
            loss, stats = token_weighted_cross_entropy(hidden @ weight.T, labels, rule, **kwargs)
        else:
            loss, stats = linear_token_weighted_cross_entropy(hidden, weight, labels, rule, chunk_size=8, **kwargs)
        out.append((path, loss, stats, torch.autograd.grad(loss, (hidden, weight))))
    return out


@pytest.mark.parametrize("q", [0.05, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_value_and_gradient_equal_the_closed_form_on_both_paths(q, eps):
    hidden, weight, labels = _head()
    ref = gce_cross_entropy_reference(hidden @ weight.T, labels, q=q, label_smoothing=eps)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))  # autograd of (1 - p^q)/q itself
    for path, loss, _, grads in _both_paths(hidden, weight, labels, gce_terms(q), label_smoothing=eps):
        torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-7, msg=path)  # the loss runs in fp32
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7, msg=path)


def test_reported_objective_is_gce_and_gradient_weight_is_p_to_the_q():
    q = 0.7
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 17, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 17, (50,), generator=g)
    log_p = F.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
    p = log_p.exp()
    per_token, stats = token_weighted_cross_entropy(logits, labels, gce_terms(q), reduction="none")
    torch.testing.assert_close(per_token.double(), (1 - p**q) / q, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(stats.objective_sum.double(), ((1 - p**q) / q).sum(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.nll_sum.double(), (-log_p).sum(), rtol=1e-6, atol=1e-6)
    a, c = gce_terms(q)(log_p)
    torch.testing.assert_close(c, p**q)  # the factor of the NLL's gradient
    torch.testing.assert_close(a * -log_p, (1 - p**q) / q)
    assert bool(((a >= c - 1e-12) & (a <= 1.0)).all())  # the value's weight lies in [p^q, 1]
    # the per-token gradient w.r.t. the logits is p^q times cross-entropy's
    z = logits.clone().requires_grad_(True)
    loss, _ = token_weighted_cross_entropy(z, labels, gce_terms(q), reduction="sum")
    (grad,) = torch.autograd.grad(loss, z)
    want = (F.softmax(logits, -1) - F.one_hot(labels, 17)) * (p**q)[:, None]
    torch.testing.assert_close(grad.double(), want, rtol=1e-5, atol=1e-7)


def test_terms_at_the_edges_are_finite():
    a, c = gce_terms(0.7)(torch.tensor([0.0, -1e-30, 1e-7, -200.0], dtype=torch.float32))
    assert bool(torch.isfinite(a).all() and torch.isfinite(c).all())
    assert a[0] == 1.0 and c[0] == 1.0 and a[2] == 1.0 and c[2] == 1.0  # p = 1 (and a rounding hair above)
    assert float(a[3]) == pytest.approx((1 - torch.exp(torch.tensor(-140.0)).item()) / 140.0)


def test_q_one_has_the_gradient_of_dft_and_small_q_tends_to_cross_entropy():
    hidden, weight, labels = _head(1)
    gce = _both_paths(hidden, weight, labels, gce_terms(1.0))
    dft = _both_paths(hidden, weight, labels, gamma_terms(1.0, 0.0))  # γ = 1, b = 0: DFT, weight sg(p)
    for (path, loss, _, grads), (_, _, _, dft_grads) in zip(gce, dft):
        for got, want in zip(grads, dft_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=path)
        logits = (hidden @ weight.T).detach()
        mask = labels != -100
        p = F.softmax(logits, -1)[mask].gather(-1, labels[mask, None]).squeeze(-1)
        torch.testing.assert_close(loss.double(), (1 - p).mean(), rtol=1e-6, atol=1e-7, msg=path)  # value 1 - p
    logits = (hidden @ weight.T).detach()
    small, _ = token_weighted_cross_entropy(logits, labels, gce_terms(1e-4))
    ce = F.cross_entropy(logits, labels)
    torch.testing.assert_close(small.double(), ce, rtol=2e-3, atol=0)


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5, float("nan"), True])
def test_gce_terms_refuses_bad_q(q):
    with pytest.raises(ValueError, match="q must be"):
        gce_terms(q)


def test_arguments_of_gce():
    assert TVDArguments(loss_type="gce").gce_q == 0.7
    assert TVDArguments(loss_type="gce", gce_q=0.4).gce_q == 0.4
    for bad in (0.0, 1.2, float("inf")):
        with pytest.raises(ValueError, match="TVDArguments.gce_q"):
            TVDArguments(loss_type="gce", gce_q=bad)
    with pytest.raises(ValueError, match=r"gamma=0.5 set, but loss_type='gce' does not use it \(loss_type='gamma_ce'"):
        TVDArguments(loss_type="gce", gamma=0.5)
    with pytest.raises(ValueError, match=r"gce_q=0.5 set, but loss_type='gamma_ce' does not use it"):
        TVDArguments(gce_q=0.5)
    with pytest.raises(ValueError, match=r"gce_q=0.5 set, but loss_type='focal'.*choose loss_type='gce'"):
        TVDArguments(loss_type="focal", gce_q=0.5)
    # fields of two other loss types: each named with the type that uses it
    with pytest.raises(ValueError, match=r"min_weight=0.3, focal_alpha=2.0 set.*min_weight: loss_type='gamma_ce'; "
                                         r"focal_alpha: loss_type='focal'"):  # fmt: skip
        TVDArguments(loss_type="gce", min_weight=0.3, focal_alpha=2.0)


def test_every_loss_type_says_which_fields_it_owns():
    from typing import get_args

    from hf_tvd_loss.args import LOSS_TYPE_FIELDS, LossType

    assert set(LOSS_TYPE_FIELDS) == set(get_args(LossType))
    owned = [name for names in LOSS_TYPE_FIELDS.values() for name in names]
    assert len(owned) == len(set(owned)) and set(owned) <= set(TVDArguments.__dataclass_fields__)


def test_trainer_selects_the_gce_rule_and_a_custom_rule_refuses_gce_q():
    from hf_tvd_loss.trainer import check_weight_rule, select_token_terms

    rule = select_token_terms(TVDArguments(loss_type="gce", gce_q=0.5))(0.123)  # γ does not matter
    log_p = torch.linspace(-5, 0, 11, dtype=torch.float64)
    for got, want in zip(rule(log_p), gce_terms(0.5)(log_p)):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="loss_type='gce'"):
        check_weight_rule(gce_terms(0.5), TVDArguments(loss_type="gce"))


@pytest.mark.parametrize("loss_impl", ["logits", "chunked"])
def test_trainer_loss_is_gce(tmp_path, loss_impl):
    from tiny import collator, tiny_dataset, tiny_model
    from transformers import TrainingArguments

    from hf_tvd_loss import TVDTrainer

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=4)
    trainer = TVDTrainer(model=tiny_model("llama"), args=args, train_dataset=tiny_dataset("llama", n=4),
                         data_collator=collator("llama"),
                         tvd_args=TVDArguments(loss_type="gce", gce_q=0.5, loss_impl=loss_impl))  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = gce_cross_entropy_reference(logits, batch["labels"], q=0.5, shift_labels=True)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)


def test_card_checkpoint_and_study_name_gce():
    from hf_tvd_loss.card import loss_metadata, loss_name, loss_section
    from hf_tvd_loss.checkpoints import check_resume_loss_settings
    from hf_tvd_loss.study.compare import LOSS_RESET, loss_reset, parse_loss

    tvd = TVDArguments(loss_type="gce", gce_q=0.5)
    assert loss_metadata(tvd) == {"loss_type": "gce", "label_smoothing": 0.0, "normalization": "token", "gce_q": 0.5}
    assert "gce_q=0.5" in loss_name(tvd) and "| q (gce_q) | 0.5 |" in loss_section(tvd)
    saved = {"tvd_args": {**TVDArguments(loss_type="gce").__dict__}}
    with pytest.raises(ValueError, match=r"gce_q 0.7 -> 0.5"):
        check_resume_loss_settings("ckpt", saved, tvd)

    setting = parse_loss("gce0.7")
    assert (setting.family, dict(setting.options)) == ("gce", {"loss_type": "gce", "gce_q": 0.7})
    assert dict(parse_loss("gce").options) == {"loss_type": "gce"}
    assert dict(parse_loss("gce0.3,label_smoothing=0.1").options)["label_smoothing"] == "0.1"
    reset = loss_reset(setting)
    assert reset != LOSS_RESET and reset[:2] == ["--loss_type", "gce"]
    run = _parsed(reset + setting.argv())  # the run's options, reset then its own, are accepted
    assert (run.loss_type, run.gce_q) == ("gce", 0.7)
    with pytest.raises(ValueError, match="unknown loss"):
        parse_loss("gceq")


def _parsed(argv):
    """TVDArguments from ``--key value`` pairs, later ones winning (as the task parser merges them)."""
    from transformers import HfArgumentParser

    merged = dict(zip(argv[0::2], argv[1::2]))
    (tvd,) = HfArgumentParser(TVDArguments).parse_args_into_dataclasses([x for kv in merged.items() for x in kv])
    return tvd
