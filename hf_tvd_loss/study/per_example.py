"""Per-example evaluation records of a study run, for paired bootstrap intervals (:mod:`hf_tvd_loss.study.stats`).

:class:`ExampleRecorder` attaches to a task trainer (from :func:`hf_tvd_loss.tasks.run.build`) without changing
its class: during the evaluation loop it keeps, for every evaluation example in order,

* ``nll``: ``[Σ token NLL, token count]`` of the teacher-forced reference tokens,
* ``calibration``: per-example calibration sums ``[count per bin..., Σ confidence per bin..., Σ correct per bin...]``
  (the same 15 equal-width bins of the top-1 probability as ``eval_ece``),
* for generation tasks, from the decoded outputs: ``bleu_stats`` / ``chrf_stats`` (sacrebleu's per-sentence
  sufficient statistics; their sum gives corpus BLEU / chrF) or ``rougeL`` (``[F-measure, 1]``).

Only single-process evaluation is recorded (with several processes the order of gathered examples is not the
dataset's); :meth:`ExampleRecorder.record` then returns None.
"""

from __future__ import annotations

from typing import Any

import torch

from ..ops.common import CALIBRATION_BINS

__all__ = ["ExampleRecorder", "per_example_token_stats"]


def per_example_token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: bool,
    num_bins: int = CALIBRATION_BINS,
    ignore_index: int = -100,
) -> tuple[list[list[float]], list[list[float]]]:
    """Per row of the batch: ``[Σ NLL, count]`` and flattened ``[3 × num_bins]`` calibration sums."""
    with torch.no_grad():
        if labels.dim() == 1:  # a classifier's: one label per example, its logits [B, C]
            logits, labels = logits.unsqueeze(1), labels.unsqueeze(1)
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        batch = labels.shape[0]
        mask = labels != ignore_index
        log_probs = logits.float().log_softmax(dim=-1)
        safe = labels.masked_fill(~mask, 0)
        nll = -log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        nll = (nll * mask).double().sum(-1)
        count = mask.double().sum(-1)
        confidence, prediction = log_probs.max(dim=-1)
        confidence = confidence.exp().double()
        correct = (prediction == labels).double()
        bins = (confidence * num_bins).long().clamp(max=num_bins - 1)
        rows = torch.arange(batch, device=labels.device).unsqueeze(-1).expand_as(bins)
        index = (rows * num_bins + bins)[mask]
        sums = torch.zeros(3, batch * num_bins, dtype=torch.float64, device=labels.device)
        sums[0].index_add_(0, index, torch.ones_like(confidence[mask]))
        sums[1].index_add_(0, index, confidence[mask])
        sums[2].index_add_(0, index, correct[mask])
        calibration = sums.view(3, batch, num_bins).permute(1, 0, 2).reshape(batch, 3 * num_bins)
        nll_rows = torch.stack([nll, count], dim=-1)
        return nll_rows.cpu().tolist(), calibration.cpu().tolist()


class ExampleRecorder:
    """Collects per-example records of the ``eval`` evaluation loops of ``trainer`` (the last one is kept)."""

    def __init__(
        self, trainer: Any, task: Any, tokenizer: Any, data_args: Any, num_bins: int = CALIBRATION_BINS
    ) -> None:
        self.trainer, self.task, self.tokenizer, self.data_args = trainer, task, tokenizer, data_args
        self.num_bins = num_bins
        self.active = False
        self.current: dict[str, list[Any]] = {}
        self.last: dict[str, list[Any]] | None = None
        self._wrap()

    def _wrap(self) -> None:
        trainer = self.trainer
        compute_loss = trainer.compute_loss
        evaluation_loop = trainer.evaluation_loop
        compute_metrics = trainer.compute_metrics
        recorder = self

        def recording_compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            if not recorder.active or model.training or "labels" not in inputs:
                return compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = compute_loss(model, inputs, True, num_items_in_batch)
            logits = outputs.get("logits") if isinstance(outputs, dict) else outputs[0]
            if logits is not None:
                from ..heads import label_layout

                shift = label_layout(model).shifts
                nll, calibration = per_example_token_stats(
                    logits, inputs["labels"], shift=shift, num_bins=recorder.num_bins
                )
                recorder.current.setdefault("nll", []).extend(nll)
                recorder.current.setdefault("calibration", []).extend(calibration)
            return (loss, outputs) if return_outputs else loss

        def recording_evaluation_loop(dataloader, description, prediction_loss_only=None, ignore_keys=None,
                                      metric_key_prefix="eval"):  # type: ignore[no-untyped-def]  # fmt: skip
            recorder.active = metric_key_prefix == "eval" and trainer.args.world_size == 1
            recorder.current = {}
            try:
                output = evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
            finally:
                if recorder.active:
                    recorder.last = recorder.current
                recorder.active = False
            return output

        def recording_compute_metrics(eval_prediction: Any) -> dict[str, float]:
            metrics = compute_metrics(eval_prediction)
            if recorder.active:
                recorder.current.update(recorder._text_rows(eval_prediction))
            return metrics

        trainer.compute_loss = recording_compute_loss
        trainer.evaluation_loop = recording_evaluation_loop
        if compute_metrics is not None:
            trainer.compute_metrics = recording_compute_metrics

    def _text_rows(self, eval_prediction: Any) -> dict[str, list[Any]]:
        if self.task.name not in ("translation", "summarization"):
            return {}
        from ..tasks.generation import decode_ids as decode

        generated = eval_prediction.predictions
        generated = generated[0] if isinstance(generated, tuple) else generated
        if generated is None or getattr(generated, "ndim", 0) != 2:
            return {}
        predictions = decode(self.tokenizer, generated)
        references = decode(self.tokenizer, eval_prediction.label_ids)
        if self.task.name == "translation":
            from sacrebleu.metrics import BLEU, CHRF

            return {
                "bleu_stats": [
                    list(map(float, s)) for s in BLEU()._extract_corpus_statistics(predictions, [references])
                ],
                "chrf_stats": [
                    list(map(float, s)) for s in CHRF()._extract_corpus_statistics(predictions, [references])
                ],
            }
        if self.task.name == "summarization":
            from rouge_score import rouge_scorer

            scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
            return {
                "rougeL": [
                    [scorer.score(r.replace(". ", ".\n"), p.replace(". ", ".\n"))["rougeL"].fmeasure, 1.0]
                    for p, r in zip(predictions, references, strict=True)
                ]
            }
        return {}

    def record(self) -> dict[str, list[Any]] | None:
        """The last evaluation's per-example rows (None when none was recorded)."""
        if not self.last:
            return None
        sizes = {len(v) for v in self.last.values()}
        if len(sizes) != 1:  # e.g. a partial batch mismatch: refuse rather than pair the wrong examples
            return None
        return self.last
