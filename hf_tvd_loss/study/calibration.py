"""Calibration of a classifier: temperature scaling and the expected calibration error (ECE).

Pure functions of ``[N, C]`` logits (or probabilities) and ``[N]`` class labels, in float64, torch only:

* :func:`fit_temperature`: the temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (Guo et al., *On
  Calibration of Modern Neural Networks*, ICML 2017), fitted on held-out data;
* :func:`expected_calibration_error`: ECE over equal-width bins of the top-1 confidence, with accuracy, NLL and
  mean confidence;
* :func:`calibration_report`: those numbers, and the same after scaling by a given temperature.

The study uses them on a classification task's validation logits: fit T on one split, report on another.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["calibration_report", "expected_calibration_error", "fit_temperature"]

ScoreKind = Literal["logits", "probs"]


def _checked(scores: torch.Tensor, labels: torch.Tensor, name: str = "logits") -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``[N, C]`` scores and int64 ``[N]`` labels on the CPU, or ``ValueError`` naming the argument."""
    if not torch.is_tensor(scores) or not scores.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor [N, C], got {type(scores).__name__}")
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor [N] of class indices, got {getattr(labels, 'dtype', labels)}"
        )
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"{name} must have shape [N, C] with C >= 2 classes, got {tuple(scores.shape)}")
    if labels.dim() != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels must have shape [N] = [{scores.shape[0]}], got {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError(f"{name} and labels are empty: calibration needs at least one example")
    scores = scores.detach().to("cpu", torch.float64)
    labels = labels.detach().to("cpu", torch.long)
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name} contain NaN or inf")
    if bool(((labels < 0) | (labels >= scores.shape[1])).any()):
        bad = labels[(labels < 0) | (labels >= scores.shape[1])][:5].tolist()
        raise ValueError(f"labels must be class indices in [0, {scores.shape[1]}), found {bad}")
    return scores, labels


def _check_temperature(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def fit_temperature(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    min_temperature: float = 0.01,
    max_temperature: float = 100.0,
    tolerance: float = 1e-10,
) -> float:
    """The temperature T in ``[min_temperature, max_temperature]`` minimising the mean NLL of
    ``softmax(logits / T)`` against ``labels`` (``logits`` ``[N, C]``, ``labels`` ``[N]``).

    Method (deterministic, float64): the NLL is convex in the inverse temperature β = 1/T (a log-sum-exp of
    functions linear in β, minus a linear term), so its minimum within the bounds is where its derivative
    ``mean_i(E_{softmax(β z_i)}[z_i] - z_{i,y_i})`` changes sign. That root is found by a safeguarded Newton search
    on β (the second derivative is the mean predictive variance of the logits): Newton steps, replaced by
    bisection whenever they would leave the bracket of the sign change, until a step moves β by less than
    ``tolerance`` relative to it. If the NLL still decreases at a bound (e.g. every example right with a margin, so sharper is always better),
    that bound is returned.
    """
    z, y = _checked(logits, labels)
    low_t = _check_temperature("min_temperature", min_temperature)
    high_t = _check_temperature("max_temperature", max_temperature)
    if low_t >= high_t:
        raise ValueError(f"min_temperature must be < max_temperature, got {low_t!r} and {high_t!r}")
    target = z.gather(1, y[:, None]).squeeze(1)

    def derivatives(beta: float) -> tuple[float, float]:
        p = torch.softmax(beta * z, dim=1)
        mean = (p * z).sum(1)
        variance = (p * (z - mean[:, None]) ** 2).sum(1)
        return float((mean - target).mean()), float(variance.mean())

    lo, hi = 1.0 / high_t, 1.0 / low_t  # the bracket on β
    if derivatives(lo)[0] >= 0:  # increasing from the smallest β on: the hottest temperature allowed
        return high_t
    if derivatives(hi)[0] <= 0:  # still decreasing at the largest β: the coldest temperature allowed
        return low_t
    beta = 1.0
    if not lo < beta < hi:
        beta = 0.5 * (lo + hi)
    for _ in range(200):
        slope, curvature = derivatives(beta)
        if slope == 0:
            break
        if slope > 0:
            hi = beta
        else:
            lo = beta
        newton = beta - slope / curvature if curvature > 0 else math.nan
        following = newton if lo < newton < hi else 0.5 * (lo + hi)
        done = abs(following - beta) <= tolerance * beta
        beta = following
        if done:
            break
    return 1.0 / beta


def expected_calibration_error(
    scores: torch.Tensor, labels: torch.Tensor, bins: int = 15, *, kind: ScoreKind = "logits"
) -> dict[str, float]:
    """ECE of top-1 predictions over ``bins`` equal-width confidence bins, with accuracy, NLL and mean confidence.

    ``scores`` ``[N, C]`` are logits (``kind="logits"``, the default) or probabilities (``kind="probs"``: rows of
    non-negative numbers summing to 1). The confidence of an example is its largest probability, its prediction
    the class that has it (the first one on a tie). As in Guo et al. (2017), bin m of M holds the confidences in
    ``((m-1)/M, m/M]``, and ``ECE = Σ_m (|B_m| / N) · |accuracy(B_m) - confidence(B_m)|``.

    Returns ``{"ece", "accuracy", "nll", "confidence"}``: NLL is the mean ``-log p_y`` (``inf`` if a probability
    input gives a label probability 0), confidence the mean top-1 probability.
    """
    if kind not in ("logits", "probs"):
        raise ValueError(f"kind must be 'logits' or 'probs', got {kind!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    z, y = _checked(scores, labels, name="scores")
    if kind == "logits":
        log_probs = torch.log_softmax(z, dim=1)
        probs = log_probs.exp()
    else:
        if bool((z < 0).any()) or bool(((z.sum(1) - 1.0).abs() > 1e-6).any()):
            raise ValueError(
                "scores with kind='probs' must be rows of non-negative probabilities summing to 1 "
                "(pass kind='logits' for logits)"
            )
        probs = z
        log_probs = z.log()  # log 0 = -inf: an impossible label gives an infinite NLL
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == y).double()
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)  # (m-1)/M < c <= m/M
    confidence_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    n = float(y.shape[0])
    return {
        "ece": float((correct_sum - confidence_sum).abs().sum()) / n,
        "accuracy": float(correct.mean()),
        "nll": float(-log_probs.gather(1, y[:, None]).mean()),
        "confidence": float(confidence.mean()),
    }


def calibration_report(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float | None = None, *, bins: int = 15
) -> dict[str, float]:
    """``accuracy``, ``nll``, ``ece`` and ``confidence`` of ``logits`` ``[N, C]`` against ``labels`` ``[N]``
    (:func:`expected_calibration_error`); with a ``temperature`` (e.g. :func:`fit_temperature` on another split),
    also ``temperature`` and ``scaled_accuracy``, ``scaled_nll``, ``scaled_ece``, ``scaled_confidence``: the same
    for ``logits / temperature`` (accuracy is unchanged by a positive temperature; it is there for symmetry)."""
    report = expected_calibration_error(logits, labels, bins)
    if temperature is None:
        return report
    temperature = _check_temperature("temperature", temperature)
    scaled = expected_calibration_error(logits.detach().double() / temperature, labels, bins)
    return {**report, "temperature": temperature, **{f"scaled_{k}": v for k, v in scaled.items()}}
