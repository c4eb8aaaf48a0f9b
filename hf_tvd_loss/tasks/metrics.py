"""Evaluation metrics of the task scripts, computed offline.

``evaluate.load("rouge" | "sacrebleu")`` fetches a script from the Hub and fails offline. The package ships its own
``evaluate`` metric modules instead (``evaluate_metrics/hf_tvd_rouge.py`` and ``hf_tvd_bleu.py``):
:func:`load_metric` returns them as ``evaluate.EvaluationModule`` objects (``compute``, ``add_batch``, combinable with
other ``evaluate`` metrics), loaded from the installed files by ``evaluate.load(path)``; the tasks score through
them. They compute ROUGE with ``rouge_score`` and BLEU/chrF with ``sacrebleu`` (:func:`rouge_scores`,
:func:`bleu_scores`). Both packages install with the ``scripts`` extra (``pip install "hf_tvd_loss[scripts]"``)
and are imported only where a score is computed; :func:`check_metric_package` refuses a run that would need a
missing one before it trains. Calibration of token-level confidence: for each scored teacher-forced reference
token, confidence = max_v p_v and correct = (argmax = reference). The trainers get these sums from the loss, a
chunk at a time (:class:`hf_tvd_loss.ops.common.PredictionStats`); :func:`calibration_from_sums` (re-exported from
:mod:`hf_tvd_loss.ops.common`) turns them into ``ece`` / ``confidence`` / ``accuracy``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..ops.common import calibration_from_sums

if TYPE_CHECKING:
    import evaluate

__all__ = [
    "METRIC_MODULES",
    "bleu_scores",
    "calibration_from_sums",
    "check_metric_package",
    "load_metric",
    "reference_features",
    "rouge_scores",
]

# name -> the evaluate metric module shipped in this package
METRIC_MODULES = {
    "rouge": os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluate_metrics", "hf_tvd_rouge.py"),
    "bleu": os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluate_metrics", "hf_tvd_bleu.py"),
}

_INSTALL_HINT = 'install the scripts extra: pip install "hf_tvd_loss[scripts]"'


def check_metric_package(package: str, metric: str) -> None:
    """Raise ``ValueError`` before a run when ``package`` (which computes ``metric``) is not installed."""
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"{metric} needs the {package} package, which is not installed: {_INSTALL_HINT}")


def _import_metric_module(module: str, metric: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{metric} needs {module.split('.')[0]}, which is not installed: {_INSTALL_HINT}") from err


@functools.cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """The package's ``evaluate`` metric ``name`` ("rouge" or "bleu"), loaded offline from its shipped file.

    Kept in memory (no Arrow cache files, so concurrent processes never share one); loaded once per process.
    """
    import evaluate

    if name not in METRIC_MODULES:
        raise ValueError(f"unknown metric {name!r}; expected one of {sorted(METRIC_MODULES)}")
    return evaluate.load(METRIC_MODULES[name], keep_in_memory=True)


def reference_features() -> list[Any]:
    """The input formats of the shipped metric modules, as the Hub's: a prediction with one reference text, or
    with a list of them."""
    import datasets

    return [
        datasets.Features(
            {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
        ),
        datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
    ]


def _reference_lists(references: list[Any]) -> list[list[str]]:
    """Each prediction's references as a list (a single string is one reference), as the Hub modules take them."""
    return [[r] if isinstance(r, str) else list(r) for r in references]


def rouge_scores(predictions: list[str], references: list[Any]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measures in [0, 1] with the Porter stemmer, as the Hub's ``rouge`` module returns
    them (the scripts report them ×100, as the summarization literature does). ``references``: one string per
    prediction, or a list of strings (the best-matching reference counts, as the Hub module's ``score_multi``).

    ROUGE-Lsum splits on newlines; predictions and references are single paragraphs here, so sentences are
    split at ". " first.
    """
    rouge_scorer = _import_metric_module("rouge_score.rouge_scorer", "ROUGE")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for prediction, refs in zip(predictions, _reference_lists(references), strict=True):
        scores = scorer.score_multi([r.replace(". ", ".\n") for r in refs], prediction.replace(". ", ".\n"))
        for key in keys:
            totals[key] += scores[key].fmeasure
    count = max(len(predictions), 1)
    return {key: value / count for key, value in totals.items()}


def bleu_scores(predictions: list[str], references: list[Any]) -> dict[str, float]:
    """Corpus BLEU and chrF on sacrebleu's 0-100 scale (its defaults: 13a tokenisation, case-sensitive), as the
    Hub's ``sacrebleu`` and ``chrf`` modules report them. ``references``: one string per prediction, or a list of
    strings per prediction (the Hub ``sacrebleu`` format; every prediction the same number)."""
    sacrebleu = _import_metric_module("sacrebleu", "BLEU/chrF")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    lists = _reference_lists(references)
    if len({len(r) for r in lists}) > 1:
        raise ValueError("every prediction needs the same number of references (sacrebleu's reference streams)")
    streams = [list(stream) for stream in zip(*lists, strict=True)] if lists else [[]]
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, streams).score,
        "chrf": sacrebleu.corpus_chrf(predictions, streams).score,
    }
