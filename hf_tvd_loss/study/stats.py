"""Paired confidence intervals for loss comparisons: over seeds (Student t) and over evaluation examples (bootstrap).

Two runs that differ only in the loss and share a seed see the same initialisation, data order and evaluation set, so
their difference is measured *paired*:

* :func:`paired_t_interval` — the mean of the per-seed differences ``a_i - b_i`` with a two-sided Student-t
  interval. It covers the seed-to-seed variation (initialisation, data order), the question "would another seed
  change the conclusion", but needs several seeds: with 2 or 3 its interval is wide.
* :func:`paired_bootstrap` — resamples the evaluation examples (the same resampled indices for both losses and for
  every seed) and recomputes the corpus-level metric from per-example statistics (:data:`EXAMPLE_METRICS`). It covers
  the variation due to the finite evaluation set, for the seeds that were run; it says nothing about other seeds.

Pure Python (no scipy): the t quantile comes from the regularised incomplete beta function.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EXAMPLE_METRICS",
    "Comparison",
    "Interval",
    "has_examples",
    "metric_from_examples",
    "paired_bootstrap",
    "paired_comparisons",
    "paired_t_interval",
    "student_t_cdf",
    "student_t_quantile",
]


@dataclass(frozen=True)
class Interval:
    """A difference ``a - b`` with its two-sided interval; ``n`` is the number of pairs (seeds)."""

    mean: float
    low: float
    high: float
    n: int
    method: str  # "t" (over seeds) or "bootstrap" (over evaluation examples)

    @property
    def excludes_zero(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high)) and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "method": self.method}


# ----------------------------------------------------------------------------------------------- Student t
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), converged to ~1e-15."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(c) > tiny else 1.0 + aa / tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(c) > tiny else 1.0 + aa / tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`student_t_cdf`, accurate to ~1e-10)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -student_t_quantile(1.0 - q, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if student_t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return 0.5 * (low + high)


def paired_t_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``a_i - b_i`` with the two-sided Student-t interval (``a`` and ``b`` paired by position).

    Pairs where either value is missing or NaN are dropped. With fewer than 2 pairs the interval is NaN.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    diffs = [
        x - y
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))
    ]
    n = len(diffs)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "t")
    mean = statistics.fmean(diffs)
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n, "t")
    half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "t")


# ----------------------------------------------------------------------------------------------- per-example metrics
# A run's per-example record maps a key to one row of *additive* statistics per evaluation example (in evaluation
# order): the corpus metric of any subset of examples is a function of the rows' sum. This keeps corpus BLEU a corpus
# BLEU under resampling (not a mean of sentence BLEUs) and makes a bootstrap one matrix product.
def _bleu(total: Sequence[float]) -> float:
    from sacrebleu.metrics import BLEU

    return BLEU()._compute_score_from_stats([int(round(x)) for x in total]).score


def _chrf(total: Sequence[float]) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF()._compute_score_from_stats([int(round(x)) for x in total]).score


def _mean_percent(total: Sequence[float]) -> float:  # rows [value, 1]
    return 100.0 * total[0] / total[1] if total[1] else float("nan")


def _nll(total: Sequence[float]) -> float:  # rows [Σ token NLL, token count]
    return total[0] / total[1] if total[1] else float("nan")


def _perplexity(total: Sequence[float]) -> float:
    return math.exp(min(_nll(total), 700.0))


def _calibration(which: str) -> Callable[[Sequence[float]], float]:
    def metric(total: Sequence[float]) -> float:  # rows [count per bin..., Σconf per bin..., Σcorrect per bin...]
        bins = len(total) // 3
        count, conf, correct = total[:bins], total[bins : 2 * bins], total[2 * bins :]
        n = sum(count)
        if n == 0:
            return float("nan")
        if which == "ece":
            return sum(abs(c - p) for c, p in zip(correct, conf, strict=True)) / n
        if which == "confidence":
            return sum(conf) / n
        return sum(correct) / n

    return metric


def _ratio(total: Sequence[float]) -> float:  # rows [value, 1]
    return total[0] / total[1] if total[1] else float("nan")


def _macro_f1(total: Sequence[float]) -> float:  # rows [tp per class..., fp per class..., fn per class...]
    classes = len(total) // 3
    tp, fp, fn = total[:classes], total[classes : 2 * classes], total[2 * classes :]
    scores = [2 * t / (2 * t + p + n) for t, p, n in zip(tp, fp, fn, strict=True) if t + p + n > 0]
    return sum(scores) / len(scores) if scores else float("nan")


# metric name in the results → (per-example key holding its additive rows, function of the rows' sum)
EXAMPLE_METRICS: dict[str, tuple[str, Callable[[Sequence[float]], float]]] = {
    "eval_bleu": ("bleu_stats", _bleu),
    "eval_chrf": ("chrf_stats", _chrf),
    "eval_rougeL": ("rougeL", _mean_percent),
    "eval_nll": ("nll", _nll),
    "eval_perplexity": ("nll", _perplexity),
    "eval_ece": ("calibration", _calibration("ece")),
    "eval_confidence": ("calibration", _calibration("confidence")),
    "eval_token_accuracy": ("calibration", _calibration("accuracy")),
    # a classification run's clean test split (hf_tvd_loss.study.classification), before and after temperature scaling
    "test_accuracy": ("test_correct", _ratio),
    "test_macro_f1": ("test_f1_stats", _macro_f1),
    "test_nll": ("test_nll", _nll),
    "test_nll_ts": ("test_nll_ts", _nll),
    "test_ece": ("test_calibration", _calibration("ece")),
    "test_ece_ts": ("test_calibration_ts", _calibration("ece")),
    "test_confidence": ("test_calibration", _calibration("confidence")),
}
# the same for the model selected on the validation split (hf_tvd_loss.study.classification.ValidationSelection)
EXAMPLE_METRICS.update({f"selected_{m}": (f"selected_{k}", f) for m, (k, f) in list(EXAMPLE_METRICS.items())
                        if m.startswith("test_")})  # fmt: skip


def metric_from_examples(metric: str, per_example: Mapping[str, Any]) -> float:
    """``metric`` recomputed from a run's per-example record over all its examples."""
    key, reduce = EXAMPLE_METRICS[metric]
    rows = per_example[key]
    return reduce([float(sum(column)) for column in zip(*rows, strict=True)])


def has_examples(metric: str, per_example: Mapping[str, Any] | None) -> bool:
    return bool(per_example) and metric in EXAMPLE_METRICS and bool(per_example.get(EXAMPLE_METRICS[metric][0]))


def paired_bootstrap(
    metric: str,
    runs_a: Sequence[Mapping[str, Any]],
    runs_b: Sequence[Mapping[str, Any]],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Paired bootstrap over evaluation examples of ``mean_seeds(metric(a_s) - metric(b_s))``.

    ``runs_a[s]`` and ``runs_b[s]`` are the per-example records of the two losses' runs with the same seed; all
    records must cover the same examples in the same order. Each resample draws example indices with replacement
    once and applies them to every run, so the pairing over examples and over seeds is kept. The interval is the
    percentile interval of the resampled differences; ``mean`` is the difference on the full evaluation set.
    """
    import numpy as np

    key, reduce = EXAMPLE_METRICS[metric]
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(f"need the same positive number of paired runs, got {len(runs_a)} and {len(runs_b)}")
    tables = [np.asarray(r[key], dtype=np.float64) for r in (*runs_a, *runs_b)]
    sizes = sorted({len(t) for t in tables})
    if len(sizes) != 1:
        raise ValueError(f"paired runs cover different numbers of evaluation examples: {sizes}")
    size = sizes[0]
    if size == 0:
        raise ValueError("no evaluation examples")
    rng = np.random.default_rng(seed)
    # resample r uses example i counts[r, i] times; row 0 is the full evaluation set
    counts = np.stack([np.bincount(rng.integers(0, size, size), minlength=size) for _ in range(resamples)])
    counts = np.concatenate([np.ones((1, size)), counts]).astype(np.float64)
    values = np.array([[reduce(row) for row in (counts @ table).tolist()] for table in tables])  # [runs, 1 + R]
    pairs = len(runs_a)
    differences = (values[:pairs] - values[pairs:]).mean(axis=0)
    samples = np.sort(differences[1:])
    alpha = (1.0 - confidence) / 2.0
    low = float(samples[max(0, math.floor(alpha * resamples))])
    high = float(samples[min(resamples - 1, math.ceil((1.0 - alpha) * resamples) - 1)])
    return Interval(float(differences[0]), low, high, pairs, "bootstrap")


# ----------------------------------------------------------------------------------------------- study comparisons
@dataclass
class Comparison:
    """``loss`` against ``baseline`` at one label-noise rate: per metric, the seed and example intervals."""

    loss: str
    baseline: str
    noise: float
    seeds: list[int]
    by_seeds: dict[str, Interval]
    by_examples: dict[str, Interval]


def paired_comparisons(
    results: Sequence[Any],
    baselines: Sequence[str],
    metrics: Sequence[str],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
) -> list[Comparison]:
    """Every loss against every baseline present, at each noise rate, paired by seed.

    ``results`` are study results with ``spec.loss.name``, ``spec.seed``, ``spec.noise``, ``metrics`` and
    ``per_example`` (None where not recorded). A bootstrap interval is given for a metric only when every paired run
    has per-example records for it, covering the same number of examples.
    """
    index: dict[tuple[str, float, int], Any] = {}
    for r in results:
        index[(r.spec.loss.name, r.spec.noise, r.spec.seed)] = r
    losses = list(dict.fromkeys(r.spec.loss.name for r in results))
    noises = sorted({r.spec.noise for r in results})
    out = []
    for baseline in baselines:
        if baseline not in losses:
            continue
        for noise in noises:
            for loss in losses:
                if loss == baseline:
                    continue
                seeds = sorted(
                    seed
                    for (name, rate, seed) in index
                    if name == loss and rate == noise and (baseline, noise, seed) in index
                )
                if not seeds:
                    continue
                a = [index[(loss, noise, s)] for s in seeds]
                b = [index[(baseline, noise, s)] for s in seeds]
                by_seeds, by_examples = {}, {}
                for metric in metrics:
                    values_a = [r.metrics.get(metric, float("nan")) for r in a]
                    values_b = [r.metrics.get(metric, float("nan")) for r in b]
                    if all(math.isnan(v) for v in values_a + values_b):
                        continue
                    by_seeds[metric] = paired_t_interval(values_a, values_b, confidence)
                    if all(has_examples(metric, r.per_example) for r in a + b):
                        key = EXAMPLE_METRICS[metric][0]
                        if len({len(r.per_example[key]) for r in a + b}) == 1:
                            by_examples[metric] = paired_bootstrap(
                                metric,
                                [r.per_example for r in a],
                                [r.per_example for r in b],
                                resamples=resamples,
                                confidence=confidence,
                            )
                out.append(Comparison(loss, baseline, noise, seeds, by_seeds, by_examples))
    return out
