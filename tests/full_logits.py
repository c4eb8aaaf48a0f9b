"""Token-level calibration sums from full logits: the judge the tests hold the loss's chunk-wise sums
(:class:`hf_tvd_loss.ops.common.PredictionStats`) and the study's per-example records to.

Not part of the library (nothing there needs calibration from full logits). It stays fp32 on purpose, like the
per-example records (``hf_tvd_loss.study.per_example``), which tests/test_stats.py matches to 1e-9; the float64
judge of the prediction metrics is :func:`hf_tvd_loss.ops.reference.prediction_metrics_reference`.
"""

from __future__ import annotations

import torch


def calibration_sums(
    logits: torch.Tensor, labels: torch.Tensor, *, shift: bool, num_bins: int = 15, ignore_index: int = -100
) -> torch.Tensor:
    """Per-bin sums for token-level calibration, to be added up over batches.

    Args:
        logits: ``[batch, seq_len, vocab]`` scores.
        labels: ``[batch, seq_len]`` reference tokens, ``ignore_index`` where not scored.
        shift: score ``logits[:, t]`` against ``labels[:, t+1]`` (causal LMs).
        num_bins: equal-width confidence bins over [0, 1].

    Returns:
        ``[3, num_bins]`` float64: token count, Σ confidence and Σ correct per bin.
    """
    with torch.no_grad():
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        mask = labels != ignore_index
        scored = logits[mask].float()
        targets = labels[mask]
        confidence, prediction = scored.softmax(dim=-1).max(dim=-1)
        correct = (prediction == targets).double()
        bins = (confidence * num_bins).long().clamp(max=num_bins - 1)
        sums = torch.zeros(3, num_bins, dtype=torch.float64, device=logits.device)
        sums[0].index_add_(0, bins, torch.ones_like(correct))
        sums[1].index_add_(0, bins, confidence.double())
        sums[2].index_add_(0, bins, correct)
        return sums
