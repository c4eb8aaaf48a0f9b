"""Data collation for the loss's own batch entries.

:class:`WithLossWeights` wraps any data collator so that a ``loss_weights`` dataset column reaches the loss: one float
per example, or one per label token (a list as long as that example's ``labels``). The TVD trainers keep the column
through ``remove_unused_columns``; the loss multiplies each token's loss by its weight and keeps the denominator.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["WithLossWeights"]


class WithLossWeights:
    """``collator(features)`` plus ``batch["loss_weights"]``: ``[batch]`` for per-example weights, or padded like
    ``batch["labels"]`` (zeros on padding) for per-token weights.

    Args:
        collator: the data collator to wrap (it never sees ``loss_weights``).
        padding_side: where ``collator`` pads ``labels`` (``"right"``/``"left"``); by default its tokenizer's
            ``padding_side``, else right.
    """

    def __init__(self, collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]], padding_side: str | None = None):
        self.collator = collator
        tokenizer = getattr(collator, "tokenizer", None) or getattr(collator, "processing_class", None)
        self.padding_side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        rows = [dict(f) for f in features]
        if not any("loss_weights" in row for row in rows):
            return self.collator(rows)
        if not all("loss_weights" in row for row in rows):
            raise ValueError("loss_weights is missing from some examples of the batch")
        weights = [row.pop("loss_weights") for row in rows]
        batch = dict(self.collator(rows))
        if all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights):
            batch["loss_weights"] = torch.tensor([float(w) for w in weights], dtype=torch.float32)
            return batch
        labels = batch.get("labels")
        if not torch.is_tensor(labels):
            raise ValueError("per-token loss_weights need the collated batch to have `labels`")
        padded = torch.zeros(labels.shape, dtype=torch.float32)
        for i, (w, row) in enumerate(zip(weights, rows)):
            if isinstance(w, numbers.Real):
                raise ValueError("loss_weights mixes per-example floats and per-token lists in one batch")
            w = torch.as_tensor(w, dtype=torch.float32)
            expected = len(row["labels"]) if "labels" in row else None
            if w.dim() != 1 or (expected is not None and w.numel() != expected) or w.numel() > labels.shape[-1]:
                raise ValueError(
                    f"per-token loss_weights of example {i} have {w.numel()} values for {expected} labels"
                )
            if self.padding_side == "right":
                padded[i, : w.numel()] = w
            else:
                padded[i, labels.shape[-1] - w.numel() :] = w
        batch["loss_weights"] = padded
        return batch
