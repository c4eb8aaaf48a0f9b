"""The trainers of the task scripts: the package's TVD trainers plus token-level calibration in every evaluation."""

from __future__ import annotations

import torch

from ..ops.common import CALIBRATION_BINS
from ..trainer import TVDSeq2SeqTrainer, TVDTrainer
from .generation import PromptGenerationMixin

__all__ = ["CalibrationMixin", "TaskGenerationTrainer", "TaskSeq2SeqTrainer", "TaskTrainer"]


class CalibrationMixin:
    """Token-level calibration (``ece``, ``confidence``) with ``token_accuracy`` and ``entropy`` in every evaluation
    and prediction, each under one name.

    The sums (per bin of top-1 probability: count, Σ confidence, Σ correct) are computed by the γ-CE evaluation
    loss itself, a chunk of tokens at a time (``TVDLossMixin.tvd_eval_extra_metrics``), on the teacher-forced
    reference tokens, with or without ``predict_with_generate`` and with either ``loss_impl``: with
    ``loss_impl="chunked"`` evaluation never builds the ``[tokens, vocab]`` logits. They are summed over all
    processes with the loss's other sums, and the trainer's evaluation reports them; this mixin only switches them
    on and keeps the last evaluation's bins (``last_calibration_sums``) for reliability diagrams.
    """

    tvd_eval_extra_metrics = True
    calibration_bins = CALIBRATION_BINS

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):  # type: ignore[no-untyped-def]  # noqa: E501
        self.tvd_calibration_sums.pop("eval", None)  # type: ignore[attr-defined]
        output = super().evaluation_loop(  # type: ignore[misc]
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        sums = self.tvd_calibration_sums.get("eval")  # type: ignore[attr-defined]
        if sums is None:
            sums = torch.zeros(3, self.calibration_bins, dtype=torch.float64)
        # kept for reliability diagrams (scripts/compare_losses.py): [count, Σ confidence, Σ correct] per bin
        self.last_calibration_sums = sums.cpu()
        return output


class TaskTrainer(CalibrationMixin, TVDTrainer):
    """:class:`~hf_tvd_loss.TVDTrainer` with calibration metrics."""


class TaskSeq2SeqTrainer(CalibrationMixin, TVDSeq2SeqTrainer):
    """:class:`~hf_tvd_loss.TVDSeq2SeqTrainer` with calibration metrics."""


class TaskGenerationTrainer(PromptGenerationMixin, CalibrationMixin, TVDTrainer):
    """A decoder-only model on prompt → target pairs: :class:`TaskTrainer` whose evaluation also generates from the
    prompts and scores the completions (:class:`~hf_tvd_loss.tasks.generation.PromptGenerationMixin`)."""
