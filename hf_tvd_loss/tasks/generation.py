"""Evaluation and prediction by generation for decoder-only models trained on prompt → target examples.

``Seq2SeqTrainer`` generates from the encoder's input; a decoder-only model must generate from the prompt alone.
:class:`PromptGenerationMixin` runs the teacher-forced evaluation first (loss, NLL, perplexity, calibration on the
reference targets), then, with ``predict_with_generate``, generates a completion for every example from its prompt
(the tokens before the first scored label), batched with left padding, greedy or beam search, stopping at the
end-of-sequence token, and scores the generated texts with the task's ``compute_metrics`` (ROUGE, BLEU/chrF).

Several processes each generate their shard; the completions are gathered with each example's dataset index, so the
result holds every example once, in dataset order, also where uneven shards repeat examples to even the batches.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .prompting import IGNORE_INDEX, LeftPaddingPromptCollator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch.utils.data import Dataset as TorchDataset

__all__ = ["PromptGenerationMixin", "generate_completions"]


class _Indexed(torch.utils.data.Dataset):
    """A dataset's examples with their position in it (``index``), for gathering completions in order."""

    def __init__(self, dataset: TorchDataset | Sequence[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[index]
        return {"input_ids": row["input_ids"], "labels": row["labels"], "index": index}


def _pad_rows(rows: list[list[int]], value: int = IGNORE_INDEX) -> np.ndarray:
    width = max([1, *(len(r) for r in rows)])
    return np.array([r + [value] * (width - len(r)) for r in rows], dtype=np.int64)


def generate_completions(
    model: Any,
    dataset: TorchDataset | Sequence[Any],
    *,
    pad_token_id: int,
    batch_size: int,
    accelerator: Any | None = None,
    synced_gpus: bool = False,
    **generate_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Completions generated from the prompts of tokenised prompt → target ``dataset`` examples, and their targets.

    Returns ``(generated, targets)``: ``[examples, longest]`` token ids, one row per example in dataset order, the
    prompt stripped, padded with -100 (``generated`` holds the new tokens up to and including the first
    end-of-sequence token). ``accelerator``: shard the examples over its processes and gather them back.
    ``generate_kwargs`` go to ``model.generate`` (with the model's generation config as the default).
    """
    loader = torch.utils.data.DataLoader(
        _Indexed(dataset), batch_size=batch_size, shuffle=False, collate_fn=LeftPaddingPromptCollator(pad_token_id)
    )
    device = next(model.parameters()).device
    if accelerator is not None and accelerator.num_processes > 1:
        loader = accelerator.prepare_data_loader(loader)
    found: dict[int, tuple[list[int], list[int]]] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            prompt = batch["input_ids"].to(device)
            with torch.no_grad():
                output = model.generate(
                    input_ids=prompt,
                    attention_mask=batch["attention_mask"].to(device),
                    pad_token_id=pad_token_id,
                    synced_gpus=synced_gpus,
                    **generate_kwargs,
                )
            new = output[:, prompt.shape[1] :].to(device)
            new = torch.where(_after_eos(new, generate_kwargs.get("eos_token_id"), model), IGNORE_INDEX, new)
            target, index = batch["target"].to(device), batch["index"].to(device)
            if accelerator is not None and accelerator.num_processes > 1:
                new = accelerator.pad_across_processes(new, dim=1, pad_index=IGNORE_INDEX)
                target = accelerator.pad_across_processes(target, dim=1, pad_index=IGNORE_INDEX)
                new, target, index = accelerator.gather((new, target, index))
            for row, row_target, i in zip(new.tolist(), target.tolist(), index.tolist(), strict=True):
                found.setdefault(int(i), ([t for t in row if t != IGNORE_INDEX],
                                          [t for t in row_target if t != IGNORE_INDEX]))  # fmt: skip
    finally:
        model.train(was_training)
    missing = [i for i in range(len(dataset)) if i not in found]  # type: ignore[arg-type]
    if missing:  # cannot happen with accelerate's even batches; never score a partial set silently
        raise RuntimeError(f"generation returned no completion for {len(missing)} examples (first: {missing[0]})")
    order = range(len(dataset))  # type: ignore[arg-type]
    return _pad_rows([found[i][0] for i in order]), _pad_rows([found[i][1] for i in order])


def _after_eos(tokens: torch.Tensor, eos: Any, model: Any) -> torch.Tensor:
    """Mask of the positions after the first end-of-sequence token of each row (and of generate's own padding)."""
    if eos is None:
        eos = model.generation_config.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids:
        return torch.zeros_like(tokens, dtype=torch.bool)
    is_eos = torch.isin(tokens, torch.tensor(ids, device=tokens.device))
    seen = torch.cumsum(is_eos.int(), dim=1)
    return (seen - is_eos.int()) > 0  # strictly after the first eos


class PromptGenerationMixin:
    """Teacher-forced evaluation, then generation from the prompts scored by ``compute_metrics``.

    ``predict_with_generate`` (``Seq2SeqTrainingArguments``) switches generation on; ``generation_max_length`` is
    the number of new tokens, ``generation_num_beams`` the beams; the other settings (no-repeat n-grams, length
    penalty, end-of-sequence tokens) come from the model's generation config. The teacher-forced part never keeps
    the ``[tokens, vocab]`` logits (``prediction_loss_only``); with ``compute_metrics`` wrapped by a caller (the
    loss study records per-example scores) the wrapper sees the generated ids and the target ids.
    """

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):  # type: ignore[no-untyped-def]  # noqa: E501
        from transformers import EvalPrediction
        from transformers.trainer_utils import EvalLoopOutput

        output = super().evaluation_loop(  # type: ignore[misc]
            dataloader, description, True, ignore_keys, metric_key_prefix
        )
        args = self.args  # type: ignore[attr-defined]
        if not getattr(args, "predict_with_generate", False) or prediction_loss_only:
            return output
        start = time.time()
        generated, targets = generate_completions(
            self.model,  # type: ignore[attr-defined]
            dataloader.dataset,
            pad_token_id=self.processing_class.pad_token_id,  # type: ignore[attr-defined]
            batch_size=args.per_device_eval_batch_size,
            accelerator=self.accelerator,  # type: ignore[attr-defined]
            synced_gpus=bool(self.is_fsdp_enabled or self.is_deepspeed_enabled),  # type: ignore[attr-defined]
            max_new_tokens=args.generation_max_length,
            num_beams=args.generation_num_beams or 1,
        )
        metrics = dict(output.metrics)
        if self.compute_metrics is not None:  # type: ignore[attr-defined]
            scores = self.compute_metrics(EvalPrediction(predictions=generated, label_ids=targets))  # type: ignore[attr-defined]
            metrics.update({f"{metric_key_prefix}_{k}": v for k, v in scores.items()})
        metrics[f"{metric_key_prefix}_generation_seconds_per_example"] = (time.time() - start) / max(1, len(targets))
        return EvalLoopOutput(predictions=generated, label_ids=targets, metrics=metrics, num_samples=len(targets))
