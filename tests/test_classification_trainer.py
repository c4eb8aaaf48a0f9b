"""γ-CE on classifiers: sequence classification (BERT- and Llama-style), token classification, multiple choice.

The label layout is decided in one place (:func:`hf_tvd_loss.heads.label_layout`): a model without a
language-modelling head whose forward takes ``labels`` is a classifier, its ``logits`` ``[..., C]`` line up with
labels ``[...]`` and nothing is shifted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_trainer import assert_same_training, train_losses
from tiny import CLASSIFIERS, NUM_CLASSES, collator, tiny_dataset, tiny_model, train_tiny
from transformers import Trainer, TrainingArguments

from hf_tvd_loss import TVDArguments, TVDLoss, TVDTrainer, gamma_cross_entropy
from hf_tvd_loss.heads import label_layout, output_layout

TVD = dict(gamma=0.5, min_weight=0.1, label_smoothing=0.1)


def _bert_config(**extra):
    """A one-layer BERT config, dropout off, for the model classes tiny.py does not build."""
    from transformers import BertConfig

    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertConfig(**{**small, **extra})


def _args(tmp_path, **extra):
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True, **extra)


@pytest.mark.parametrize("family", CLASSIFIERS)
def test_layout_is_classification_and_gamma_zero_is_the_models_own_loss(family, tmp_path):
    """At γ = 0 compute_loss equals the model's own cross-entropy, in value and gradients, with the labels kept
    out of the model's call (no second loss)."""
    model = tiny_model(family)
    assert label_layout(model).kind == "classification" and not label_layout(model).shifts
    batch = collator(family)(list(tiny_dataset(family, n=6, seed=3)))
    own = model(**batch).loss
    own_grads = torch.autograd.grad(own, list(model.parameters()))
    seen: list[set] = []
    original = model.forward
    model.forward = lambda *a, **kw: (seen.append(set(kw)), original(*a, **kw))[1]
    trainer = TVDTrainer(model=model, args=_args(tmp_path), tvd_args=TVDArguments(gamma=0.0))
    ours = trainer.compute_loss(model, dict(batch))
    ours_grads = torch.autograd.grad(ours, list(model.parameters()))
    assert ours.item() == pytest.approx(own.item(), rel=1e-6)
    for a, b in zip(ours_grads, own_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert seen and all("labels" not in kwargs for kwargs in seen)


@pytest.mark.parametrize("family", ["bert_cls", "bert_tok"])
def test_training_matches_the_stock_trainer_at_gamma_zero(family, tmp_path):
    """γ = 0, b = 0, ε = 0 trains like the stock Trainer, step for step (the stock loss is a mean per micro-batch,
    so the comparison is without accumulation, where both normalise by the same count)."""
    ours = train_tiny(family, str(tmp_path / "ours"), per_device_batch=8, grad_accum=1, tvd=dict(gamma=0.0))
    stock = train_tiny(family, str(tmp_path / "stock"), per_device_batch=8, grad_accum=1, stock=True)
    assert_same_training(ours, stock, loss_rtol=1e-5, param_atol=1e-5, keys=("loss",))


@pytest.mark.parametrize("family", CLASSIFIERS)
def test_gradient_accumulation_is_exact(family, tmp_path):
    """Batch 16 = 4 × 4 accumulation for classifiers too (the token classifier's micro-batches score different
    numbers of tokens: a per-micro-batch mean would not be exact)."""
    full = train_tiny(family, str(tmp_path / "a"), per_device_batch=16, grad_accum=1, tvd=TVD)
    quarter = train_tiny(family, str(tmp_path / "b"), per_device_batch=4, grad_accum=4, tvd=TVD)
    assert_same_training(quarter, full)
    initial = tiny_model(family).state_dict()
    assert max((full[1][k] - initial[k]).abs().max().item() for k in initial) > 1e-3


def test_closed_form_loss_and_gradient_on_class_logits():
    """b = 0: the trained surrogate is sg(w)·(-log p) per example, whose logit gradient is that of the closed form
    -log(γ + (1-γ)p)/(1-γ): w·(softmax - onehot), w = p / (γ + (1-γ)p)."""
    torch.manual_seed(0)
    gamma = 0.3
    logits = torch.randn(7, NUM_CLASSES, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, -100, 2])
    ours = gamma_cross_entropy(logits, labels, gamma=gamma, shift_labels=False)
    (grad,) = torch.autograd.grad(ours, logits)
    kept = labels != -100
    p = logits.detach().softmax(-1)[kept].gather(1, labels[kept].unsqueeze(1)).squeeze(1)
    w = p / (gamma + (1 - gamma) * p)
    assert ours.item() == pytest.approx((w * -p.log()).mean().item(), rel=1e-6)
    closed = logits.detach().clone().requires_grad_(True)
    p_closed = closed.softmax(-1)[kept].gather(1, labels[kept].unsqueeze(1)).squeeze(1)
    (closed_grad,) = torch.autograd.grad((-torch.log(gamma + (1 - gamma) * p_closed) / (1 - gamma)).mean(), closed)
    torch.testing.assert_close(grad, closed_grad, rtol=1e-6, atol=1e-9)
    expected = torch.zeros_like(logits)
    expected[kept] = w.unsqueeze(1) * (
        logits.detach().softmax(-1)[kept] - F.one_hot(labels[kept], NUM_CLASSES).double()
    )
    torch.testing.assert_close(grad, expected / kept.sum(), rtol=1e-6, atol=1e-9)


def test_evaluation_reports_accuracy_nll_and_calibration_by_default(tmp_path):
    """evaluate() of a bare TVDTrainer on a classifier: accuracy (per example), NLL and calibration, exact over the
    whole set."""
    history, _, trainer = train_tiny("bert_cls", str(tmp_path), per_device_batch=8, grad_accum=1, tvd=TVD)
    assert not any("token_accuracy" in row or "accuracy" in row for row in history if "loss" in row)  # opt-in
    dataset = tiny_dataset("bert_cls", n=21, seed=4)
    metrics = trainer.evaluate(dataset)
    batch = collator("bert_cls")(list(dataset))
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    probs = logits.softmax(-1)
    accuracy = (probs.argmax(-1) == batch["labels"]).double().mean().item()
    nll = F.cross_entropy(logits, batch["labels"]).item()
    assert metrics["eval_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert metrics["eval_nll"] == pytest.approx(nll, rel=1e-5)
    assert metrics["eval_confidence"] == pytest.approx(probs.max(-1).values.mean().item(), rel=1e-5)
    assert 0.0 <= metrics["eval_ece"] <= 1.0 and "eval_entropy" in metrics
    assert "eval_token_accuracy" not in metrics


def test_tvd_loss_reads_the_layout_from_classifier_outputs(tmp_path):
    """TVDLoss as the stock Trainer's compute_loss_func trains a classifier like TVDTrainer; a causal shift asked
    for on a classifier's output is refused."""
    ours = train_tiny("bert_tok", str(tmp_path / "ours"), per_device_batch=8, grad_accum=1, tvd=TVD)
    settings = dict(
        per_device_train_batch_size=8, max_steps=3, learning_rate=1e-2, lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=1e9, logging_steps=1, save_strategy="no", seed=0, data_seed=0,
    )  # fmt: skip
    trainer = Trainer(
        model=tiny_model("bert_tok"), args=_args(tmp_path / "stock", **settings),
        train_dataset=tiny_dataset("bert_tok"), data_collator=collator("bert_tok"),
        compute_loss_func=TVDLoss(TVDArguments(**TVD)),
    )  # fmt: skip
    trainer.train()
    assert train_losses(ours[0]) == pytest.approx(train_losses(trainer.state.log_history), rel=1e-5)

    model = tiny_model("bert_cls")
    batch = collator("bert_cls")(list(tiny_dataset("bert_cls", n=3)))
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert output_layout(outputs).kind == "classification"
    with pytest.raises(ValueError, match=r"a classifier's output \(SequenceClassifierOutput\).*shift_labels=False"):
        TVDLoss(shift_labels=True)(outputs, batch["labels"])
    assert torch.isfinite(TVDLoss()(outputs, batch["labels"]))


def test_multiple_choice(tmp_path):
    """Multiple choice: logits [B, choices] for labels [B]; γ = 0 equals the model's own loss."""
    from transformers import BertForMultipleChoice

    torch.manual_seed(0)
    model = BertForMultipleChoice(_bert_config())
    batch = {"input_ids": torch.randint(3, 64, (4, 3, 7)), "labels": torch.tensor([0, 2, 1, 2])}
    trainer = TVDTrainer(model=model, args=_args(tmp_path), tvd_args=TVDArguments(gamma=0.0))
    with torch.no_grad():
        assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)


def test_loss_weights_schedule_and_nonfinite_policy_apply_to_classifiers(tmp_path):
    """Per-example loss_weights scale each example's term; the γ schedule and the non-finite guard work as for LMs."""
    from hf_tvd_loss import WithLossWeights

    model = tiny_model("bert_cls")
    batch = collator("bert_cls")(list(tiny_dataset("bert_cls", n=4)))
    trainer = TVDTrainer(model=model, args=_args(tmp_path), tvd_args=TVDArguments(gamma=0.0))
    with torch.no_grad():
        per_example = F.cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"], reduction="none")
        weights = torch.tensor([1.0, 0.0, 2.0, 0.5])
        weighted = trainer.compute_loss(model, {**batch, "loss_weights": weights})
    assert weighted.item() == pytest.approx((weights * per_example).sum().item() / 4, rel=1e-5)

    dataset = tiny_dataset("bert_cls", n=16).map(lambda row, i: {"loss_weights": 1.0 + (i % 2)}, with_indices=True)
    with pytest.raises(ValueError, match="loss_weights column, but the data collator"):  # a collator that drops them
        train_tiny("bert_cls", str(tmp_path / "w"), per_device_batch=4, grad_accum=1, dataset=dataset)
    collated = WithLossWeights(collator("bert_cls"), own_loss=True)(list(dataset.select(range(4))))
    assert collated["loss_weights"].tolist() == [1.0, 2.0, 1.0, 2.0]
    history, _, trainer = train_tiny(
        "bert_cls", str(tmp_path / "s"), per_device_batch=4, grad_accum=1, max_steps=4,
        tvd=dict(gamma=0.8, gamma_schedule="linear", gamma_schedule_ratio=1.0, nonfinite_policy="skip"),
    )  # fmt: skip
    gammas = [row["gamma"] for row in history if "loss" in row]
    assert gammas[0] == pytest.approx(0.0) and gammas[-1] > gammas[0]
    assert all(row["nonfinite_skipped_steps"] == 0 for row in history if "loss" in row)


def test_sequence_normalisation_counts_each_example(tmp_path):
    """normalization='sequence' on a sequence classifier: one example is one sequence (the same as 'token')."""
    model = tiny_model("bert_cls")
    batch = collator("bert_cls")(list(tiny_dataset("bert_cls", n=6)))
    losses = []
    for norm in ("token", "sequence"):
        trainer = TVDTrainer(model=model, args=_args(tmp_path), tvd_args=TVDArguments(gamma=0.5, normalization=norm))
        with torch.no_grad():
            losses.append(trainer.compute_loss(model.eval(), dict(batch)).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_classifiers_gamma_ce_cannot_train_are_refused_before_training(tmp_path):
    from transformers import BertForSequenceClassification, BertModel

    cases = [
        (BertForSequenceClassification(_bert_config(num_labels=1)), "regression model"),
        (BertForSequenceClassification(_bert_config(num_labels=3, problem_type="regression")), "regression"),
        (
            BertForSequenceClassification(_bert_config(num_labels=3, problem_type="multi_label_classification")),
            "multi-label classifier",
        ),
        (
            BertModel(_bert_config()),
            "BertModel has neither a language-modelling head .* nor a classification head",
        ),
    ]
    for model, message in cases:
        with pytest.raises(ValueError, match=message):
            TVDTrainer(model=model, args=_args(tmp_path), tvd_args=TVDArguments())
    with pytest.raises(
        ValueError, match="loss_impl='chunked' cannot be used with BertForSequenceClassification: it is a"
    ):
        TVDTrainer(model=tiny_model("bert_cls"), args=_args(tmp_path), tvd_args=TVDArguments(loss_impl="chunked"))
    trainer = TVDTrainer(model=tiny_model("bert_cls"), args=_args(tmp_path), tvd_args=TVDArguments())
    batch = collator("bert_cls")(list(tiny_dataset("bert_cls", n=2)))
    with pytest.raises(ValueError, match="labels must be an integer tensor"):  # float (regression) labels
        trainer.compute_loss(trainer.model, {**batch, "labels": batch["labels"].float()})
    # a datasets column of float labels is named at train(), before any step
    from datasets import Dataset

    rows = [{"input_ids": [1, 2, 3], "labels": float(i % 2)} for i in range(4)]
    trainer = TVDTrainer(model=tiny_model("bert_cls"), args=_args(tmp_path, max_steps=1),
                         train_dataset=Dataset.from_list(rows), tvd_args=TVDArguments())  # fmt: skip
    with pytest.raises(ValueError, match="'labels' column holds floats \\(float64\\).*is a classifier"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_custom_weight_rule_on_a_classifier(tmp_path):
    """A custom per-example weight rule (here w = sg(p^0.5)) applies to a classifier's examples as to tokens."""
    from hf_tvd_loss import probability_power_rule

    model = tiny_model("bert_cls").eval()
    batch = collator("bert_cls")(list(tiny_dataset("bert_cls", n=6)))
    trainer = TVDTrainer(model=model, args=_args(tmp_path), weight_rule=probability_power_rule(0.5))
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        log_p = model(input_ids=batch["input_ids"]).logits.double().log_softmax(-1)
    log_p_y = log_p.gather(1, batch["labels"].unsqueeze(1)).squeeze(1)
    assert ours.item() == pytest.approx((log_p_y.exp().sqrt() * -log_p_y).mean().item(), rel=1e-5)


def test_a_masked_lm_is_not_shifted(tmp_path):
    """A masked LM's position t predicts labels[t] (its own layout, not a causal LM's shift): γ = 0 equals its own loss."""
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(_bert_config()).eval()
    assert label_layout(model).kind == "masked" and not label_layout(model).shifts
    ids = torch.randint(3, 64, (3, 9))
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    batch = {"input_ids": ids, "labels": labels}
    trainer = TVDTrainer(model=model, args=_args(tmp_path), tvd_args=TVDArguments(gamma=0.0))
    with torch.no_grad():
        assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)
