"""Causal language modelling: a text column concatenated and cut into blocks of ``block_size`` tokens.

Metrics: perplexity (from the plain NLL the trainer logs next to the γ-CE objective) and token-level
calibration. Default (no options): a tiny GPT-2 built from a config on a synthetic news corpus, TaiLr's
language-modelling setting γ=1e-7, b=0.2, ε=0 (``configs/language_modeling/tailr.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

from datasets import Dataset
from transformers import TrainingArguments

if TYPE_CHECKING:
    from transformers import DataCollator, PreTrainedModel, PreTrainedTokenizerBase

from .arguments import DataArguments, ModelArguments
from .base import Task
from .data import check_columns_present
from .synthetic import language_modeling_corpus

__all__ = ["LanguageModelingDataArguments", "LanguageModelingTask"]


@dataclass
class LanguageModelingDataArguments(DataArguments):
    text_column: str = field(default="text", metadata={"help": "Column holding the text (a .txt file gives 'text')."})
    block_size: int = field(
        default=128,
        metadata={"help": "Tokens per training example: texts are joined (each ending with the eos token) and cut "
                  "into blocks of this length; the remainder is dropped."},
    )  # fmt: skip


class LanguageModelingTask(Task[LanguageModelingDataArguments, TrainingArguments]):
    name = "language_modeling"
    description = "Train or fine-tune a causal language model with the γ-CE (TaiLr) loss."
    data_args_class = LanguageModelingDataArguments
    training_args_class = TrainingArguments
    auto_model_class = "AutoModelForCausalLM"
    head_description = "causal language-modelling head (a decoder such as GPT-2 or Llama)"
    scratch_config_overrides = "n_embd=64,n_layer=2,n_head=4,n_positions=256"
    defaults: dict[str, Any] = {
        "model_type": "gpt2",
        # TaiLr's language-modelling setting: γ tiny, so w = max(b, p/(1e-7 + p)) ≈ 1 except for very unlikely
        # targets, whose weight falls to the floor b
        "gamma": 1e-7,
        "min_weight": 0.2,
        "label_smoothing": 0.0,
        "synthetic_train_examples": 1000,
        "output_dir": "outputs/language_modeling",
        "do_train": True,
        "do_eval": True,
        "do_predict": True,
        # evaluation needs only the loss and the calibration sums, not the [N, V] logits of every batch
        "prediction_loss_only": True,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "learning_rate": 2e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 25,
        "save_strategy": "no",
        "seed": 42,
    }
    # Fine-tuning a pretrained model: the from-scratch 2e-3 destroys one in a few steps (issue 13: Gemma-3-270m went
    # from perplexity 4.85 to 3.6e8 in three steps). 5e-5 is transformers' own default and run_clm's; a linear decay
    # after a 3 % warm-up (warmup_steps < 1 is a ratio) is the usual SFT recipe: Adam's first updates move every
    # weight by about the learning rate whatever its gradient, which the warm-up keeps small.
    finetune_defaults: dict[str, Any] = {"learning_rate": 5e-5, "lr_scheduler_type": "linear", "warmup_steps": 0.03}

    def check_args(
        self, data_args: LanguageModelingDataArguments, model_args: ModelArguments, training_args: TrainingArguments
    ) -> None:
        block = data_args.block_size
        if isinstance(block, bool) or not isinstance(block, int) or block < 2:
            raise ValueError(f"block_size must be an integer ≥ 2, got {block!r}")

    def max_length_needed(self, data_args: LanguageModelingDataArguments) -> int:
        return data_args.block_size

    def tokenizer_max_length(self, data_args: LanguageModelingDataArguments) -> int | None:
        return None  # whole texts are tokenised, then cut into blocks

    def synthetic_rows(self, split: str, num_examples: int, seed: int) -> list[dict[str, Any]]:
        return language_modeling_corpus(num_examples, seed=seed)

    def check_columns(
        self, dataset: Dataset, split: str, origin: str, data_args: LanguageModelingDataArguments
    ) -> None:
        check_columns_present(dataset, split, origin, {data_args.text_column: "text_column"})

    def texts(self, dataset: Dataset, data_args: LanguageModelingDataArguments) -> Iterator[str]:
        for start in range(0, len(dataset), 1000):
            yield from (t for t in dataset[start : start + 1000][data_args.text_column] if isinstance(t, str) and t)

    def preprocess(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data_args: LanguageModelingDataArguments,
        training_args: TrainingArguments,
        split: str,
    ) -> Dataset:
        column, block = data_args.text_column, data_args.block_size
        eos = tokenizer.eos_token_id
        # A trained tokenizer appends </s> itself; a pretrained one may not: then eos is added here.
        appends_eos = bool(tokenizer("a")["input_ids"]) and tokenizer("a")["input_ids"][-1] == eos

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            texts = [t for t in batch[column] if isinstance(t, str) and t.strip()]
            ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
            if not appends_eos and eos is not None:
                ids = [row + [eos] for row in ids]
            return {"input_ids": ids}

        def group(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            joined = list(chain.from_iterable(batch["input_ids"]))
            usable = (len(joined) // block) * block
            blocks = [joined[i : i + block] for i in range(0, usable, block)]
            return {
                "input_ids": blocks,
                "attention_mask": [[1] * block for _ in blocks],
                "labels": [list(b) for b in blocks],
            }

        tokenized = dataset.map(
            tokenize, batched=True, remove_columns=dataset.column_names, num_proc=data_args.preprocessing_num_workers,
            desc=f"tokenising {split}",
        )  # fmt: skip
        grouped = tokenized.map(
            group, batched=True, batch_size=1000, num_proc=data_args.preprocessing_num_workers,
            desc=f"grouping {split} into blocks of {block}",
        )  # fmt: skip
        if len(grouped) == 0:
            raise ValueError(
                f"the {split} split has fewer tokens than block_size={block} (batches of 1000 texts are grouped): "
                "lower block_size or add data"
            )
        return grouped

    def data_collator(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> DataCollator:
        from transformers import default_data_collator

        return default_data_collator

    def configure_model(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data_args: LanguageModelingDataArguments,
        training_args: TrainingArguments,
    ) -> None:
        if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
