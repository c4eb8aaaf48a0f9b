"""Summarization (document → summary, encoder-decoder) trained with the γ-CE (TaiLr) loss; ROUGE-1/2/L.

Offline default (a tiny BART built from a config, a tokenizer trained on a synthetic news corpus,
γ=0.8 b=0.2 ε=0.1, about a minute on two CPU cores)::

    accelerate launch scripts/finetune_summarization.py          # or: python scripts/finetune_summarization.py

The paper's setting (BART-base fine-tuned on Gigaword: needs the Hub, or local copies passed with
``--model_name_or_path DIR --train_file ... --validation_file ...``) and its cross-entropy baseline::

    accelerate launch scripts/finetune_summarization.py --config configs/summarization/tailr.yaml
    accelerate launch scripts/finetune_summarization.py --config configs/summarization/mle.yaml

Local data: ``--train_file train.jsonl --validation_file val.jsonl [--test_file test.jsonl]`` (.jsonl, .csv,
.parquet) with ``--text_column`` / ``--summary_column``. Every option: ``--help``. Options on the command line override the YAML file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hf_tvd_loss.tasks import get_task, run_task
from hf_tvd_loss.tasks.cli import YamlArgumentParser

TASK = "summarization"


def build_parser() -> YamlArgumentParser:
    """The script's parser: model, data, TVDArguments and Seq2SeqTrainingArguments options, plus ``--config``."""
    return get_task(TASK).build_parser()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: the command line), check it, train, evaluate, predict and save; returns the metrics."""
    return run_task(get_task(TASK), argv)


if __name__ == "__main__":
    main()
