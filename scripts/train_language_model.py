"""Causal language modelling trained with the γ-CE (TaiLr) loss; perplexity and calibration.

Offline default (a tiny GPT-2 built from a config, a tokenizer trained on a synthetic news corpus,
γ=1e-7 b=0.2 ε=0, well under a minute on two CPU cores)::

    accelerate launch scripts/train_language_model.py          # or: python scripts/train_language_model.py

TaiLr's language-modelling setting on local text (e.g. Wikipedia from ``scripts/prepare_data.py lm``)
and its cross-entropy baseline::

    accelerate launch scripts/train_language_model.py --config configs/language_modeling/tailr.yaml
    accelerate launch scripts/train_language_model.py --config configs/language_modeling/mle.yaml

Local data: ``--train_file train.txt`` (.txt, .jsonl, .csv, .parquet) with ``--text_column``; texts are
joined and cut into ``--block_size`` token blocks. Every option: ``--help``. Options on the command line override the YAML file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hf_tvd_loss.tasks import get_task, run_task
from hf_tvd_loss.tasks.cli import YamlArgumentParser

TASK = "language_modeling"


def build_parser() -> YamlArgumentParser:
    """The script's parser: model, data, TVDArguments and TrainingArguments options, plus ``--config``."""
    return get_task(TASK).build_parser()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: the command line), check it, train, evaluate, predict and save; returns the metrics."""
    return run_task(get_task(TASK), argv)


if __name__ == "__main__":
    main()
