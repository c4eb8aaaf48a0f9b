"""The part of summarization and translation that is the same: source → target pairs, an encoder-decoder,
beam-search generation, text metrics on the generated outputs, predictions written to a file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from datasets import Dataset
from transformers import Seq2SeqTrainingArguments

from .arguments import DataArguments, ModelArguments
from .base import MetricsFunction, Task
from .metrics import check_metric_package

if TYPE_CHECKING:
    from transformers import DataCollator, EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase
    from transformers.trainer_utils import PredictionOutput

__all__ = ["Seq2SeqDataArguments", "Seq2SeqTask"]


@dataclass
class Seq2SeqDataArguments(DataArguments):
    """Lengths and generation settings shared by summarization and translation."""

    max_source_length: int = field(default=512, metadata={"help": "Source tokens kept (longer inputs are truncated)."})
    max_target_length: int = field(
        default=128,
        metadata={"help": "Target tokens kept in training, and the generation length unless generation_max_length."},
    )
    source_prefix: str = field(
        default="", metadata={"help": "Text put before every source (e.g. 'summarize: ' for T5)."}
    )
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "Generation: n-grams of this size cannot repeat (0 = off; the paper uses 3)."}
    )
    length_penalty: float = field(
        default=1.0, metadata={"help": "Generation: beam-search length penalty (exponent of the length)."}
    )


Seq2SeqDataArgsT = TypeVar("Seq2SeqDataArgsT", bound=Seq2SeqDataArguments)


class Seq2SeqTask(Task[Seq2SeqDataArgsT, Seq2SeqTrainingArguments]):
    """Pairs of texts, an ``AutoModelForSeq2SeqLM``, generation-based metrics from :meth:`text_metrics`."""

    training_args_class = Seq2SeqTrainingArguments
    auto_model_class = "AutoModelForSeq2SeqLM"
    head_description = "sequence-to-sequence language-modelling head (an encoder-decoder such as BART, T5, Marian)"
    is_seq2seq = True
    # Fine-tuning a pretrained encoder-decoder: TaiLr's BART setting (lr 1e-4, constant, Adam β2 0.999) after a 3 %
    # linear warm-up (warmup_steps < 1 is a ratio) that keeps Adam's first, gradient-size-blind updates small; the
    # from-scratch inverse-sqrt schedule with its step-count warm-up and β2 0.98 (translation) do not apply.
    finetune_defaults: dict[str, Any] = {
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 0.03,
        "adam_beta2": 0.999,
    }
    # (package, metric name) of text_metrics: an optional dependency, checked before a run that evaluates
    metric_package: tuple[str, str] = ("", "")
    headline_metrics: tuple[str, ...] = ("loss", "perplexity", "accuracy", "ece", "gen_len")

    # --- hooks of the two tasks
    def pairs(self, batch: dict[str, list[Any]], data_args: Seq2SeqDataArgsT) -> tuple[list[Any], list[Any]]:
        """(sources, targets) of a batch of raw rows."""
        raise NotImplementedError

    def text_metrics(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        raise NotImplementedError

    # --- shared
    def check_args(
        self, data_args: Seq2SeqDataArgsT, model_args: ModelArguments, training_args: Seq2SeqTrainingArguments
    ) -> None:
        for name in ("max_source_length", "max_target_length"):
            value = getattr(data_args, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer ≥ 2, got {value!r}")
        if data_args.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be ≥ 0, got {data_args.no_repeat_ngram_size!r}")
        beams = training_args.generation_num_beams
        if beams is not None and beams < 1:
            raise ValueError(f"generation_num_beams must be ≥ 1, got {beams!r}")
        evaluates = training_args.do_eval or training_args.do_predict or training_args.eval_strategy != "no"
        if evaluates and self.metric_package[0]:
            check_metric_package(*self.metric_package)

    def max_length_needed(self, data_args: Seq2SeqDataArgsT) -> int:
        return max(data_args.max_source_length, data_args.max_target_length)

    def texts(self, dataset: Dataset, data_args: Seq2SeqDataArgsT) -> Iterator[str]:
        for start in range(0, len(dataset), 1000):
            sources, targets = self.pairs(dataset[start : start + 1000], data_args)
            yield from (text for text in sources + targets if isinstance(text, str) and text)

    def preprocess(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data_args: Seq2SeqDataArgsT,
        training_args: Seq2SeqTrainingArguments,
        split: str,
        *,
        dropped: dict[str, Any] | None = None,
    ) -> Dataset:  # drops nothing: over-long pairs are truncated
        def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            sources, targets = self.pairs(batch, data_args)
            # Rows with a missing or empty side are dropped (a batched map may return fewer rows).
            kept = [
                (data_args.source_prefix + s, t)
                for s, t in zip(sources, targets, strict=True)
                if isinstance(s, str) and s.strip() and isinstance(t, str) and t.strip()
            ]
            model_inputs = tokenizer([s for s, _ in kept], max_length=data_args.max_source_length, truncation=True)
            labels = tokenizer(
                text_target=[t for _, t in kept], max_length=data_args.max_target_length, truncation=True
            )
            model_inputs["labels"] = labels["input_ids"]
            return dict(model_inputs)

        return dataset.map(
            tokenize,
            batched=True,
            remove_columns=dataset.column_names,
            num_proc=data_args.preprocessing_num_workers,
            desc=f"tokenising {split}",
        )

    def data_collator(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> DataCollator:
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    def configure_model(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data_args: Seq2SeqDataArgsT,
        training_args: Seq2SeqTrainingArguments,
    ) -> None:
        # Generation settings live in the model's generation config, so that the saved model generates the same
        # way; Seq2SeqTrainer passes generation_max_length / generation_num_beams explicitly as well.
        if training_args.generation_max_length is None:
            training_args.generation_max_length = data_args.max_target_length
        generation = model.generation_config
        generation.max_length = training_args.generation_max_length
        generation.num_beams = training_args.generation_num_beams or 1
        generation.no_repeat_ngram_size = data_args.no_repeat_ngram_size
        generation.length_penalty = data_args.length_penalty
        generation.early_stopping = generation.num_beams > 1
        for name in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id"):
            value = getattr(model.config, name, None)
            if value is not None:
                setattr(generation, name, value)

    def _decode(self, tokenizer: PreTrainedTokenizerBase, ids: np.ndarray) -> list[str]:
        ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def compute_metrics(self, tokenizer: PreTrainedTokenizerBase, data_args: Seq2SeqDataArgsT) -> MetricsFunction:
        def compute(eval_prediction: EvalPrediction) -> dict[str, float]:
            generated = eval_prediction.predictions
            generated = generated[0] if isinstance(generated, tuple) else generated
            predictions = self._decode(tokenizer, generated)
            references = self._decode(tokenizer, eval_prediction.label_ids)
            metrics = self.text_metrics(predictions, references)
            lengths = (np.where(generated < 0, tokenizer.pad_token_id, generated) != tokenizer.pad_token_id).sum(-1)
            metrics["gen_len"] = float(np.mean(lengths))
            return metrics

        return compute

    def write_predictions(
        self, output: PredictionOutput, tokenizer: PreTrainedTokenizerBase, output_dir: str
    ) -> str | None:
        if output.predictions is None or output.predictions.ndim != 2:
            return None
        predictions = self._decode(tokenizer, output.predictions)
        references = self._decode(tokenizer, output.label_ids) if output.label_ids is not None else None
        path = os.path.join(output_dir, "generated_predictions.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for index, prediction in enumerate(predictions):
                row = {"prediction": prediction}
                if references is not None:
                    row["reference"] = references[index]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path
