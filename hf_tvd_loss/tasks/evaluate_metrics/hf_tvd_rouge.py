"""ROUGE-1/2/L/Lsum as an ``evaluate`` metric module that loads offline from this file.

``evaluate.load("rouge")`` fetches a script from the Hub; this module computes the same F-measures with the
``rouge_score`` package (the ``scripts`` extra) through :func:`hf_tvd_loss.tasks.metrics.rouge_scores`::

    from hf_tvd_loss.tasks.metrics import load_metric
    rouge = load_metric("rouge")              # = evaluate.load(<path of this file>)
    rouge.compute(predictions=["..."], references=["..."])   # {"rouge1": ..., "rouge2": ..., ...} in [0, 1], as the Hub module
"""

import evaluate

from hf_tvd_loss.tasks.metrics import reference_features, rouge_scores

_DESCRIPTION = "Mean ROUGE-1/2/L/Lsum F-measures in [0, 1], Porter stemmer, sentences split at '. ' for ROUGE-Lsum."
_KWARGS = "predictions: list of generated texts; references: one reference text per prediction, or a list of them."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class HfTvdRouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004.",
            inputs_description=_KWARGS,
            features=reference_features(),  # one reference per prediction, or a list (the Hub formats)
        )

    def _compute(self, predictions, references):
        return rouge_scores(list(predictions), list(references))
