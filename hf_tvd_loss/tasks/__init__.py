"""Task layer of the launch scripts: one module per task over shared code.

* ``common.py`` — model/data argument dataclasses, the ``Task`` interface, option checks, and the run:
  ``prepare`` (checks, writes nothing) → ``build`` → ``train_and_evaluate``; ``run_task`` is every script's ``main``
* ``data.py`` — synthetic / local-file / Hub splits, caps, empty-split and column checks
* ``modeling.py`` — BPE tokenizer training, config resolution with the head check, models built from a config
* ``trainers.py`` — the TVD trainers plus token-level calibration in every evaluation
* ``report.py`` — the model card and the closing summary
* ``seq2seq.py`` — what summarization and translation share (pairs, generation, predictions file)
* ``summarization.py`` / ``translation.py`` / ``language_modeling.py`` — columns, defaults, metrics per task
* ``synthetic.py`` — the corpora generated in code that the offline defaults train on
* ``metrics.py`` — ROUGE (rouge_score), BLEU/chrF (sacrebleu), token-level calibration
* ``cli.py`` — ``HfArgumentParser`` plus ``--config FILE.yaml``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["TASKS", "get_task"]

TASKS = {
    "summarization": ("summarization", "SummarizationTask"),
    "translation": ("translation", "TranslationTask"),
    "language_modeling": ("language_modeling", "LanguageModelingTask"),
}

if TYPE_CHECKING:
    from .common import Task


def get_task(name: str) -> Task:
    """The task object for ``name`` (one of :data:`TASKS`)."""
    import importlib

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    module_name, class_name = TASKS[name]
    module: Any = importlib.import_module(f".{module_name}", __name__)
    return getattr(module, class_name)()
