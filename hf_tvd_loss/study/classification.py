"""What a classification run of the loss study measures after training, on the clean test split.

* Clean-test accuracy, macro-F1, NLL, ECE (15 equal-width bins of the top-1 probability) and mean confidence;
* the same NLL and ECE after **temperature scaling** fitted on the validation split (the standard post-hoc fix: a
  calibration claim has to beat cross-entropy plus temperature scaling, not cross-entropy alone);
* how much of the label noise the model **memorised**: its accuracy on the (noisy) training labels, and on the
  flipped examples the fraction it predicts as their noisy label and as their clean one;
* with evaluations during training and ``metric_for_best_model``, all of the above again (``selected_`` keys) for the
  model **selected on the validation split** (:class:`ValidationSelection`: the trainable parameters of the best
  evaluation, kept in memory, so no checkpoint is written).

Per-example rows (for paired bootstrap intervals over test examples, :mod:`hf_tvd_loss.study.stats`) are additive:
``test_correct`` ``[correct, 1]``, ``test_nll`` / ``test_nll_ts`` ``[NLL, 1]``, ``test_calibration`` /
``test_calibration_ts`` (per-bin count, confidence, correct), ``test_f1_stats`` (per-class tp, fp, fn).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from .calibration import calibration_report, fit_temperature

__all__ = ["CLASSIFICATION_BINS", "ValidationSelection", "classification_evaluation", "per_example_rows"]

CLASSIFICATION_BINS = 15  # Guo et al. 2017


def _logits_and_labels(trainer: Any, dataset: Any, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    output = trainer.predict(dataset, metric_key_prefix=prefix)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(output.label_ids, dtype=torch.long)


def per_example_rows(logits: torch.Tensor, labels: torch.Tensor, bins: int = CLASSIFICATION_BINS) -> dict[str, list]:
    """Additive per-example rows of accuracy, NLL, calibration and macro-F1's counts, for ``[N, C]`` logits."""
    log_probs = logits.double().log_softmax(-1)
    confidence, prediction = log_probs.max(-1)
    confidence = confidence.exp()
    correct = (prediction == labels).double()
    nll = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1  # bins ((m-1)/M, m/M], as the ECE's
    calibration = torch.zeros(len(labels), 3, bins, dtype=torch.float64)
    rows = torch.arange(len(labels))
    calibration[rows, 0, which] = 1.0
    calibration[rows, 1, which] = confidence
    calibration[rows, 2, which] = correct
    classes = logits.shape[-1]
    predicted, actual = torch.nn.functional.one_hot(prediction, classes), torch.nn.functional.one_hot(labels, classes)
    f1 = torch.cat([predicted * actual, predicted * (1 - actual), (1 - predicted) * actual], dim=1).double()
    ones = torch.ones_like(nll)
    return {
        "test_correct": torch.stack([correct, ones], 1).tolist(),
        "test_nll": torch.stack([nll, ones], 1).tolist(),
        "test_calibration": calibration.reshape(len(labels), -1).tolist(),
        "test_f1_stats": f1.tolist(),
    }


def classification_evaluation(trainer: Any, datasets: dict[str, Any], noisy_train: Any | None) -> tuple[dict, dict]:
    """``(metrics, per_example)`` of a trained classifier: clean test, temperature scaling fitted on validation, and
    memorisation of the training labels (``noisy_train``: the training set as trained on, with ``clean_label`` and
    ``label_flipped`` when noise was applied)."""
    if "test" not in datasets or "validation" not in datasets:
        raise ValueError("the classification study needs validation and test splits (do_eval and do_predict)")
    val_logits, val_labels = _logits_and_labels(trainer, datasets["validation"], "study_validation")
    test_logits, test_labels = _logits_and_labels(trainer, datasets["test"], "study_test")
    temperature = fit_temperature(val_logits, val_labels)
    report = calibration_report(test_logits, test_labels, temperature, bins=CLASSIFICATION_BINS)
    per_example = per_example_rows(test_logits, test_labels)
    scaled = per_example_rows(test_logits / temperature, test_labels)
    per_example["test_nll_ts"] = scaled["test_nll"]
    per_example["test_calibration_ts"] = scaled["test_calibration"]
    from .stats import metric_from_examples

    metrics = {
        "test_accuracy": report["accuracy"],
        "test_macro_f1": metric_from_examples("test_macro_f1", per_example),
        "test_nll": report["nll"],
        "test_ece": report["ece"],
        "test_confidence": report["confidence"],
        "test_nll_ts": report["scaled_nll"],
        "test_ece_ts": report["scaled_ece"],
        "temperature": temperature,
        "validation_accuracy": float((val_logits.argmax(-1) == val_labels).double().mean()),
    }
    if noisy_train is not None:
        train_logits, train_labels = _logits_and_labels(trainer, noisy_train, "study_train")
        predicted = train_logits.argmax(-1)
        metrics["train_noisy_accuracy"] = float((predicted == train_labels).double().mean())
        if "label_flipped" in noisy_train.column_names:
            flipped = torch.as_tensor(noisy_train["label_flipped"], dtype=torch.bool)
            clean = torch.as_tensor(noisy_train["clean_label"], dtype=torch.long)
            if bool(flipped.any()):
                metrics["train_flipped_memorised"] = float(
                    (predicted[flipped] == train_labels[flipped]).double().mean()
                )
                metrics["train_flipped_recovered"] = float((predicted[flipped] == clean[flipped]).double().mean())
    return metrics, per_example


class ValidationSelection(TrainerCallback):
    """Keeps, in memory, the trainable parameters of the model at the evaluation with the best
    ``metric_for_best_model`` (transformers' ``greater_is_better``; the first of equal values), so that the study can
    judge the validation-selected model beside the last one without writing a checkpoint per evaluation. Parameters
    that do not train (frozen blocks) are the same at every step and are not copied.
    """

    def __init__(self, model: Any, metric: str, greater_is_better: bool) -> None:
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.greater_is_better = greater_is_better
        self.parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.best: float | None = None
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.step: int | None = None
        self.epoch: float | None = None

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        self.observe(state, metrics or {})

    def observe(self, state: Any, metrics: dict) -> None:
        if self.metric not in metrics:
            raise ValueError(
                f"selecting on validation: the evaluation logged no {self.metric} (metric_for_best_model); it logged "
                + ", ".join(sorted(metrics))
            )
        value = float(metrics[self.metric])
        better = self.best is None or (value > self.best if self.greater_is_better else value < self.best)
        if better:
            self.best, self.step, self.epoch = value, int(state.global_step), state.epoch
            self.snapshot = {name: p.detach().clone() for name, p in self.parameters.items()}

    def restore(self) -> None:
        """Put the selected parameters into the model (the last ones are lost)."""
        if self.snapshot is None:
            raise ValueError("selecting on validation: no evaluation ran during training")
        with torch.no_grad():
            for name, p in self.parameters.items():
                p.copy_(self.snapshot[name])
