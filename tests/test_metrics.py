"""Prediction metrics computed a chunk at a time inside the loss (token_accuracy, entropy, floor fraction, the
calibration sums), in the logits and the chunked paths, in the ops and through the trainers."""

from __future__ import annotations

import pytest
import torch
from full_logits import calibration_sums
from test_trainer import _LargestTensor
from tiny import VOCAB, collator, tiny_dataset, tiny_model, train_tiny
from transformers import Seq2SeqTrainingArguments, TrainingArguments

from hf_tvd_loss import TVDArguments
from hf_tvd_loss.ops import gamma_cross_entropy_with_stats, linear_gamma_cross_entropy_with_stats
from hf_tvd_loss.ops.common import calibration_from_sums
from hf_tvd_loss.ops.reference import prediction_metrics_reference
from hf_tvd_loss.tasks.trainers import TaskSeq2SeqTrainer, TaskTrainer

V, D = 53, 12
GCE = dict(gamma=0.3, min_weight=0.2)


def _inputs(seed, dtype=torch.float32, shape=(3, 11)):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(*shape, D, generator=g) * 2).to(dtype)
    weight = (torch.randn(V, D, generator=g) * 0.5).to(dtype)
    labels = torch.randint(0, V, shape, generator=g)
    labels[torch.rand(shape, generator=g) < 0.3] = -100
    return hidden, weight, labels


def _check_against_reference(stats, ref, *, rtol):
    assert stats.num_tokens.item() == ref["num_tokens"].item()
    assert stats.correct_sum.item() == ref["correct_sum"].item()
    assert stats.floor_count.item() == ref["floor_count"].item()
    assert stats.entropy_sum.item() == pytest.approx(ref["entropy_sum"].item(), rel=rtol)
    assert torch.equal(stats.calibration[0].double(), ref["calibration"][0])  # same bins
    assert torch.equal(stats.calibration[2].double(), ref["calibration"][2])
    torch.testing.assert_close(stats.calibration[1].double(), ref["calibration"][1], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", ["plain", "shift_softcap_chunks"])
def test_metrics_equal_float64_reference_in_both_paths(reduction, case):
    hidden, weight, labels = _inputs(0)
    shift = case != "plain"
    softcap = 3.0 if case != "plain" else None
    logits = hidden @ weight.T
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    ref = prediction_metrics_reference(logits.double(), labels, shift_labels=shift, **GCE)
    assert 0 < ref["correct_sum"] < ref["num_tokens"] and 0 < ref["floor_count"] < ref["num_tokens"]  # not trivial
    common = dict(shift_labels=shift, reduction=reduction, extra_metrics=True, label_smoothing=0.1, **GCE)
    loss_l, stats_l = gamma_cross_entropy_with_stats(logits.clone().requires_grad_(), labels, **common)
    loss_c, stats_c = linear_gamma_cross_entropy_with_stats(
        hidden.clone().requires_grad_(), weight.clone().requires_grad_(), labels, final_logit_softcapping=softcap,
        chunk_size=4 if shift else None, **common,
    )  # fmt: skip
    for stats in (stats_l, stats_c):
        _check_against_reference(stats, ref, rtol=1e-5)
    # the metrics change nothing in the loss
    plain_l, _ = gamma_cross_entropy_with_stats(logits, labels, **{**common, "extra_metrics": False})
    assert torch.equal(loss_l.detach(), plain_l)


def test_metrics_off_by_default_and_loss_unchanged():
    hidden, weight, labels = _inputs(1)
    _, stats = linear_gamma_cross_entropy_with_stats(hidden, weight, labels, gamma=0.3)
    assert stats.correct_sum is None and stats.entropy_sum is None and stats.calibration is None
    assert stats.floor_count is None  # b = 0: no floor to count
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    a, _ = linear_gamma_cross_entropy_with_stats(h1, w1, labels, chunk_size=5, **GCE)
    b, _ = linear_gamma_cross_entropy_with_stats(h2, w2, labels, chunk_size=5, extra_metrics=True, **GCE)
    a.backward()
    b.backward()
    assert torch.equal(a, b) and torch.equal(h1.grad, h2.grad) and torch.equal(w1.grad, w2.grad)


def test_bf16_metrics_close_to_reference():
    hidden, weight, labels = _inputs(2, torch.bfloat16)
    logits = hidden @ weight.T  # bf16, what the model computes
    ref = prediction_metrics_reference(logits, labels, **GCE)
    for _, stats in (
        gamma_cross_entropy_with_stats(logits, labels, extra_metrics=True, **GCE),
        linear_gamma_cross_entropy_with_stats(hidden, weight, labels, extra_metrics=True, chunk_size=7, **GCE),
    ):
        _check_against_reference(stats, ref, rtol=1e-5)


# The full-logits judge (tests/full_logits.py) by hand, and calibration_from_sums.
def test_calibration_matches_hand_computation():
    # Two scored tokens of a seq2seq batch: confidences 0.7 (correct) and 0.9 (wrong); one ignored position.
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.05, 0.05, 0.9], [0.3, 0.3, 0.4]]])
    labels = torch.tensor([[0, 1, -100]])
    sums = calibration_sums(probs.log(), labels, shift=False, num_bins=10)
    assert sums[0].sum() == 2
    metrics = calibration_from_sums(sums)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["confidence"] == pytest.approx(0.8)
    assert metrics["ece"] == pytest.approx((abs(1 - 0.7) + abs(0 - 0.9)) / 2)


def test_calibration_shift_for_causal_models():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    shifted = calibration_sums(logits, labels, shift=True)
    manual = calibration_sums(logits[:, :-1], labels[:, 1:], shift=False)
    assert torch.equal(shifted, manual) and shifted[0].sum() == 8
    assert calibration_from_sums(torch.zeros(3, 10)) == {}


def test_calibration_sums_equal_the_full_logits_version():
    hidden, weight, labels = _inputs(3, shape=(4, 9))
    logits = (hidden @ weight.T).reshape(4, 9, V)
    full = calibration_sums(logits, labels, shift=True)
    _, stats = linear_gamma_cross_entropy_with_stats(hidden, weight, labels, shift_labels=True, extra_metrics=True,
                                                     gamma=0.0)  # fmt: skip
    torch.testing.assert_close(stats.calibration.double(), full, rtol=1e-6, atol=1e-6)
    assert calibration_from_sums(stats.calibration) == pytest.approx(calibration_from_sums(full), rel=1e-6)


# ---------------------------------------------------------------------------------------------- trainers
@pytest.mark.parametrize("impl", ["logits", "chunked"])
def test_trainer_logs_extra_metrics_in_training_and_evaluation(tmp_path, impl):
    tvd = dict(gamma=0.5, min_weight=0.3, extra_metrics=True, loss_impl=impl)
    history, _, trainer = train_tiny("llama", str(tmp_path), per_device_batch=4, grad_accum=2, tvd=tvd)
    rows = [row for row in history if "loss" in row]
    keys = {"token_accuracy", "entropy", "tvd_weight_floor_fraction", "ece", "confidence"}
    assert rows and all(keys <= set(row) for row in rows)
    dataset = tiny_dataset("llama", n=12, seed=1)
    metrics = trainer.evaluate(dataset)
    # exact, against the float64 reference on the model's logits of the whole set in one batch
    batch = collator("llama")(list(dataset))
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = prediction_metrics_reference(logits, batch["labels"], shift_labels=True, gamma=0.5, min_weight=0.3)
    count = ref["num_tokens"].item()
    assert metrics["eval_token_accuracy"] == pytest.approx(ref["correct_sum"].item() / count, rel=1e-9)
    assert metrics["eval_entropy"] == pytest.approx(ref["entropy_sum"].item() / count, rel=1e-5)
    assert metrics["eval_tvd_weight_floor_fraction"] == pytest.approx(ref["floor_count"].item() / count, rel=1e-9)
    expected = calibration_from_sums(ref["calibration"])
    assert metrics["eval_ece"] == pytest.approx(expected["ece"], rel=1e-5)
    assert metrics["eval_confidence"] == pytest.approx(expected["confidence"], rel=1e-5)


def test_trainer_without_extra_metrics_logs_only_the_cheap_ones(tmp_path):
    history, _, _ = train_tiny("llama", str(tmp_path), per_device_batch=4, grad_accum=1, max_steps=2,
                               tvd=dict(gamma=0.5, min_weight=0.3))  # fmt: skip
    row = next(row for row in history if "loss" in row)
    assert "tvd_weight_floor_fraction" in row and "token_accuracy" not in row and "entropy" not in row


def _task_trainer(tmp_path, impl, model=None, batch=4):
    training = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True,
                                 per_device_eval_batch_size=batch)  # fmt: skip
    return TaskTrainer(model=model if model is not None else tiny_model("llama"), args=training,
                       data_collator=collator("llama"), tvd_args=TVDArguments(gamma=0.1, loss_impl=impl))  # fmt: skip


def test_task_calibration_same_in_both_paths_and_equal_to_full_logits(tmp_path):
    dataset = tiny_dataset("llama", n=10, seed=3)
    results = {impl: _task_trainer(tmp_path / impl, impl).evaluate(dataset) for impl in ("logits", "chunked")}
    for key in ("eval_loss", "eval_ece", "eval_confidence", "eval_token_accuracy", "eval_entropy"):
        assert results["chunked"][key] == pytest.approx(results["logits"][key], rel=1e-5), key
    batch = collator("llama")(list(dataset))
    with torch.no_grad():
        logits = (
            tiny_model("llama").eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        )
    expected = calibration_from_sums(calibration_sums(logits, batch["labels"], shift=True))
    for name, value in expected.items():
        key = "eval_token_accuracy" if name == "accuracy" else f"eval_{name}"  # the trainer's (TRL's) name
        assert results["chunked"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert "eval_accuracy" not in results["chunked"]  # one name per quantity


def test_chunked_evaluation_builds_no_full_logits(tmp_path, monkeypatch):
    import hf_tvd_loss.ops.common as common

    vocab = 8 * VOCAB
    monkeypatch.setattr(common, "CHUNK_ELEMENTS", 4 * vocab)  # chunks of 4 token rows
    config = tiny_model("llama").config
    config.vocab_size = vocab
    dataset = tiny_dataset("llama", n=8, seed=4)
    tokens = 8 * max(len(row["input_ids"]) for row in dataset)  # one evaluation batch of 8 rows, padded
    largest = {}
    for impl in ("logits", "chunked"):
        torch.manual_seed(0)
        trainer = _task_trainer(tmp_path / impl, impl, model=type(tiny_model("llama"))(config), batch=8)
        with _LargestTensor() as spy:
            metrics = trainer.evaluate(dataset)
        largest[impl] = spy.largest
        assert {"eval_ece", "eval_token_accuracy", "eval_loss"} <= set(metrics)
    assert largest["logits"] >= tokens * vocab  # the spy sees full logits when they exist
    # nothing [tokens, vocab]-sized: the largest tensor is the [vocab, hidden] embedding
    assert largest["chunked"] == vocab * config.hidden_size < tokens * vocab / 2


def test_seq2seq_eval_loss_and_calibration_same_with_predict_with_generate(tmp_path):
    dataset = tiny_dataset("t5", n=8, seed=5)

    def evaluate(generate: bool, impl: str) -> dict:
        args = Seq2SeqTrainingArguments(
            output_dir=str(tmp_path / f"{generate}{impl}"), per_device_eval_batch_size=4, report_to="none",
            use_cpu=True, predict_with_generate=generate, generation_max_length=5, disable_tqdm=True,
        )  # fmt: skip
        trainer = TaskSeq2SeqTrainer(
            model=tiny_model("t5"), args=args, data_collator=collator("t5"),
            tvd_args=TVDArguments(gamma=0.5, min_weight=0.2, loss_impl=impl),
            compute_metrics=lambda p: {"rows": float(len(p.predictions))},
        )  # fmt: skip
        return trainer.evaluate(dataset)

    reference = evaluate(False, "logits")
    for generate, impl in ((True, "chunked"), (False, "chunked"), (True, "logits")):
        result = evaluate(generate, impl)
        for key in ("eval_loss", "eval_nll", "eval_ece", "eval_token_accuracy", "eval_tvd_weight_floor_fraction"):
            assert result[key] == pytest.approx(reference[key], rel=1e-5), (generate, impl, key)
