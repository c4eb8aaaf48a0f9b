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

import json
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .prompting import IGNORE_INDEX, LeftPaddingPromptCollator

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from torch.utils.data import Dataset as TorchDataset
    from transformers import EvalPrediction, PreTrainedTokenizerBase
    from transformers.trainer_utils import PredictionOutput

__all__ = [
    "PromptGenerationMixin",
    "configure_prompt_generation",
    "decode_ids",
    "generate_completions",
    "generation_metrics",
    "write_generated_predictions",
]


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


def configure_prompt_generation(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_new_tokens: int | None,
    num_beams: int = 1,
    no_repeat_ngram_size: int = 0,
    length_penalty: float = 1.0,
) -> None:
    """A decoder-only model's generation config for evaluation: ``max_new_tokens`` after the prompt, greedy or beam
    search (a pretrained chat model's sampling settings are switched off: evaluation is deterministic), stopping at
    the tokenizer's eos (a chat template's end of turn where that is the eos, as SmolLM2's ``<|im_end|>``)."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = model.generation_config
    generation.max_new_tokens = max_new_tokens
    generation.max_length = None
    generation.num_beams = num_beams
    generation.no_repeat_ngram_size = no_repeat_ngram_size
    generation.length_penalty = length_penalty
    generation.early_stopping = num_beams > 1
    generation.do_sample = False
    generation.temperature = generation.top_p = generation.top_k = None
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id


def decode_ids(tokenizer: PreTrainedTokenizerBase, ids: np.ndarray) -> list[str]:
    """Texts of generated or reference token rows (-100 padding and special tokens dropped, stripped)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.where(ids < 0, pad, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generation_metrics(
    tokenizer: PreTrainedTokenizerBase, text_metrics: Callable[[list[str], list[str]], dict[str, float]]
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A ``compute_metrics`` for generated ids against reference ids: ``text_metrics(predictions, references)``
    on the decoded texts, plus ``gen_len`` (mean generated tokens, end-of-sequence included)."""

    def compute(eval_prediction: EvalPrediction) -> dict[str, float]:
        generated = eval_prediction.predictions
        generated = generated[0] if isinstance(generated, tuple) else generated
        metrics = text_metrics(decode_ids(tokenizer, generated), decode_ids(tokenizer, eval_prediction.label_ids))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        metrics["gen_len"] = float(np.mean((np.where(generated < 0, pad, generated) != pad).sum(-1)))
        return metrics

    return compute


def write_generated_predictions(
    output: PredictionOutput, tokenizer: PreTrainedTokenizerBase, output_dir: str
) -> str | None:
    """``generated_predictions.jsonl`` (``prediction`` and ``reference`` per example, in dataset order) of a
    prediction by generation; None when the output holds no generated ids."""
    if output.predictions is None or getattr(output.predictions, "ndim", 0) != 2:
        return None
    predictions = decode_ids(tokenizer, output.predictions)
    references = decode_ids(tokenizer, output.label_ids) if output.label_ids is not None else None
    path = os.path.join(output_dir, "generated_predictions.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for index, prediction in enumerate(predictions):
            row = {"prediction": prediction}
            if references is not None:
                row["reference"] = references[index]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


class PromptGenerationMixin:
    """Teacher-forced evaluation, then generation from the prompts scored by ``compute_metrics``.

    Generation runs when :attr:`prompt_generation` is set (``{"max_new_tokens": ..., "num_beams": ...}``; the
    scripts set it from ``--predict_with_generate``, ``--generation_max_length`` and ``--generation_num_beams``);
    the other settings (no-repeat n-grams, length penalty, end-of-sequence tokens) come from the model's generation
    config. The teacher-forced part never keeps
    the ``[tokens, vocab]`` logits (``prediction_loss_only``); with ``compute_metrics`` wrapped by a caller (the
    loss study records per-example scores) the wrapper sees the generated ids and the target ids.
    """

    prompt_generation: dict[str, Any] | None = None

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):  # type: ignore[no-untyped-def]  # noqa: E501
        from transformers import EvalPrediction
        from transformers.trainer_utils import EvalLoopOutput

        output = super().evaluation_loop(  # type: ignore[misc]
            dataloader, description, True, ignore_keys, metric_key_prefix
        )
        args, settings = self.args, self.prompt_generation  # type: ignore[attr-defined]
        if settings is None or prediction_loss_only:
            return output
        start = time.time()
        generated, targets = generate_completions(
            self.model,  # type: ignore[attr-defined]
            dataloader.dataset,
            pad_token_id=self.processing_class.pad_token_id,  # type: ignore[attr-defined]
            batch_size=args.per_device_eval_batch_size,
            accelerator=self.accelerator,  # type: ignore[attr-defined]
            synced_gpus=bool(self.is_fsdp_enabled or self.is_deepspeed_enabled),  # type: ignore[attr-defined]
            **settings,
        )
        metrics = dict(output.metrics)
        if self.compute_metrics is not None:  # type: ignore[attr-defined]
            scores = self.compute_metrics(EvalPrediction(predictions=generated, label_ids=targets))  # type: ignore[attr-defined]
            metrics.update({f"{metric_key_prefix}_{k}": v for k, v in scores.items()})
        metrics[f"{metric_key_prefix}_generation_seconds_per_example"] = (time.time() - start) / max(1, len(targets))
        return EvalLoopOutput(predictions=generated, label_ids=targets, metrics=metrics, num_samples=len(targets))
