"""Data collation for the loss's own batch entries.

:class:`WithLossWeights` wraps any data collator so that a ``loss_weights`` dataset column reaches the loss: one float
per example, or one per label token (a list as long as that example's ``labels``). The TVD trainers keep the column
through ``remove_unused_columns``; the loss multiplies each token's loss by its weight and keeps the denominator.

Only a loss that takes ``batch["loss_weights"]`` out of the batch applies them: the TVD trainers do (they register
themselves as the collator's ``loss_reader``), and so does your own loop that passes them as ``token_scale`` to
:func:`hf_tvd_loss.token_weighted_cross_entropy` (``WithLossWeights(collator, own_loss=True)``). Anywhere else, e.g.
the stock ``Trainer`` with ``compute_loss_func=TVDLoss(...)`` (which never sees the batch; the model's forward takes
the weights as an unknown keyword and ignores them, or the stock Trainer removes the column first), the collator
refuses its first batch instead of letting the weights be dropped.
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
        own_loss: your own training loop applies ``batch["loss_weights"]`` (as ``token_scale``); without it the
            collator works only inside a TVD trainer, which sets ``loss_reader`` to its class name.
    """

    def __init__(
        self,
        collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]],
        padding_side: str | None = None,
        *,
        own_loss: bool = False,
    ):
        self.collator = collator
        # Who takes loss_weights out of the batch and applies them: a TVD trainer (its class name), your own loss.
        self.loss_reader: str | None = "your own loss" if own_loss else None
        tokenizer = getattr(collator, "tokenizer", None) or getattr(collator, "processing_class", None)
        self.padding_side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        if self.loss_reader is None:
            raise ValueError(
                "WithLossWeights is collating for a loss that would not apply the weights: only the TVD trainers "
                "(TVDTrainer, TVDSeq2SeqTrainer, TVDSFTTrainer) take loss_weights out of the batch. The stock "
                "Trainer with compute_loss_func=TVDLoss(...) passes them to the model's forward, which ignores them "
                "(or removes the column first, remove_unused_columns): use a TVD trainer, or pass own_loss=True "
                "if your own loop gives batch['loss_weights'] to token_weighted_cross_entropy(token_scale=...)"
            )
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
