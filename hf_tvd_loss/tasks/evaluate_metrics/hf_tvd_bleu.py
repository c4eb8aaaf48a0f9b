"""Corpus BLEU and chrF as an ``evaluate`` metric module that loads offline from this file.

``evaluate.load("sacrebleu")`` fetches a script from the Hub; this module computes the same scores with the
``sacrebleu`` package (the ``scripts`` extra) through :func:`hf_tvd_loss.tasks.metrics.bleu_scores`::

    from hf_tvd_loss.tasks.metrics import load_metric
    bleu = load_metric("bleu")                # = evaluate.load(<path of this file>)
    bleu.compute(predictions=["..."], references=["..."])    # {"bleu": ..., "chrf": ...}
"""

import evaluate

from hf_tvd_loss.tasks.metrics import bleu_scores, reference_features

_DESCRIPTION = "Corpus BLEU and chrF (sacrebleu defaults: 13a tokenisation, case-sensitive), 0-100."
_KWARGS = "predictions: list of generated texts; references: one reference text per prediction, or a list of them."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class HfTvdBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018.",
            inputs_description=_KWARGS,
            features=reference_features(),  # one reference per prediction, or a list (the Hub formats)
        )

    def _compute(self, predictions, references):
        return bleu_scores(list(predictions), list(references))
