"""The trainers of the task scripts: the package's TVD trainers plus token-level calibration in every evaluation."""

from __future__ import annotations

import torch

from ..trainer import TVDSeq2SeqTrainer, TVDTrainer
from .metrics import calibration_from_sums, calibration_sums

__all__ = ["CalibrationMixin", "TaskSeq2SeqTrainer", "TaskTrainer"]


class CalibrationMixin:
    """Adds token-level calibration (``ece``, ``confidence``, ``accuracy``) to every evaluation and prediction.

    The teacher-forced logits on the reference tokens are those of the γ-CE evaluation loss: ``compute_loss`` is
    called by the evaluation loop with and without ``predict_with_generate``, so the sums are collected there
    and reduced over all processes after the loop.
    """

    calibration_bins = 10

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        if model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # type: ignore[misc]
        # calibration needs the logits: evaluate through the logits path (TODO chunk-wise sums)
        self._tvd_needs_logits = True
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)  # type: ignore[misc]
        logits = outputs.get("logits") if isinstance(outputs, dict) else outputs[0]
        encoder_decoder = bool(getattr(self.accelerator.unwrap_model(model).config, "is_encoder_decoder", False))
        sums = calibration_sums(logits, inputs["labels"], shift=not encoder_decoder, num_bins=self.calibration_bins)
        self._calibration = sums if getattr(self, "_calibration", None) is None else self._calibration + sums
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):  # type: ignore[no-untyped-def]  # noqa: E501
        self._calibration = None
        output = super().evaluation_loop(  # type: ignore[misc]
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        sums = self._calibration
        if sums is None:
            sums = torch.zeros(3, self.calibration_bins, dtype=torch.float64)
        self._calibration = None
        if self.args.world_size > 1:  # a collective: every process runs the evaluation loop
            sums = self.accelerator.gather(sums.to(self.args.device).unsqueeze(0)).sum(0)
        # kept for reliability diagrams (scripts/compare_losses.py): [count, Σ confidence, Σ correct] per bin
        self.last_calibration_sums = sums.cpu()
        for name, value in calibration_from_sums(self.last_calibration_sums).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output


class TaskTrainer(CalibrationMixin, TVDTrainer):
    """:class:`~hf_tvd_loss.TVDTrainer` with calibration metrics."""


class TaskSeq2SeqTrainer(CalibrationMixin, TVDSeq2SeqTrainer):
    """:class:`~hf_tvd_loss.TVDSeq2SeqTrainer` with calibration metrics."""
