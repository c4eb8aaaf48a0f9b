"""Text classification trained with the γ-CE (TaiLr) loss; accuracy, macro-F1, NLL and calibration (ECE).

Offline default (a tiny BERT built from a config, a tokenizer trained on a generated corpus of news-like reports
labelled with their topic, 4 classes, γ=0.5 b=0.2, about a minute on two CPU cores)::

    accelerate launch scripts/finetune_classification.py          # or: python scripts/finetune_classification.py

A pretrained model (any ``AutoModelForSequenceClassification``, decoder-only LLMs included) on local files, γ-CE and
its cross-entropy baseline::

    accelerate launch scripts/finetune_classification.py --config configs/classification/tailr.yaml \\
        --model_name_or_path DIR --train_file train.jsonl --validation_file val.jsonl --test_file test.jsonl
    accelerate launch scripts/finetune_classification.py --config configs/classification/mle.yaml ...

Data: ``--train_file`` / ``--validation_file`` / ``--test_file`` (.jsonl, .csv, .parquet), a local dataset folder or
a Hub dataset (``--dataset_name``), with ``--text_column_names`` (one column, or two for sentence pairs) and
``--label_column_name`` (strings or integers), as transformers' ``run_classification.py``. Every option: ``--help``.
Options on the command line override the YAML file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hf_tvd_loss.tasks import get_task, run_task
from hf_tvd_loss.tasks.cli import YamlArgumentParser

TASK = "classification"


def build_parser() -> YamlArgumentParser:
    """The script's parser: model, data, TVDArguments and TrainingArguments options, plus ``--config``."""
    return get_task(TASK).build_parser()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: the command line), check it, train, evaluate, predict and save; returns the metrics."""
    return run_task(get_task(TASK), argv)


if __name__ == "__main__":
    main()
