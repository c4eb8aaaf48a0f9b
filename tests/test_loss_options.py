"""Loss options: weights from the data (`loss_weights`) and sequence normalisation, in both paths and the trainers."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny import PAD, VOCAB, collator, tiny_dataset, tiny_model, train_tiny
from transformers import TrainingArguments

from hf_tvd_loss import TVDArguments, TVDTrainer, WithLossWeights, gamma_cross_entropy_with_stats
from hf_tvd_loss.ops import (
    TokenWeightRule,
    focal_cross_entropy_with_stats,
    focal_terms,
    gamma_cross_entropy,
    gamma_terms,
    linear_gamma_cross_entropy,
    linear_gamma_cross_entropy_with_stats,
    linear_token_weighted_cross_entropy,
)
from hf_tvd_loss.ops.logits import token_weighted_cross_entropy
from hf_tvd_loss.ops.reference import gamma_cross_entropy_reference


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 7, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 40, (3, 7), generator=g)
    labels[0, :2] = -100
    labels[2, 5:] = -100
    scale = torch.rand(3, 7, generator=g) * 2  # the loss runs in fp32
    return hidden, weight, labels, scale


@pytest.mark.parametrize("path", ["logits", "linear_fused", "linear_per_token"])
@pytest.mark.parametrize("terms", ["gamma", "focal"])
def test_token_weights_multiply_each_token_loss(path, terms):
    hidden, weight, labels, scale = _case()
    token_terms = gamma_terms(0.3, 0.1) if terms == "gamma" else focal_terms(2.0, 1.0)
    kwargs = dict(label_smoothing=0.1, shift_labels=True)

    def run(token_scale, reduction):
        if path == "logits":
            return token_weighted_cross_entropy(
                hidden @ weight.T, labels, token_terms, reduction=reduction, token_scale=token_scale, **kwargs
            )[0]
        return linear_token_weighted_cross_entropy(
            hidden, weight, labels, token_terms, chunk_size=4, reduction=reduction, token_scale=token_scale, **kwargs
        )[0]

    per_token = run(None, "none")  # value at t = loss of predicting labels[t]
    reduction = "none" if path == "linear_per_token" else "sum"
    weighted = run(scale, reduction)
    expected = per_token * scale
    if reduction == "sum":
        expected = expected.sum()
    torch.testing.assert_close(weighted, expected, rtol=1e-6, atol=1e-7)
    # gradients: those of Σ scale_t · loss_t
    got = torch.autograd.grad(weighted.sum(), (hidden, weight))
    want = torch.autograd.grad((run(None, "none") * scale).sum(), (hidden, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_weights_of_two_give_twice_the_mean_and_per_example_weights_broadcast():
    hidden, weight, labels, _ = _case(1)
    logits = hidden @ weight.T
    base, _ = token_weighted_cross_entropy(logits, labels, gamma_terms(0.5, 0.0), shift_labels=True)
    twice, _ = token_weighted_cross_entropy(
        logits, labels, gamma_terms(0.5, 0.0), shift_labels=True, token_scale=torch.full((3,), 2.0)
    )
    torch.testing.assert_close(twice, 2 * base, rtol=1e-7, atol=0)
    reference = gamma_cross_entropy_reference(logits, labels, gamma=0.5, shift_labels=True)
    torch.testing.assert_close(base, reference.to(base.dtype), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="loss_weights shape"):
        token_weighted_cross_entropy(logits, labels, gamma_terms(0.5, 0.0), token_scale=torch.ones(2))
    with pytest.raises(ValueError, match="NaN or inf"):
        token_weighted_cross_entropy(
            logits, labels, gamma_terms(0.5, 0.0), token_scale=torch.tensor([1.0, float("nan"), 1.0])
        )


def _weighted_dataset(n: int, per_token: bool):
    rows = []
    for i, row in enumerate(tiny_dataset("llama", n=n)):
        row = dict(row)
        row["loss_weights"] = [0.5 + (i + t) % 3 for t in range(len(row["labels"]))] if per_token else 0.5 + i % 3
        rows.append(row)
    from datasets import Dataset

    return Dataset.from_list(rows)


@pytest.mark.parametrize("per_token", [False, True])
def test_loss_weights_column_reaches_the_loss_through_the_trainer(tmp_path, per_token):
    dataset = _weighted_dataset(8, per_token)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=4)
    trainer = TVDTrainer(
        model=tiny_model("llama"),
        args=args,
        train_dataset=dataset,
        data_collator=WithLossWeights(collator("llama")),
        tvd_args=TVDArguments(gamma=0.5, min_weight=0.0),
    )
    batch = next(iter(trainer.get_train_dataloader()))  # remove_unused_columns=True (the default) kept the column
    assert "loss_weights" in batch
    assert batch["loss_weights"].shape == ((4,) if not per_token else batch["labels"].shape)
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per_tok = gamma_cross_entropy_with_stats(
            logits, batch["labels"], gamma=0.5, shift_labels=True, reduction="none"
        )[0]
        scale = batch["loss_weights"] if per_token else batch["loss_weights"][:, None].expand_as(per_tok)
        scored = batch["labels"][:, 1:].ne(-100).sum()
    torch.testing.assert_close(loss, (per_tok * scale).sum() / scored, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", ["logits", "chunked"])
def test_sequence_normalisation_is_exact_under_accumulation(tmp_path, impl):
    tvd = dict(gamma=0.5, min_weight=0.1, normalization="sequence", loss_impl=impl)
    whole = train_tiny("llama", str(tmp_path / "a"), per_device_batch=8, grad_accum=1, tvd=tvd, max_steps=2)
    split = train_tiny("llama", str(tmp_path / "b"), per_device_batch=2, grad_accum=4, tvd=tvd, max_steps=2)
    for a, b in zip(whole[0], split[0]):
        if "loss" in a:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    worst = max((whole[1][k] - split[1][k]).abs().max().item() for k in whole[1])
    assert worst < 1e-5


def test_sequence_normalisation_divides_by_scored_sequences(tmp_path):
    batch = collator("llama")(list(tiny_dataset("llama", n=4)))
    batch["labels"][3] = -100  # a sequence with nothing to score does not count
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    model = tiny_model("llama").eval()
    trainer = TVDTrainer(
        model=model, args=args, tvd_args=TVDArguments(gamma=0.2, min_weight=0.0, normalization="sequence")
    )
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, _ = gamma_cross_entropy_with_stats(
            logits, batch["labels"], gamma=0.2, shift_labels=True, reduction="sum"
        )
    torch.testing.assert_close(loss, total / 3)


def test_sequence_count_of_a_padding_free_row():
    from hf_tvd_loss.trainer import _count_targets

    # two sequences packed into one row (positions restart at 0); the second has no scored token
    labels = torch.tensor([[5, 6, 7, -100, -100, -100]])
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2]])
    batch = {"labels": labels, "position_ids": position_ids, "input_ids": torch.full_like(labels, PAD)}
    assert int(_count_targets(batch, True, "sequence")) == 1
    batch["labels"] = torch.tensor([[5, 6, 7, -100, 8, 9]])
    assert int(_count_targets(batch, True, "sequence")) == 2
    assert int(_count_targets(batch, True, "token")) == 4  # 6, 7, 8, 9 (the first label is never a target)
    assert VOCAB > 9


def _keywords(fn, drop=()):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name not in drop]


def test_public_loss_signatures_agree():
    """The public losses spell their keywords out (what help(), IDEs and type checkers show); the copies agree."""
    stats_only = {"extra_metrics"}
    assert _keywords(gamma_cross_entropy) == _keywords(gamma_cross_entropy_with_stats, stats_only)
    assert _keywords(linear_gamma_cross_entropy) == _keywords(linear_gamma_cross_entropy_with_stats, stats_only)
    assert _keywords(gamma_cross_entropy_reference) == _keywords(gamma_cross_entropy)
    gamma_only, terms_only = {"gamma", "min_weight"}, {"terms", "token_scale"}
    focal_only = {"focal_gamma", "focal_alpha"}
    assert _keywords(token_weighted_cross_entropy, terms_only) == _keywords(gamma_cross_entropy_with_stats, gamma_only)
    assert _keywords(focal_cross_entropy_with_stats, focal_only) == _keywords(
        gamma_cross_entropy_with_stats, gamma_only
    )
    assert _keywords(linear_token_weighted_cross_entropy, terms_only) == _keywords(
        linear_gamma_cross_entropy_with_stats, gamma_only
    )
    linear = {name: (kind, default) for name, kind, default in _keywords(linear_gamma_cross_entropy)}
    for name, kind, default in _keywords(gamma_cross_entropy, {"logits"}):
        assert linear[name] == (kind, default), name


def test_weight_rule_floor_is_explicit_and_a_bare_terms_function_has_none():
    rule, focal = gamma_terms(0.5, 0.2), focal_terms(2.0, 1.0)
    assert isinstance(rule, TokenWeightRule) and rule.floor == 0.2 and focal.floor is None
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.randint(0, 11, (2, 6), generator=g)
    with_rule, stats = token_weighted_cross_entropy(logits, labels, rule)
    bare, bare_stats = token_weighted_cross_entropy(logits, labels, rule.terms)
    assert torch.equal(with_rule, bare) and torch.equal(stats.weight_sum, bare_stats.weight_sum)
    assert stats.floor_count is not None and bare_stats.floor_count is None


def test_a_loss_weights_column_without_with_loss_weights_is_refused(tmp_path):
    """Issue 22: every documented path applies the weights or refuses; a plain collator would drop the column."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1,
                             remove_unused_columns=False)  # fmt: skip
    trainer = TVDTrainer(model=tiny_model("llama"), args=args, train_dataset=_weighted_dataset(8, False),
                         data_collator=collator("llama"), tvd_args=TVDArguments(gamma=0.5))  # fmt: skip
    with pytest.raises(ValueError, match="WithLossWeights"):
        trainer.train()


@pytest.mark.parametrize("remove_unused_columns", [True, False])
def test_with_loss_weights_refuses_the_stock_trainer_with_tvd_loss(tmp_path, remove_unused_columns):
    """Issue 22: the stock Trainer with compute_loss_func=TVDLoss never hands the weights to the loss (they go to the
    model's forward, which ignores them, or the column is removed first): refused at the first batch."""
    from transformers import Trainer

    from hf_tvd_loss import TVDLoss

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1,
                             remove_unused_columns=remove_unused_columns, save_strategy="no")  # fmt: skip
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model=model, args=args, train_dataset=_weighted_dataset(8, False),
                      data_collator=WithLossWeights(collator("llama")),
                      compute_loss_func=TVDLoss(TVDArguments(gamma=0.5)))  # fmt: skip
    with pytest.raises(ValueError, match="only the TVD trainers .* take loss_weights out of the batch"):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step was taken


def test_with_loss_weights_for_your_own_loss(tmp_path):
    """own_loss=True: the batch carries the weights, and token_weighted_cross_entropy(token_scale=...) applies them."""
    rows = list(_weighted_dataset(4, True))
    batch = WithLossWeights(collator("llama"), own_loss=True)(rows)
    assert batch["loss_weights"].shape == batch["labels"].shape
    with pytest.raises(ValueError, match="own_loss=True"):
        WithLossWeights(collator("llama"))(rows)
    logits = torch.randn(*batch["labels"].shape, VOCAB)
    rule = gamma_terms(0.5, 0.0)
    weighted, _ = token_weighted_cross_entropy(logits, batch["labels"], rule, token_scale=batch["loss_weights"])
    plain, _ = token_weighted_cross_entropy(logits, batch["labels"], rule)
    assert not torch.allclose(weighted, plain)
