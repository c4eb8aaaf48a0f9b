"""Summarization: document → summary with an encoder-decoder; ROUGE-1/2/L on beam-search outputs.

Default (no options): a tiny BART built from a config, a BPE tokenizer trained on a synthetic news corpus
(:mod:`hf_tvd_loss.tasks.synthetic`), TaiLr's summarization setting γ=0.8, b=0.2, ε=0.1. The paper's setting
(BART-base fine-tuned on Gigaword) is ``configs/summarization/tailr.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from .metrics import load_metric
from .seq2seq import Seq2SeqDataArguments, Seq2SeqTask
from .synthetic import summarization_corpus

__all__ = ["SummarizationDataArguments", "SummarizationTask"]


@dataclass
class SummarizationDataArguments(Seq2SeqDataArguments):
    text_column: str = field(default="document", metadata={"help": "Column holding the text to summarise."})
    summary_column: str = field(default="summary", metadata={"help": "Column holding the reference summary."})


class SummarizationTask(Seq2SeqTask[SummarizationDataArguments]):
    name = "summarization"
    description = "Fine-tune or train an encoder-decoder summariser with the γ-CE (TaiLr) loss."
    data_args_class = SummarizationDataArguments
    metric_package = ("rouge_score", "ROUGE")
    headline_metrics = ("loss", "perplexity", "rouge1", "rouge2", "rougeL", "token_accuracy", "ece")
    generated_metric_names = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    # decoder-only: an instruction, the document, and the cue the summary follows
    default_prompt_template = "Summarize the following text.\n\n{source}\n\nSummary:\n"
    scratch_config_overrides = (
        "d_model=64,encoder_layers=2,decoder_layers=2,encoder_attention_heads=4,"
        "decoder_attention_heads=4,encoder_ffn_dim=256,decoder_ffn_dim=256,max_position_embeddings=256"
    )
    defaults: dict[str, Any] = {
        # model: a tiny BART from a config (offline default); the paper fine-tunes facebook/bart-base
        "model_type": "bart",
        "max_source_length": 160,
        "max_target_length": 24,
        "no_repeat_ngram_size": 3,
        # TaiLr's summarization setting
        "gamma": 0.8,
        "min_weight": 0.2,
        "label_smoothing": 0.1,
        # training: sized for about a minute on two CPU cores
        "output_dir": "outputs/summarization",
        "do_train": True,
        "do_eval": True,
        "do_predict": True,
        "predict_with_generate": True,
        "generation_num_beams": 5,
        "num_train_epochs": 3,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 25,
        "save_strategy": "no",
        "seed": 42,
    }

    def synthetic_rows(self, split: str, num_examples: int, seed: int) -> list[dict[str, Any]]:
        return summarization_corpus(num_examples, seed=seed)

    def check_columns(self, dataset: Dataset, split: str, origin: str, data_args: SummarizationDataArguments) -> None:
        from .data import check_columns_present

        check_columns_present(
            dataset, split, origin, {data_args.text_column: "text_column", data_args.summary_column: "summary_column"}
        )

    def text_fields(
        self, data_args: SummarizationDataArguments, columns: list[str], features: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str | None, str]]:
        return [(data_args.text_column, None, "text_column"), (data_args.summary_column, None, "summary_column")]

    def pairs(self, batch: dict[str, list[Any]], data_args: SummarizationDataArguments) -> tuple[list[Any], list[Any]]:
        return batch[data_args.text_column], batch[data_args.summary_column]

    def text_metrics(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        scores = load_metric("rouge").compute(predictions=predictions, references=references)
        return {key: 100.0 * value for key, value in scores.items()}  # reported ×100, as in the literature
