"""Task layer of the launch scripts: one module per task over shared code.

* ``run.py`` — the run: ``prepare`` (checks, writes nothing) → ``build`` → ``train_and_evaluate``; ``run_task``
  is every script's ``main``
* ``base.py`` — the ``Task`` interface each task implements
* ``arguments.py`` — the model and data argument dataclasses
* ``checks.py`` — option checks shared by every task
* ``data.py`` — synthetic / local-file / Hub splits, caps, empty-split and column checks
* ``modeling.py`` — BPE tokenizer training, config resolution with the head check, models built from a config
* ``trainers.py`` — the TVD trainers plus token-level calibration in every evaluation
* ``report.py`` — the model card and the closing summary
* ``seq2seq.py`` — what summarization and translation share (pairs, generation, predictions file)
* ``summarization.py`` / ``translation.py`` / ``language_modeling.py`` / ``classification.py`` — columns, defaults,
  metrics per task
* ``synthetic.py`` — the corpora generated in code that the offline defaults train on
* ``metrics.py`` — ROUGE (rouge_score), BLEU/chrF (sacrebleu; both from the ``scripts`` extra), token-level
  calibration
* ``cli.py`` — ``HfArgumentParser`` plus ``--config FILE.yaml``, and the YAML loader

Imports flow one way: ``arguments`` ← ``base`` ← the task modules; ``data``, ``modeling``, ``report`` and
``checks`` use only ``arguments`` / ``base``; ``run`` uses them all, and within the task layer only this file imports ``run``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

__all__ = ["TASKS", "get_task", "run_task"]

TASKS = {
    "summarization": ("summarization", "SummarizationTask"),
    "translation": ("translation", "TranslationTask"),
    "language_modeling": ("language_modeling", "LanguageModelingTask"),
    "classification": ("classification", "ClassificationTask"),
}

if TYPE_CHECKING:
    from .base import Task


def get_task(name: str) -> Task[Any, Any]:
    """The task object for ``name`` (one of :data:`TASKS`)."""
    import importlib

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    module_name, class_name = TASKS[name]
    module: Any = importlib.import_module(f".{module_name}", __name__)
    return getattr(module, class_name)()


def run_task(task: Task[Any, Any], argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``task`` with the options in ``argv`` (default: the command line); see :func:`.run.run_task`."""
    from .run import run_task as run

    return run(task, argv)
