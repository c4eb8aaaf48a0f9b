"""Translation (source → target language, encoder-decoder) trained with the γ-CE (TaiLr) loss; BLEU, chrF.

Offline default (a tiny Marian-style transformer from a config, a tokenizer trained on a synthetic
de→en corpus, γ=0.1 b=0.3 ε=0.1, about a minute on two CPU cores)::

    accelerate launch scripts/finetune_translation.py          # or: python scripts/finetune_translation.py

The paper's setting (transformer_iwslt_de_en trained from scratch on IWSLT14 de→en; point
``--train_file`` etc. at local files, e.g. from ``scripts/prepare_data.py translation``) and its baseline::

    accelerate launch scripts/finetune_translation.py --config configs/translation/tailr.yaml
    accelerate launch scripts/finetune_translation.py --config configs/translation/mle.yaml

Local data: rows ``{"translation": {"de": ..., "en": ...}}`` (``--source_lang`` / ``--target_lang``) or flat
columns (``--source_column`` / ``--target_column``). Every option: ``--help``. Options on the command line override the YAML file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hf_tvd_loss.tasks import get_task, run_task
from hf_tvd_loss.tasks.cli import YamlArgumentParser

TASK = "translation"


def build_parser() -> YamlArgumentParser:
    """The script's parser: model, data, TVDArguments and Seq2SeqTrainingArguments options, plus ``--config``."""
    return get_task(TASK).build_parser()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: the command line), check it, train, evaluate, predict and save; returns the metrics."""
    return run_task(get_task(TASK), argv)


if __name__ == "__main__":
    main()
