"""Temperature scaling and the expected calibration error (study.calibration), on synthetic classifiers whose
calibration is known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from hf_tvd_loss.study.calibration import calibration_report, expected_calibration_error, fit_temperature


def _calibrated(n, classes=5, scale=2.0, seed=0):
    """Logits z and labels drawn from softmax(z): a perfectly calibrated classifier (up to sampling)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g, dtype=torch.float64) * scale
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z, labels


def _nll(logits, labels):
    return float(torch.nn.functional.cross_entropy(logits.double(), labels))


def _se_temperature(given, true_t):
    """Standard error of the maximum-likelihood temperature: the NLL's curvature in β = 1/T at the truth is the mean
    predictive variance of the given logits under softmax(given / T), so se(β) = 1 / sqrt(n · that) and
    se(T) = T² · se(β)."""
    p = torch.softmax(given / true_t, 1)
    variance = (p * (given - (p * given).sum(1, keepdim=True)) ** 2).sum(1).mean()
    return true_t**2 / math.sqrt(given.shape[0] * float(variance))


@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_fit_temperature_recovers_the_factor_of_scaled_calibrated_logits(factor):
    z, labels = _calibrated(20000)
    fitted = fit_temperature(factor * z, labels)  # over-confident (3) or under-confident (0.5)
    se = _se_temperature(factor * z, factor)
    assert se < 0.02 * factor  # the sample size makes this a sharp test (se 0.026 at factor 3, 0.0044 at 0.5)
    assert abs(fitted - factor) < 5 * se, (fitted, se)


def test_fit_temperature_is_the_minimum_of_the_nll_and_deterministic():
    z, labels = _calibrated(3000, classes=7, scale=1.5, seed=1)
    given = 1.7 * z + 0.3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = fit_temperature(given, labels)
    assert t == fit_temperature(given, labels)
    assert math.isclose(t, fit_temperature(given.float(), labels), rel_tol=1e-5)
    best = _nll(given / t, labels)
    for other in (t * 0.99, t * 1.01, t * 0.8, t * 1.25):
        assert _nll(given / other, labels) > best
    # the derivative of the NLL in β = 1/T vanishes there
    beta = torch.tensor(1.0 / t, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(beta * given, labels), beta)
    assert abs(float(grad)) < 1e-8


@pytest.mark.parametrize("scale", [0.2, 1.0, 4.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_temperature_scaling_never_increases_the_nll_it_is_fitted_on(scale, seed):
    z, labels = _calibrated(500, classes=4, seed=seed)
    noisy = z * scale + torch.randn(z.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    t = fit_temperature(noisy, labels)
    report = calibration_report(noisy, labels, temperature=t)
    assert report["scaled_nll"] <= report["nll"] + 1e-12
    assert report["scaled_accuracy"] == report["accuracy"]


def test_fit_temperature_stops_at_a_bound_when_sharper_is_always_better():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, -1.0]])
    labels = torch.tensor([0, 1, 0])  # every example right: the NLL falls as T → 0
    assert fit_temperature(logits, labels) == 0.01
    assert fit_temperature(logits, labels, min_temperature=0.5) == 0.5
    wrong = torch.tensor([1, 0, 1])  # every example wrong: the NLL falls as T → ∞
    assert fit_temperature(logits, wrong, max_temperature=50.0) == 50.0


def test_ece_of_a_calibrated_classifier_is_near_zero_and_of_an_over_confident_one_clearly_above():
    z, labels = _calibrated(20000)
    calibrated = expected_calibration_error(z, labels)
    # Sampling alone: each of 15 bins (~1300 examples) has an accuracy error of about sqrt(0.25 / 1300) ≈ 0.014,
    # so ECE ≈ 0.01; 0.03 leaves room and is far below the over-confident case.
    assert calibrated["ece"] < 0.03
    assert abs(calibrated["accuracy"] - calibrated["confidence"]) < 0.02
    over = expected_calibration_error(3 * z, labels)
    assert over["ece"] > 0.15 and over["confidence"] > over["accuracy"] + 0.15
    assert over["accuracy"] == calibrated["accuracy"]  # same predictions
    # temperature scaling fitted on other data from the same classifier repairs it
    z_val, labels_val = _calibrated(20000, seed=1)
    t = fit_temperature(3 * z_val, labels_val)
    repaired = calibration_report(3 * z, labels, temperature=t)
    assert repaired["ece"] == over["ece"] and repaired["scaled_ece"] < 0.03
    assert repaired["scaled_nll"] < repaired["nll"]


def test_ece_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.55, 0.45]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    # bins of width 0.2: (0.8, 1] holds 0.9 (right) and 0.85 (wrong): |0.5 - 0.875| · 2/4 = 0.1875;
    # (0.6, 0.8] holds 0.7 (right): 0.3 · 1/4 = 0.075; (0.4, 0.6] holds 0.55 (right): 0.45 · 1/4 = 0.1125
    want = {
        "ece": 0.375,
        "accuracy": 0.75,
        "confidence": 0.75,
        "nll": -(math.log(0.9) + math.log(0.15) + math.log(0.7) + math.log(0.55)) / 4,
    }
    got = expected_calibration_error(probs, labels, bins=5, kind="probs")
    assert got == pytest.approx(want, rel=1e-12)
    assert expected_calibration_error(probs.log(), labels, bins=5) == pytest.approx(want, rel=1e-9)  # as logits
    # one bin: |accuracy - confidence|
    assert expected_calibration_error(probs, labels, bins=1, kind="probs")["ece"] == pytest.approx(0.0, abs=1e-15)
    # a confidence on a bin edge belongs to the bin it closes: with 2 bins, 0.5 is in (0, 0.5] (right, tie to class
    # 0), 0.75 in (0.5, 1] (wrong): (|1 - 0.5| + |0 - 0.75|) / 2; both in one bin would give |0.5 - 0.625| = 0.125
    edge = expected_calibration_error(torch.tensor([[0.5, 0.5], [0.75, 0.25]]), torch.tensor([0, 1]), 2, kind="probs")
    assert edge["ece"] == pytest.approx(0.625)


def test_report_without_and_with_a_temperature():
    z, labels = _calibrated(200, seed=3)
    plain = calibration_report(z, labels)
    assert set(plain) == {"accuracy", "nll", "ece", "confidence"}
    assert plain["nll"] == pytest.approx(_nll(z, labels), rel=1e-12)
    scaled = calibration_report(z, labels, temperature=2.0)
    assert {k: scaled[k] for k in plain} == plain and scaled["temperature"] == 2.0
    assert scaled["scaled_nll"] == pytest.approx(_nll(z / 2, labels), rel=1e-12)
    assert scaled["scaled_confidence"] < scaled["confidence"]


def test_bad_input_is_refused_naming_it():
    z, labels = _calibrated(10, classes=3)
    cases = [
        (lambda: fit_temperature(z[0], labels), "logits must have shape"),
        (lambda: fit_temperature(z, labels[:-1]), r"labels must have shape \[N\] = \[10\]"),
        (lambda: fit_temperature(z, labels.double()), "labels must be an integer tensor"),
        (lambda: fit_temperature(z, torch.full((10,), 3)), r"labels must be class indices in \[0, 3\), found \[3"),
        (lambda: fit_temperature(z[:, :1], labels[:10] * 0), "C >= 2"),
        (lambda: fit_temperature(z[:0], labels[:0]), "empty"),
        (lambda: fit_temperature(z.masked_fill(z > 0, math.nan), labels), "NaN or inf"),
        (lambda: fit_temperature(z, labels, min_temperature=0.0), "min_temperature must be a finite number > 0"),
        (lambda: fit_temperature(z, labels, min_temperature=5.0, max_temperature=2.0), "min_temperature must be <"),
        (lambda: calibration_report(z, labels, temperature=-1.0), "temperature must be a finite number > 0"),
        (lambda: calibration_report(z, labels, temperature=math.inf), "temperature must be a finite number > 0"),
        (lambda: expected_calibration_error(z, labels, bins=0), "bins must be an integer >= 1"),
        (lambda: expected_calibration_error(z, labels, kind="log"), "kind must be 'logits' or 'probs'"),
        (lambda: expected_calibration_error(z, labels, kind="probs"), "kind='probs' must be rows"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
